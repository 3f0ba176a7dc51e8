"""Routing: router networks give logits, routing rules turn them into one ``Routing`` tuple.

Router *networks* map x (N, D) to logits (N, E):

- ``Constant``: logits that ignore x (a plain mixture of regressions; Dirichlet prior);
- ``Linear``: z W^T + b (with a softmax rule: the linear-softmax gate);
- ``MLP``: a one-hidden-layer tanh network;
- ``Kernel``: log a_e + log N(z; m_e, diag s_e^2), a localised gate (Xu, Jordan and Hinton, 1995)
  that models the inputs too, with a closed-form M-step.

Each carries its prior (``log_prior``) and its EM M-step (``m_step``: closed form for ``Constant``
and ``Kernel``, Newton's method (IRLS) for ``Linear``, Gauss-Newton with autograd derivatives for
any other network), so EM never asks what kind of router it has.

Routing *rules* turn logits into a ``Routing``: ``Softmax`` (with a temperature) and ``Gumbel``
(soft or hard straight-through samples in training, a deterministic rule in ``eval()``); the
sparse rules of chapter 7 return the same tuple, with the chosen experts and auxiliary losses.

>>> import torch, moe_utils as mu
>>> router, rule = mu.routing.Linear(n_inputs=1, n_experts=3), mu.routing.Softmax()
>>> routing = rule(router(torch.zeros(5, 1)))
>>> routing.log_probs.shape, routing.chosen, dict(routing.aux)
(torch.Size([5, 3]), None, {})
"""

import math
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from . import _checks as checks
from . import solvers
from ._scaling import Scaled, standardiser

__all__ = ["ROUTERS", "Constant", "Gumbel", "Kernel", "Linear", "MLP", "Router", "Routing", "Softmax", "make"]


class Routing(NamedTuple):
    """What a routing rule returns; N samples (tokens), E experts, K chosen per sample."""

    log_probs: torch.Tensor            # (N, E) the router's log-probabilities (what EM and the
                                       # mixture likelihood use; in training, a Gumbel rule's sample)
    weights: torch.Tensor              # (N, E) combine weights, or (N, K) for the ``chosen`` experts
    chosen: torch.Tensor | None = None  # (N, K) expert indices, or None: every expert (dense)
    aux: dict = MappingProxyType({})   # auxiliary losses ("*_loss", added to a loss) and diagnostics
    sampled: bool = False              # weights are a straight-through one-hot sample


