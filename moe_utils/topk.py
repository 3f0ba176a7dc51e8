"""Sparse routing rules: each token goes to K of E experts (chapter 7).

Every rule maps router logits (N, E) to the core's ``routing.Routing`` tuple, with

- ``chosen`` (N, K): the experts each token goes to, ``weights`` (N, K): their combine weights
  (0 where an assignment was dropped), ``log_probs`` (N, E): the router's log-probabilities;
- ``aux``: the auxiliary losses, entries named ``*_loss`` that ``mixture.aux_loss`` adds (only
  those whose weight is > 0, each beside its unweighted value: ``balance``, ``z``,
  ``importance_cv2``, ``load_cv2``; see ``balance``), and diagnostics: ``load`` (E,) the share of
  assignments per expert, ``dropped`` the fraction of assignments dropped by the capacity limit,
  ``z`` the router's mean squared log-partition, and, when a capacity applies, ``capacity`` C and
  ``kept`` (N, K), the assignments within it. (Only what is asked for is computed: a sparse layer
  is trained with thousands of small steps.)

The rules (token choice unless said otherwise):

- ``TopK``: softmax, then the top k, renormalised (Mixtral; ``normalise=False``: the top-k
  probabilities as they are). Renormalised top-1 is always 1: its router gets no gradient.
- ``Switch``: top-1 with its probability as weight and a capacity (Fedus et al., 2022).
- ``NoisyTopK``: the top k of noisy logits, softmax over those k (Shazeer et al., 2017); it reads
  logits (N, 2E): E clean logits and E noise scales (softplus); its ``load_cv2`` is smooth.
- ``DeepSeek``: sigmoid scores; the top k of scores + a per-expert bias that only chooses and is
  nudged towards balance outside the gradient (DeepSeek-AI, 2024: DeepSeek-V3).
- ``ExpertChoice``: each expert picks its C tokens (Zhou et al., 2022); chosen is (N, E) and
  ``kept`` marks the picks; each token gets 0 to E experts.

A rule reads ``n_logits(E)`` logits per token: a router network for it has that many outputs.

>>> import torch, moe_utils as mu
>>> routing = mu.topk.TopK(k=2, balance_weight=0.01)(torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]))
>>> routing.chosen.tolist(), routing.weights.sum(-1).tolist()
([[0, 1], [2, 0]], [1.0, 1.0])
>>> round(float(routing.aux["balance"]), 3), routing.aux["load"].tolist()
(1.016, [0.5, 0.25, 0.25])
"""

import torch
from torch import nn

from . import _checks as checks
from . import balance
from .dispatch import capacity, positions
from .routing import Routing

__all__ = ["DeepSeek", "ExpertChoice", "NoisyTopK", "Switch", "TopK"]

_DIAGNOSTIC = {"balance": "balance", "z": "z", "importance": "importance_cv2", "load": "load_cv2"}


