"""A mixture-of-experts ``nn.Module`` for gradient training, and the two losses of Jacobs et al.

    p(y | x) = sum_e w_e(x) N(y; f_e(x), diag(sigma_e^2))

with stacked experts f (``experts.LinearExperts`` or ``experts.MLPExperts``: x (N, D) to
(N, E, O)), any gate from ``gates`` (the weights w (N, E) of its ``mix``), and a learned log noise
variance per expert and output, ``log_var`` (E, O).

The two losses (Jacobs, Jordan, Nowlan and Hinton, 1991):

- ``cooperative_loss``: the squared error of the blended prediction sum_e w_e f_e. The experts
  are trained as one sum, so each one's error can be cancelled by another's: they cooperate.
- ``competitive_loss``: the negative log-likelihood of the mixture, -log sum_e w_e N(y; f_e, s_e).
  Each sample's gradient goes mostly to the experts that explain it: they compete, and specialise.

>>> import torch, moe_utils as mu
>>> model = mu.moe.MixtureOfExperts.linear(n_inputs=1, n_outputs=1, n_experts=3)
>>> out = model(torch.zeros(5, 1))
>>> out.means.shape, out.weights.shape, out.mean.shape
(torch.Size([5, 3, 1]), torch.Size([5, 3]), torch.Size([5, 1]))
"""

import math
from typing import NamedTuple

import torch
from torch import nn

from . import checks, em, gates
from .experts import LinearExperts, MLPExperts
from .gates import GumbelGate

__all__ = ["MixtureOfExperts", "Output", "competitive_loss", "cooperative_loss", "init_from_responsibilities"]

_LOG_2PI = math.log(2 * math.pi)


class Output(NamedTuple):
    """What a forward pass returns; N samples, E experts, O outputs."""

    means: torch.Tensor      # (N, E, O) every expert's prediction
    log_gates: torch.Tensor  # (N, E) the gate's log-probabilities: in training, of the sample
                             # a Gumbel gate drew; in eval with argmax, 0 and -inf
    weights: torch.Tensor    # (N, E) the mixing weights used (a sample, for a Gumbel gate)
    mean: torch.Tensor       # (N, O) the mixture's prediction sum_e w_e f_e
    log_var: torch.Tensor    # (E, O) the experts' log noise variances
    hard: bool = False       # weights are a hard straight-through sample, not exp(log_gates)


class MixtureOfExperts(nn.Module):
    """Stacked experts, a gate and a learned noise variance per expert and output."""

    def __init__(self, experts: nn.Module, gate: nn.Module, n_outputs: int, init_log_var: float = 0.0):
        super().__init__()
        self.experts, self.gate = experts, gate
        self.n_experts = gate.n_experts
        self.log_var = nn.Parameter(torch.full((self.n_experts, checks.positive_int("n_outputs", n_outputs)),
                                               float(init_log_var)))

    @classmethod
    def linear(cls, n_inputs: int, n_outputs: int, n_experts: int, gate: str = "softmax", seed: int = 0,
               **gate_kwargs) -> "MixtureOfExperts":
        """Linear experts and a gate by name (see ``gates.make``, whose keyword arguments, such
        as ``n_hidden``, ``temperature``, ``tau``, ``hard``, ``shift``, pass through); every
        parameter is drawn from ``seed``."""
        gen = torch.Generator().manual_seed(checks.seed(seed))
        experts = LinearExperts(n_inputs, n_outputs, n_experts, generator=gen)
        return cls(experts, gates.make(gate, n_inputs, n_experts, generator=gen, **gate_kwargs), n_outputs)

    @classmethod
    def mlp(cls, n_inputs: int, n_outputs: int, n_experts: int, expert_hidden: int = 16, gate: str = "softmax",
            seed: int = 0, **gate_kwargs) -> "MixtureOfExperts":
        """Small tanh-network experts (``expert_hidden`` units each) and a gate, as ``linear``."""
        gen = torch.Generator().manual_seed(checks.seed(seed))
        experts = MLPExperts(n_inputs, expert_hidden, n_outputs, n_experts, generator=gen)
        return cls(experts, gates.make(gate, n_inputs, n_experts, generator=gen, **gate_kwargs), n_outputs)

    def forward(self, x: torch.Tensor) -> Output:
        """x (N, D) -> ``Output``."""
        x = checks.inputs(x, self.gate.n_inputs)
        means = self.experts(x)                                   # (N, E, O)
        log_gates, weights = self.gate.mix(x)                     # (N, E), (N, E)
        mean = torch.einsum("ne,neo->no", weights, means)
        hard = isinstance(self.gate, GumbelGate) and self.gate.training and self.gate.hard
        return Output(means, log_gates, weights, mean, self.log_var, hard)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor, out: Output | None = None) -> torch.Tensor:
        """log p(y | x) of the mixture, per sample: (N,). y is (N, O) or (N,) when O = 1."""
        out = self(x) if out is None else out
        return _mixture_log_prob(out, _as_targets(y, out.mean))