# ---------------------------------------------------------------------- router networks
class Router(Scaled):
    """Base of router networks: x (N, D) -> logits (N, E), on standardised inputs z.

    ``l2`` is the precision of a Gaussian prior on the parameters: it keeps a router finite
    where the regimes are separable (a jump) instead of an infinitely sharp switch.
    """

    def __init__(self, n_inputs: int, n_experts: int, shift=None, scale=None, l2: float = 1e-2):
        super().__init__(n_inputs, shift, scale)
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.l2 = checks.finite_float("l2", l2, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.standardise(x))

    def logits(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prior(self) -> torch.Tensor:
        """log p(parameters) up to a constant: -l2/2 |theta|^2."""
        return -0.5 * self.l2 * parameters_to_vector(self.parameters()).pow(2).sum()

    def input_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_n) (N,) for a router that models its inputs; 0 for a conditional router."""
        return x.new_zeros(x.shape[0])

    def m_step(self, x: torch.Tensor, resp: torch.Tensor, temperature: float = 1.0, steps: int = 3) -> None:
        """Raise sum_n sum_e r_ne log softmax(logits(x_n) / T)_e + log prior in place (Gauss-Newton)."""
        solvers.newton_softmax(self, x, resp, self.l2, steps, temperature)


class Constant(Router):
    """g(x) = softmax(logit) for every x. Prior: Dirichlet(``alpha``) on the weights (alpha >= 1)."""

    def __init__(self, n_inputs: int, n_experts: int, alpha: float = 1.0, generator=None, **kwargs):
        super().__init__(n_inputs, n_experts, **kwargs)  # its start (equal weights) draws nothing
        self.alpha = checks.finite_float("alpha", alpha, 1.0)
        self.logit = nn.Parameter(torch.zeros(n_experts))

    def logits(self, z):
        return self.logit.expand(z.shape[0], -1)

    def log_prior(self) -> torch.Tensor:
        return (self.alpha - 1.0) * torch.log_softmax(self.logit, -1).sum()

    def m_step(self, x, resp, temperature=1.0, steps=3):
        """Closed form: the MAP weights (N_e + alpha - 1) / (N + E (alpha - 1)), N_e = sum_n r_ne."""
        counts = resp.sum(0) + (self.alpha - 1.0)
        with torch.no_grad():
            self.logit.copy_(torch.log(counts / counts.sum()) * temperature)


class Linear(Router):
    """A linear router: logits = z W^T + b, weight (E, D), bias (E,)."""

    def __init__(self, n_inputs: int, n_experts: int, generator=None, **kwargs):
        super().__init__(n_inputs, n_experts, **kwargs)
        self.weight = nn.Parameter(0.1 * torch.randn(n_experts, n_inputs, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_experts))

    def logits(self, z):
        return z @ self.weight.T + self.bias

    def m_step(self, x: torch.Tensor, resp: torch.Tensor, temperature: float = 1.0, steps: int = 3) -> None:
        """A linear-softmax router is a softmax regression of the responsibilities on z: ``steps``
        Newton steps (IRLS), with the categorical experts' solver (``solvers.softmax_regression``,
        one regression), no Jacobian needed. With V = [W^T; b] (D+1, E), softmax(z~ V / T) is
        fitted as U = V / T, whose prior precision is l2 T^2."""
        t = float(temperature)
        with torch.no_grad():
            weight, bias = solvers.softmax_regression(
                self.standardise(x), resp[:, None, :], self.weight.T[None] / t, self.bias[None] / t,
                self.l2 * t * t, steps)                                       # (1, D, E), (1, E)
            self.weight.copy_(t * weight[0].T)
            self.bias.copy_(t * bias[0])


class MLP(Router):
    """A small neural router: logits = tanh(z W1^T + b1) W2^T + b2, ``n_hidden`` units."""

    def __init__(self, n_inputs: int, n_experts: int, n_hidden: int = 8, generator=None, **kwargs):
        super().__init__(n_inputs, n_experts, **kwargs)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        b1, b2 = 1 / math.sqrt(n_inputs), 1 / math.sqrt(n_hidden)
        self.w1 = nn.Parameter((2 * torch.rand(n_hidden, n_inputs, generator=generator) - 1) * b1)
        self.b1 = nn.Parameter((2 * torch.rand(n_hidden, generator=generator) - 1) * b1)
        self.w2 = nn.Parameter((2 * torch.rand(n_experts, n_hidden, generator=generator) - 1) * b2)
        self.b2 = nn.Parameter(torch.zeros(n_experts))

    def logits(self, z):
        return torch.tanh(z @ self.w1.T + self.b1) @ self.w2.T + self.b2


class Kernel(Router):
    """A localised router: logits_e = log a_e + log N(z; m_e, diag s_e^2), so that
    softmax(logits) is the posterior over experts of a Gaussian mixture model of the inputs.

    log_weight (E,), mean (E, D), log_scale (E, D). The log-ratio of two kernels is quadratic in z,
    so where their widths differ the gate can rise and fall again, which a linear-softmax gate cannot;
    with equal widths it is linear, a sigmoid like the softmax gate's. Its EM M-step is closed form
    (weighted mean and variance of the inputs); it maximises the joint likelihood p(x, y), which
    ``input_log_prob`` completes.
    ``min_scale`` (in standardised units) keeps a kernel from collapsing onto one input.
    """

    def __init__(self, n_inputs: int, n_experts: int, min_scale: float = 1e-3, generator=None, **kwargs):
        super().__init__(n_inputs, n_experts, **kwargs)
        self.min_scale = checks.finite_float("min_scale", min_scale, 0.0, low_open=True)
        self.log_weight = nn.Parameter(torch.zeros(n_experts))
        self.mean = nn.Parameter(torch.randn(n_experts, n_inputs, generator=generator))
        self.log_scale = nn.Parameter(torch.zeros(n_experts, n_inputs))

    def logits(self, z):
        scale = self.log_scale.exp()
        log_n = -0.5 * (((z[:, None, :] - self.mean) / scale) ** 2 + 2 * self.log_scale + math.log(2 * math.pi))
        return torch.log_softmax(self.log_weight, -1) + log_n.sum(-1)          # (N, E)

    def log_prior(self) -> torch.Tensor:
        return self.log_weight.new_zeros(())

    def input_log_prob(self, x):
        return torch.logsumexp(self(x), -1) - torch.log(self.scale).sum()      # density of x, not z

    def m_step(self, x, resp, temperature=1.0, steps=3):
        """Closed form: a_e = N_e / N, m_e and s_e^2 the r-weighted mean and variance of z."""
        z, total = self.standardise(x), resp.sum(0).clamp_min(torch.finfo(x.dtype).tiny)  # (N, D), (E,)
        mean = resp.T @ z / total[:, None]
        var = (resp.T @ z**2) / total[:, None] - mean**2
        with torch.no_grad():
            self.log_weight.copy_(torch.log(total / total.sum()))
            self.mean.copy_(mean)
            self.log_scale.copy_(0.5 * torch.log(var.clamp_min(self.min_scale**2)))


ROUTERS = {"constant": Constant, "linear": Linear, "mlp": MLP, "kernel": Kernel}


def make(name: str, n_inputs: int, n_experts: int, x: torch.Tensor | None = None, **kwargs) -> Router:
    """A router network by name (one of ``ROUTERS``); ``x`` (N, D), if given, sets its input
    standardisation (shift, scale); keyword arguments (``generator``, ``l2``, and ``n_hidden`` for
    ``"mlp"``, ``alpha`` for ``"constant"``) go to the router's class."""
    cls = ROUTERS[checks.choice("router", name, ROUTERS)]
    if x is not None:
        kwargs["shift"], kwargs["scale"] = standardiser(x)
    return cls(n_inputs, n_experts, **kwargs)