def _top(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of each row (values, indices), largest first; max for k = 1 (several times
    faster than topk on the CPU)."""
    return values.max(-1, keepdim=True) if k == 1 else values.topk(k, dim=-1)


class _Rule(nn.Module):
    """Shared by the rules: argument checks, the aux dict and its weighted losses."""

    logits_per_expert = 1

    def __init__(self, balance_weight: float = 0.0, z_weight: float = 0.0, importance_weight: float = 0.0,
                 load_weight: float = 0.0):
        super().__init__()
        self.loss_weights = {name: checks.finite_float(f"{name}_weight", w, 0.0) for name, w in
                             zip(_DIAGNOSTIC, (balance_weight, z_weight, importance_weight, load_weight))}

    def n_logits(self, n_experts: int) -> int:
        """How many logits per token the rule reads for ``n_experts`` experts."""
        return self.logits_per_expert * checks.positive_int("n_experts", n_experts)

    def _logits(self, logits: torch.Tensor, k: int | None) -> torch.Tensor:
        if not torch.is_tensor(logits) or not logits.is_floating_point():
            raise TypeError(f"logits must be a floating tensor (N, E), got {type(logits).__name__}")
        if logits.ndim != 2 or logits.shape[1] % self.logits_per_expert:
            per = "" if self.logits_per_expert == 1 else f" with {self.logits_per_expert} per expert"
            raise ValueError(f"logits must have shape (N, E){per}, got {tuple(logits.shape)}")
        if not torch.isfinite(logits.sum()):  # one reduction: cheap in a training loop
            raise ValueError("logits contain NaN or inf (or values so large that they overflow)")
        n_experts = logits.shape[1] // self.logits_per_expert
        if k is not None and k > n_experts:
            raise ValueError(f"k must be <= the number of experts {n_experts}, got k = {k}")
        return logits

    def _aux(self, logits, probs, chosen, weights, smooth_load=None, log_probs=None) -> dict:
        n_experts = probs.shape[1]
        load = balance.counts(chosen, n_experts).to(probs)
        z = balance.z_loss(logits) if log_probs is None else (logits[:, 0] - log_probs[:, 0]).square().mean()
        aux = {"load": load / load.sum(), "z": z, "dropped": probs.new_zeros(())}
        wanted = {name for name, w in self.loss_weights.items() if w > 0}
        if "balance" in wanted:
            aux["balance"] = balance.switch_balance(probs, chosen, load)
        if "importance" in wanted:
            aux["importance_cv2"] = balance.cv_squared(balance.importance(weights, chosen, n_experts))
        if "load" in wanted:
            aux["load_cv2"] = balance.cv_squared(load if smooth_load is None else smooth_load)
        aux.update({f"{name}_loss": self.loss_weights[name] * aux[_DIAGNOSTIC[name]] for name in wanted})
        return aux


class TopK(_Rule):
    """Top-k of the softmax: p = softmax(logits); the k largest p_i, renormalised to sum to one
    (Mixtral) or, with ``normalise=False``, as they are. Renormalised, these are the softmax of
    the k largest logits (Shazeer et al.'s order gives the same weights).

    ``capacity_factor`` (None: no limit) keeps at most C = ceil(cf k N / E) assignments per expert
    (``dispatch.positions`` order: first choices first, token order within) and zeroes the weights
    of the rest; ``*_weight`` scale the auxiliary losses (0: not returned).
    """

    def __init__(self, k: int = 2, normalise: bool = True, capacity_factor: float | None = None, **weights):
        super().__init__(**weights)
        self.k = checks.positive_int("k", k)
        self.normalise = bool(normalise)
        self.capacity_factor = None if capacity_factor is None else \
            checks.finite_float("capacity_factor", capacity_factor, 0.0, low_open=True)

    def forward(self, logits: torch.Tensor) -> Routing:
        """logits (N, E) -> ``Routing`` with chosen and weights (N, K)."""
        logits = self._logits(logits, self.k)
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        weights, chosen = _top(probs, self.k)
        if self.normalise:
            weights = weights / weights.sum(-1, keepdim=True)
        return self._finish(logits, log_probs, probs, chosen, weights)

    def _finish(self, logits, log_probs, probs, chosen, weights, smooth_load=None, softmax=True) -> Routing:
        aux = self._aux(logits, probs, chosen, weights, smooth_load, log_probs if softmax else None)
        if self.capacity_factor is not None:
            c = capacity(chosen.shape[0], probs.shape[1], chosen.shape[1], self.capacity_factor)
            kept = positions(chosen, probs.shape[1]) < c
            weights = weights * kept
            aux.update(capacity=c, kept=kept, dropped=1.0 - kept.to(probs.dtype).mean())
        return Routing(log_probs, weights, chosen, aux)


class Switch(TopK):
    """Switch routing (Fedus et al., 2022): top-1 with its softmax probability as the weight (not
    renormalised, or the router would get no gradient), a capacity (``capacity_factor`` 1.25) and
    the balance loss alpha E sum_i f_i P_i (alpha = ``balance_weight``, 0.01 in the paper)."""

    def __init__(self, capacity_factor: float | None = 1.25, balance_weight: float = 0.01, **weights):
        super().__init__(k=1, normalise=False, capacity_factor=capacity_factor, balance_weight=balance_weight,
                         **weights)


class NoisyTopK(TopK):
    """Noisy top-k gating (Shazeer et al., 2017): logits (N, 2E) hold clean logits h and noise
    scales u; in training H = h + eps * (softplus(u) + ``noise_eps``), eps ~ N(0, 1) (from
    ``generator``), without noise in ``eval()``. The k largest H are kept and softmaxed:
    weights = softmax over the chosen H. Its ``load_cv2`` uses the smooth load (``balance.smooth_load``),
    so ``load_weight`` trains the noise scales and the router towards an even load.
    ``noisy=False`` reads logits (N, E) and never adds noise (the rule without its noise).
    """

    def __init__(self, k: int = 2, noisy: bool = True, noise_eps: float = 1e-2, generator=None, **kwargs):
        super().__init__(k=k, **kwargs)
        self.noisy, self.generator = bool(noisy), generator
        self.noise_eps = checks.finite_float("noise_eps", noise_eps, 0.0)
        self.logits_per_expert = 2 if self.noisy else 1

    def forward(self, logits: torch.Tensor) -> Routing:
        logits = self._logits(logits, self.k)
        clean, smooth = logits, None
        if self.noisy:
            clean, raw = logits.chunk(2, dim=-1)
            noisy = clean
            if self.training:
                sd = nn.functional.softplus(raw) + self.noise_eps
                eps = torch.randn(clean.shape, generator=self.generator, dtype=clean.dtype).to(clean.device)
                noisy = clean + eps * sd
                smooth = balance.smooth_load(clean, noisy, sd, self.k) if self.k < clean.shape[1] else None
        else:
            noisy = clean
        top, chosen = _top(noisy, self.k)
        log_probs = torch.log_softmax(clean, dim=-1)
        return self._finish(clean, log_probs, log_probs.exp(), chosen, torch.softmax(top, dim=-1), smooth)


class DeepSeek(TopK):
    """DeepSeek-V3 routing: scores s = sigmoid(logits) (N, E); the chosen experts are the top k of
    s + b, b a per-expert ``bias`` (a buffer) used only to choose; weights = the chosen s,
    renormalised (``normalise``), times ``routed_scale`` (2.5 in DeepSeek-V3).

    Auxiliary-loss-free balancing: in training, after each choice, b_i += ``bias_rate`` *
    sign(mean load - load_i) (outside the gradient, like batch norm's running statistics).
    ``n_groups``, ``top_groups``: node-limited routing; the experts form ``n_groups`` groups, a
    group scores the sum of its two best s + b, and only the ``top_groups`` best groups are open.
    ``log_probs`` are log(s / sum s), which the balance loss also uses (as DeepSeek-V3 does).
    """

    def __init__(self, n_experts: int, k: int = 2, bias_rate: float = 1e-3, routed_scale: float = 1.0,
                 normalise: bool = True, n_groups: int = 1, top_groups: int = 1, **kwargs):
        super().__init__(k=k, normalise=normalise, **kwargs)
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.bias_rate = checks.finite_float("bias_rate", bias_rate, 0.0)
        self.routed_scale = checks.finite_float("routed_scale", routed_scale, 0.0, low_open=True)
        self.n_groups = checks.positive_int("n_groups", n_groups)
        self.top_groups = checks.positive_int("top_groups", top_groups)
        if n_experts % n_groups or top_groups > n_groups:
            raise ValueError(f"n_groups ({n_groups}) must divide n_experts ({n_experts}) and top_groups "
                             f"({top_groups}) must be <= n_groups")
        if k > n_experts // n_groups * top_groups:
            raise ValueError(f"k must be <= the experts of the top_groups open groups "
                             f"({n_experts // n_groups * top_groups}), got k = {k}")
        self.register_buffer("bias", torch.zeros(n_experts))

    def forward(self, logits: torch.Tensor) -> Routing:
        logits = self._logits(logits, self.k)
        if logits.shape[1] != self.n_experts:
            raise ValueError(f"logits must have shape (N, {self.n_experts}), got {tuple(logits.shape)}")
        scores = torch.sigmoid(logits)
        chosen = self.choose(scores.detach())
        weights = scores.gather(1, chosen)
        if self.normalise:
            weights = weights / weights.sum(-1, keepdim=True)
        probs = scores / scores.sum(-1, keepdim=True)
        routing = self._finish(logits, torch.log(probs), probs, chosen, weights * self.routed_scale, softmax=False)
        if self.training and self.bias_rate > 0:
            with torch.no_grad():
                load = balance.counts(chosen, self.n_experts).to(self.bias)
                self.bias += self.bias_rate * torch.sign(load.mean() - load)
        return routing

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The chosen experts (N, K) for scores (N, E): top k of scores + bias in the open groups."""
        biased = scores + self.bias.to(scores)
        if self.n_groups > 1:
            grouped = biased.reshape(len(biased), self.n_groups, -1)
            group_score = grouped.topk(min(2, grouped.shape[2]), dim=-1).values.sum(-1)    # (N, groups)
            shut = torch.ones_like(group_score, dtype=torch.bool).scatter(
                1, group_score.topk(self.top_groups, dim=-1).indices, False)
            biased = grouped.masked_fill(shut[:, :, None], -torch.inf).reshape_as(biased)
        return _top(biased, self.k)[1]


class ExpertChoice(_Rule):
    """Expert choice (Zhou et al., 2022): p = softmax(logits) over experts for each token; each
    expert takes the C = ceil(``capacity_factor`` N / E) tokens with the largest p_ie, weighted by
    p_ie. Every expert gets exactly C tokens (perfect balance by construction); a token gets
    0 to E experts (``aux["experts_per_token"]`` (N,)), on average ``capacity_factor``; ``dropped``
    is the fraction of tokens no expert took. chosen (N, E) lists every expert, ``kept`` (N, E)
    the picks, weights (N, E) are p where picked and 0 elsewhere. The choice reads the whole batch:
    a token's experts depend on the other tokens (not causal, unlike token choice).
    """

    def __init__(self, capacity_factor: float = 2.0, **weights):
        super().__init__(**weights)
        self.capacity_factor = checks.finite_float("capacity_factor", capacity_factor, 0.0, low_open=True)

    def forward(self, logits: torch.Tensor) -> Routing:
        logits = self._logits(logits, None)
        n, e = logits.shape
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        c = capacity(n, e, 1, self.capacity_factor)
        picks = probs.detach().topk(c, dim=0).indices                          # (C, E) tokens
        kept = torch.zeros_like(probs, dtype=torch.bool).scatter(0, picks, True)
        chosen = torch.arange(e, device=logits.device).expand(n, e)
        weights = probs * kept
        aux = self._aux(logits, probs, chosen, weights, log_probs=log_probs)
        per_token = kept.sum(1)
        aux.update(load=kept.sum(0).to(probs) / kept.sum(), capacity=c, kept=kept, experts_per_token=per_token,
                   dropped=(per_token == 0).to(probs.dtype).mean())
        return Routing(log_probs, weights, chosen, aux)