def cooperative_loss(out: Output, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the blended prediction: mean over samples and outputs."""
    return ((out.mean - _as_targets(y, out.mean)) ** 2).mean()


def competitive_loss(out: Output, y: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the mixture, per sample (nats): -mean log p(y | x)."""
    return -_mixture_log_prob(out, _as_targets(y, out.mean)).mean()


def init_from_responsibilities(model: MixtureOfExperts, x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor,
                               l2: float = 1e-2, steps: int = 10) -> MixtureOfExperts:
    """Start gradient training where EM would start: one M-step from responsibilities, in place.

    The linear experts and their noise variances get the closed-form M-step of ``em``, the
    gate is fitted to ``resp`` by ``em.fit_softmax``. x (N, D), y (N,), resp (N, E) (for
    example ``em.init_responsibilities(x, y, E, "kmeans")``). Returns ``model``.
    """
    if not isinstance(model.experts, LinearExperts) or model.log_var.shape[1] != 1:
        raise TypeError("init_from_responsibilities needs LinearExperts with one output")
    gate = model.gate.base if isinstance(model.gate, GumbelGate) else model.gate
    with torch.no_grad():
        weight, bias, var = em.m_step_experts(x, y, resp, min_var=1e-6 * y.var().item())
        model.experts.weight.copy_(weight[:, :, None])
        model.experts.bias.copy_(bias[:, None])
        model.log_var.copy_(var.log()[:, None])
        em.fit_softmax(gate, x, resp, l2=l2, steps=steps)
    return model


def _mixture_log_prob(out: Output, y: torch.Tensor) -> torch.Tensor:
    """log sum_e w_e N(y; f_e, exp(log_var_e)) (N,), exact for any weights.

    Gate probabilities are mixed in log space, logsumexp(log g + l): exact and stable even
    where a gate is (almost) one-hot. A hard straight-through sample (``out.hard``) must pass
    gradients to weights that are exactly 0, which log space cannot, so it is written as
    top + log sum_e w_e exp(l_e - top), with top = logsumexp(log w + l) detached (the sum is 1
    at the current point). Expert e's weight then gets the gradient exp(l_e - top), how much
    better e explains y than the chosen expert; that ratio can be astronomically large for a
    badly routed sample, so it is capped at e^20, lest one sample overflow the optimiser.
    """
    var = out.log_var.exp()                                                   # (E, O)
    log_n = -0.5 * (((y[:, None, :] - out.means) ** 2) / var + out.log_var + _LOG_2PI).sum(-1)  # (N, E)
    if not out.hard:
        return torch.logsumexp(out.log_gates + log_n, dim=-1)
    w = out.weights                                                           # 0 or ~1
    with torch.no_grad():
        top = torch.logsumexp(w.log() + log_n, dim=-1, keepdim=True)         # (N, 1)
        cap = torch.where(w > 0, math.inf, 20.0)                              # (N, E)
    total = (w * torch.exp(torch.minimum(log_n - top, cap))).sum(-1)
    return torch.log(total) + top[:, 0]


def _as_targets(y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    y = y[:, None] if y.ndim == 1 else y
    if y.shape != mean.shape:
        raise ValueError(f"y must have shape {tuple(mean.shape)} (or (N,) for one output), got {tuple(y.shape)}")
    return y
