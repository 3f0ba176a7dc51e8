"""``SparseMoE``: the sparse mixture-of-experts layer of today's large models (chapter 7).

    out(x) = sum_{e in chosen(x)} w_e(x) f_e(x) + sum_s shared_s(x)              x (N, D) -> (N, D)

A linear router gives logits (N, E); a rule from ``topk`` chooses K experts per token with
their weights (and may drop assignments past a capacity); stacked MLP experts
(``experts.MLP``, gated SwiGLU by default: w_gate, w_up (E, D, H), w_down (E, H, D)) run on
their tokens only, through a ``dispatch`` ("sort", "padded", "dense" or "loop"); optional shared
experts (DeepSeek) see every token. Compute per token: that of K experts (plus the shared ones),
whatever E. A dropped token gets nothing from the layer: put a residual around it,
x + layer(x).out, and it passes on unchanged. With E = 1 and K = 1 it is a dense FFN.

>>> import torch, moe_utils as mu
>>> layer = mu.SparseMoE(n_inputs=8, n_hidden=16, n_experts=4, rule=mu.topk.TopK(k=2))
>>> out = layer(torch.randn(10, 8))
>>> out.out.shape, out.routing.chosen.shape
(torch.Size([10, 8]), torch.Size([10, 2]))
"""

from typing import NamedTuple

import torch
from torch import nn

from . import _checks as checks
from . import dispatch as dispatch_module
from . import experts as experts_module
from . import routing as routing_module
from . import topk
from .routing import Routing

__all__ = ["DISPATCH", "SparseMoE", "SparseOutput"]

DISPATCH = ("sort", "padded", "dense", "loop")


class SparseOutput(NamedTuple):
    """What ``SparseMoE`` returns: the layer's output and the routing (with its aux losses)."""

    out: torch.Tensor  # (N, D)
    routing: Routing


class SparseMoE(nn.Module):
    """A router, a sparse routing rule, E stacked MLP experts and ``n_shared`` shared ones.

    n_inputs D, n_hidden H (per expert), n_experts E; ``rule`` a ``topk`` rule (default
    ``TopK(k=min(2, E))``); ``gated`` SwiGLU experts without biases (else ``activation`` with
    biases); ``dispatch`` one of ``DISPATCH`` (all give the same output, see ``dispatch``;
    "padded" uses the rule's capacity, or the largest load when the rule has none); the router
    is ``routing.Linear`` (its ``bias`` starts at 0). Parameters are drawn from ``generator``.
    """

    def __init__(self, n_inputs: int, n_hidden: int, n_experts: int, rule: nn.Module | None = None,
                 gated: bool = True, activation: str = "gelu", n_shared: int = 0, dispatch: str = "sort",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n_inputs = checks.positive_int("n_inputs", n_inputs)
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.rule = topk.TopK(k=min(2, n_experts)) if rule is None else rule
        self.dispatch = checks.choice("dispatch", dispatch, DISPATCH)
        self.router = routing_module.Linear(n_inputs, self.rule.n_logits(n_experts), generator=generator)
        self.experts = experts_module.MLP(n_inputs, n_hidden, n_inputs, n_experts, activation=activation,
                                          gated=gated, generator=generator)
        self.n_shared = checks.positive_int("n_shared", n_shared, minimum=0)
        self.shared = experts_module.MLP(n_inputs, n_hidden, n_inputs, n_shared, activation=activation, gated=gated,
                                         generator=generator) if n_shared else None

    def forward(self, x: torch.Tensor) -> SparseOutput:
        """x (N, D) -> ``SparseOutput`` (out (N, D), routing); NaN or inf in x raise."""
        x = checks.inputs(x, self.n_inputs)
        if not torch.isfinite(x.sum()):  # one reduction: cheap in a training loop
            raise ValueError("x contains NaN or inf (or values so large that they overflow)")
        routing = self.rule(self.router(x))
        out = self.route(x, routing)
        if self.shared is not None:
            out = out + self.shared(x).sum(1)
        return SparseOutput(out, routing)

    def route(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The routed experts' part of the output for a given routing: (N, D)."""
        kept = routing.aux.get("kept")
        args = (self.experts, x, routing.chosen, routing.weights)
        if self.dispatch == "sort":
            return dispatch_module.sort_based(*args, kept=kept)
        if self.dispatch == "dense":
            return dispatch_module.dense(*args, kept=kept)
        if self.dispatch == "loop":
            return dispatch_module.masked_loop(*args, kept=kept)
        c = routing.aux.get("capacity")
        if c is None:  # a rule without a capacity: the largest load, so that nothing is dropped
            c = max(1, int(torch.bincount(routing.chosen.reshape(-1), minlength=self.n_experts).max()))
        return dispatch_module.padded(*args, capacity=c, kept=kept)

    def active_parameters(self) -> int:
        """Parameters one token uses: the router, K routed experts and the shared ones."""
        per_expert = sum(p[0].numel() for p in self.experts.parameters())
        k = getattr(self.rule, "k", None) or getattr(self.rule, "capacity_factor", 1)
        shared = sum(p.numel() for p in self.shared.parameters()) if self.shared is not None else 0
        return sum(p.numel() for p in self.router.parameters()) + round(k * per_expert) + shared
