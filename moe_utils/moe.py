"""``MixtureOfExperts``: the one model that EM fills and gradient training trains.

    p(y | x) = sum_e g_e(x) p_e(y | x),    g(x) = rule(router(x)),    p_e from likelihood(experts(x))

It is made of four parts, each swappable: a router network (``routing``: logits (N, E)), a
routing rule (``routing``: a ``Routing`` tuple), stacked experts (``experts``: (N, E, O)) and a
likelihood head (``likelihoods``: Gaussian for regression, Categorical for classification).
EM (``em``) fills it with closed-form and Newton M-steps; ``train.fit`` trains it with a loss
from ``mixture`` (competitive: the mixture likelihood; cooperative: the blend's squared error).

>>> import torch, moe_utils as mu
>>> model = mu.MixtureOfExperts.linear(n_inputs=1, n_outputs=1, n_experts=3)
>>> out = model(torch.zeros(5, 1))
>>> out.experts.shape, out.routing.log_probs.shape, model.predict(torch.zeros(5, 1)).shape
(torch.Size([5, 3, 1]), torch.Size([5, 3]), torch.Size([5, 1]))
"""

from typing import NamedTuple

import torch
from torch import nn

from . import _checks as checks
from . import experts as experts_module
from . import likelihoods, mixture, routing
from ._scaling import standardiser
from .routing import Routing

__all__ = ["MixtureOfExperts", "Output"]


class Output(NamedTuple):
    """What a forward pass returns; N samples, E experts, O outputs (C logits for a classifier)."""

    experts: torch.Tensor  # (N, E, O) every expert's output
    routing: Routing       # the router's log-probabilities, combine weights, choices, aux losses


class MixtureOfExperts(nn.Module):
    """A router network, stacked experts, a likelihood head and a routing rule (default ``Softmax``)."""

    def __init__(self, router: nn.Module, experts: experts_module.Experts, likelihood: nn.Module,
                 rule: nn.Module | None = None):
        super().__init__()
        sizes = {"router": router.n_experts, "experts": experts.n_experts, "likelihood": likelihood.n_experts}
        if len(set(sizes.values())) > 1:
            raise ValueError("router, experts and likelihood must have the same number of experts, got "
                             + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        if router.n_inputs != experts.n_inputs:
            raise ValueError(f"router reads {router.n_inputs} inputs but the experts read {experts.n_inputs}")
        self.router, self.experts, self.likelihood = router, experts, likelihood
        self.rule = routing.Softmax() if rule is None else rule
        self.n_experts, self.n_inputs = experts.n_experts, experts.n_inputs

    @classmethod
    def linear(cls, n_inputs: int, n_outputs: int, n_experts: int, router: str = "linear",
               likelihood: str = "gaussian", rule: nn.Module | None = None, x: torch.Tensor | None = None,
               seed: int = 0, **router_kwargs) -> "MixtureOfExperts":
        """Linear experts, a router by name (``routing.make``; ``router_kwargs`` such as ``n_hidden``
        pass through) and a ``"gaussian"`` head with ``n_outputs`` outputs or a ``"categorical"``
        one over ``n_outputs`` classes. ``x`` (N, D), if given, sets the inputs' standardisation of
        router and experts. Every parameter is drawn from ``seed``."""
        gen = torch.Generator().manual_seed(checks.seed(seed))
        likelihood = checks.choice("likelihood", likelihood, ("gaussian", "categorical"))
        shift = scale = None
        if x is not None:
            x = checks.matrix("x", x, d=n_inputs)
            shift, scale = standardiser(x)
        experts = experts_module.Linear(n_inputs, n_outputs, n_experts, shift=shift, scale=scale, generator=gen)
        net = routing.make(router, n_inputs, n_experts, x=x, generator=gen, **router_kwargs)
        head = (likelihoods.Gaussian(n_experts, n_outputs) if likelihood == "gaussian"
                else likelihoods.Categorical(n_experts, n_outputs))
        return cls(net, experts, head, rule)

    def forward(self, x: torch.Tensor) -> Output:
        """x (N, D), or (N,) when D = 1 -> ``Output``."""
        x = checks.inputs(x, self.n_inputs)
        return Output(self.experts(x), self.rule(self.router(x)))

    def log_lik(self, out: Output, y: torch.Tensor) -> torch.Tensor:
        """log p_e(y_n | x_n) of every expert: (N, E)."""
        return self.likelihood.log_lik(out.experts, y)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor, out: Output | None = None) -> torch.Tensor:
        """log p(y_n | x_n) of the mixture under the current routing: (N,)."""
        out = self(x) if out is None else out
        return mixture.routing_log_prob(out.routing, self.log_lik(out, y))

    def responsibilities(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """P(expert e | x_n, y_n): (N, E). Needs y, so it is not a gate for new inputs."""
        out = self(x)
        return mixture.e_step(out.routing.log_probs, self.log_lik(out, y))[0]

    def predict(self, x: torch.Tensor, out: Output | None = None) -> torch.Tensor:
        """The mixture's prediction: its mean (N, O) (Gaussian), or log p(c | x) (N, C) (Categorical)."""
        out = self(x) if out is None else out
        return self.likelihood.predict(out.routing, out.experts)

    def blend(self, out: Output) -> torch.Tensor:
        """The blended prediction sum_e w_e f_e that the cooperative loss scores: (N, O)."""
        return self.likelihood.blend(out.routing, out.experts)

    def log_prior(self) -> torch.Tensor:
        """log p(parameters) up to a constant: the router's prior plus the experts' (a scalar)."""
        return self.router.log_prior() + self.likelihood.log_prior(self.experts)