# ---------------------------------------------------------------------- routing rules
class Softmax(nn.Module):
    """g(x) = softmax(logits / temperature): dense routing, every expert weighted by g."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = checks.finite_float("temperature", value, 0.0, low_open=True)

    def forward(self, logits: torch.Tensor) -> Routing:
        log_probs = torch.log_softmax(logits / self.temperature, dim=-1)
        return Routing(log_probs, log_probs.exp())


class Gumbel(Softmax):
    """Gumbel-softmax routing (Jang et al., 2017; Maddison et al., 2017).

    In training, with Gumbel noise G_e = -log(-log U_e), U_e ~ U(0, 1) and a = logits / temperature:

        soft sample  w = softmax((a + G) / tau)
        hard sample  w = one_hot(argmax(a + G)), with the gradient of the soft sample
                     (straight-through: w_hard - sg(w_soft) + w_soft)

    so the samples are draws from softmax(a). In ``eval()`` it never samples: ``eval_rule``
    ``"softmax"`` returns that distribution itself (the mean of the hard samples), ``"argmax"``
    the most probable expert, one-hot. ``tau`` > 0 may change between epochs (annealing).
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, eval_rule: str = "softmax", temperature: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__(temperature)
        self.tau, self.hard, self.generator = tau, bool(hard), generator
        self.eval_rule = checks.choice("eval_rule", eval_rule, ("softmax", "argmax"))

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = checks.finite_float("tau", value, 0.0, low_open=True)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard Gumbel noise of ``like``'s shape, dtype and device (drawn on the CPU)."""
        u = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        tiny = torch.finfo(like.dtype).tiny
        return -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny)).to(like.device)

    def forward(self, logits):
        a = logits / self.temperature
        if not self.training:
            if self.eval_rule == "softmax":
                return super().forward(logits)
            one_hot = nn.functional.one_hot(a.argmax(-1), a.shape[-1]).to(a.dtype)
            return Routing(torch.log(one_hot), one_hot)
        log_soft = torch.log_softmax((a + self.noise(a)) / self.tau, dim=-1)
        soft = log_soft.exp()
        if not self.hard:
            return Routing(log_soft, soft)
        hard = nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return Routing(log_soft, hard - soft.detach() + soft, sampled=True)
