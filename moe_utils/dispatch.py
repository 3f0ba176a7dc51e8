"""Dispatch: send each token to its chosen experts, run them, and combine — three ways that agree.

A routing rule gives, for N tokens, the chosen experts ``chosen`` (N, K), their combine weights
``weights`` (N, K) and, when a capacity limit dropped some assignments, a mask ``kept`` (N, K).
The layer's output is

    out_n = sum_{j : kept_nj} weights_nj f_{chosen_nj}(x_n)                              (N, O)

- ``dense``: every expert on every token (N, E, O), then pick and weight. E/K times the work;
  the reference for tests and teaching.
- ``padded``: GShard/Switch's static shapes. Each expert gets a buffer of ``capacity`` C rows,
  C = ceil(cf K N / E) (``capacity``); an assignment takes row ``positions`` (first choices of
  all tokens in token order, then second choices, ...), overflow is dropped; one batched product
  over the (C, E, D) buffer. Wasted rows when the load is uneven, dropped tokens when C is small.
- ``sort_based``: no padding and no dropping beyond ``kept``. Its steps are separate functions,
  so that the expert-parallel layer (chapter 8) can put an all-to-all exchange between them:

      plan = sort(chosen, E, kept)         # argsort by expert (stable), counts per expert
      xs = permute(z, plan)                # (M, D): one gather, rows grouped by expert
      ys = compute(experts, xs, counts)    # split into E contiguous blocks, one product each
      out = combine(ys, plan, weights, N)  # weight, and scatter back with index_add

- ``masked_loop``: the common idiom in public code (a ``torch.where`` per expert), for comparison.

M is the number of routed (token, expert) pairs, N K at most.

>>> import torch, moe_utils as mu
>>> experts = mu.experts.MLP(4, 8, 4, n_experts=3, gated=True)
>>> x, chosen, w = torch.randn(6, 4), torch.tensor([[0, 1], [2, 0]] * 3), torch.full((6, 2), 0.5)
>>> plan = mu.dispatch.sort(chosen, 3)
>>> plan.counts.tolist(), plan.token.tolist()                  # expert 0's tokens, then 1's, 2's
([6, 3, 3], [0, 1, 2, 3, 4, 5, 0, 2, 4, 1, 3, 5])
>>> ref = mu.dispatch.dense(experts, x, chosen, w)
>>> torch.allclose(mu.dispatch.sort_based(experts, x, chosen, w), ref, atol=1e-6)
True
>>> torch.allclose(mu.dispatch.padded(experts, x, chosen, w, capacity=6), ref, atol=1e-6)
True
"""

import math
from typing import NamedTuple

import torch

from . import _checks as checks

__all__ = ["Plan", "capacity", "combine", "compute", "dense", "masked_loop", "padded", "permute", "positions",
           "sort", "sort_based"]


def capacity(n_tokens: int, n_experts: int, k: int, factor: float) -> int:
    """Rows per expert C = ceil(factor k N / E), at most N (an expert sees a token once)."""
    factor = checks.finite_float("capacity_factor", factor, 0.0, low_open=True)
    return max(1, min(n_tokens, math.ceil(factor * k * n_tokens / n_experts)))


def positions(chosen: torch.Tensor, n_experts: int, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Each assignment's place in its expert's queue (N, K), counting from 0: the first choices
    of all tokens in token order come first, then the second choices, ... (GShard's priority).
    Assignments not ``kept`` take no place (their entry is meaningless)."""
    n, k = chosen.shape
    flat = chosen.T.reshape(-1)                                                # (K N,) choice-major
    if kept is not None:
        flat = torch.where(kept.T.reshape(-1), flat, n_experts)                # a queue nobody reads
    order = torch.argsort(flat, stable=True)
    starts = torch.cumsum(torch.bincount(flat, minlength=n_experts + 1), 0)
    starts = torch.cat([starts.new_zeros(1), starts[:-1]])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return (rank - starts[flat]).reshape(k, n).T


def _check(experts, x, chosen, weights, kept):
    if not torch.is_tensor(chosen) or chosen.ndim != 2 or chosen.dtype != torch.long:
        raise ValueError(f"chosen must be a long tensor (N, K), got {getattr(chosen, 'shape', chosen)}")
    if x.ndim != 2 or x.shape[0] != chosen.shape[0]:
        raise ValueError(f"x must have shape ({chosen.shape[0]}, D) (one row per token), got {tuple(x.shape)}")
    if weights.shape != chosen.shape:
        raise ValueError(f"weights must have the shape of chosen {tuple(chosen.shape)}, got {tuple(weights.shape)}")
    if kept is not None and kept.shape != chosen.shape:
        raise ValueError(f"kept must have the shape of chosen {tuple(chosen.shape)}, got {tuple(kept.shape)}")
    if chosen.numel() and (chosen.min() < 0 or chosen.max() >= experts.n_experts):
        raise ValueError(f"chosen must hold expert indices in 0 .. {experts.n_experts - 1}")


def _standardised(experts, x: torch.Tensor) -> torch.Tensor:
    """The experts' inputs z = (x - shift) / scale; x itself when they do not scale (the usual
    case in a sparse layer), which saves two passes over the tokens."""
    if bool(experts.shift.any()) or bool((experts.scale != 1).any()):
        return experts.standardise(x)
    if x.shape[-1] != experts.n_inputs:
        raise ValueError(f"x must have shape (N, {experts.n_inputs}), got {tuple(x.shape)}")
    return x


# ---------------------------------------------------------------------- the dense reference
def dense(experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
          kept: torch.Tensor | None = None) -> torch.Tensor:
    """Every expert on every token, then the chosen ones weighted: x (N, D) -> (N, O)."""
    _check(experts, x, chosen, weights, kept)
    every = experts(x)                                                         # (N, E, O)
    picked = every.gather(1, chosen[:, :, None].expand(-1, -1, every.shape[2]))  # (N, K, O)
    w = weights if kept is None else weights * kept
    return torch.einsum("nk,nko->no", w, picked)


# ---------------------------------------------------------------------- capacity-padded
def padded(experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, capacity: int,
           kept: torch.Tensor | None = None) -> torch.Tensor:
    """Static shapes: a (C, E, D) buffer, ``capacity`` C rows per expert, one batched product.

    Assignments past an expert's C-th row are dropped (their tokens get nothing from this
    expert: a residual connection around the layer passes them on). ``experts`` must accept
    per-expert inputs (N, E, D), as ``experts.MLP`` does. x (N, D) -> (N, O).
    """
    _check(experts, x, chosen, weights, kept)
    capacity = checks.positive_int("capacity", capacity)
    n, e = x.shape[0], experts.n_experts
    pos = positions(chosen, e, kept)
    keep = pos < capacity if kept is None else kept & (pos < capacity)
    token = torch.arange(n, device=x.device)[:, None].expand_as(chosen)[keep]   # (M,)
    expert, row = chosen[keep], pos[keep]
    z = _standardised(experts, x)
    buffer = z.new_zeros(capacity, e, z.shape[1]).index_put_((row, expert), z.index_select(0, token))
    out = experts.function(experts.params(), buffer)                           # (C, E, O)
    ys = out[row, expert] * weights[keep][:, None]                             # (M, O)
    return ys.new_zeros(n, ys.shape[1]).index_add_(0, token, ys)


# ---------------------------------------------------------------------- sort-based, in steps
class Plan(NamedTuple):
    """Where each routed (token, expert) pair goes, grouped by expert."""

    token: torch.Tensor   # (M,) the token of each pair, expert 0's first, token order within
    slot: torch.Tensor    # (M,) the pair's index in the flattened (N K) choices: its weight
    counts: torch.Tensor  # (E,) pairs per expert; M = counts.sum()


def sort(chosen: torch.Tensor, n_experts: int, kept: torch.Tensor | None = None) -> Plan:
    """Group the (``kept``) pairs of chosen (N, K) by expert: one stable argsort."""
    k = chosen.shape[1]
    flat = chosen.reshape(-1)
    slot = torch.arange(flat.numel(), device=chosen.device)
    if kept is not None:
        slot = slot[kept.reshape(-1)]
        flat = flat[slot]
    order = torch.argsort(flat, stable=True)
    slot = slot[order]
    return Plan(slot // k, slot, torch.bincount(flat, minlength=n_experts))


def permute(z: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The rows of z (N, D) in the plan's order: (M, D), one gather (its backward: one index_add)."""
    return z.index_select(0, plan.token)


def compute(experts, xs: torch.Tensor, counts: torch.Tensor, cat: bool = True):
    """Run expert e on its block of xs (M, D), the rows counts[:e].sum() .. counts[:e+1].sum():
    (M, O), or with ``cat=False`` the list of the E blocks' outputs (M_e, O), which ``combine``
    takes as they are (one copy of the rows fewer). ``experts.blocks`` makes one product per
    expert and layer. When autograd records, the experts have few rows each (``GROUPED_ROWS``) and
    can (``MLP.grouped``: float32 on the CPU), one ``grouped_mm`` per layer instead: its backward
    writes the weight gradients (E, ...) at once, where the blocks' backward stacks E pieces, a
    saving per expert; the biases cost two more passes over the hidden rows, a cost per row."""
    if _grouped(experts, xs, xs.shape[0]):
        ys = experts.grouped(xs, counts)
        return ys if cat else list(ys.split(counts.tolist()))
    blocks = experts.blocks(xs.split(counts.tolist()))
    return torch.cat(blocks) if cat else blocks


# Grouped products when the experts average at most this many rows. Measured on the CPU (one
# thread, D = 256, H = 512, forward + backward, against the blocks): 15% faster at 64 rows
# (E = 64, N = 4096, k = 1), 2% at 256, 3% slower at 1024 (E = 8, N = 4096, k = 2); without
# autograd, 0-9% slower, never faster (the blocks' ``addmm`` adds the bias inside the product).
GROUPED_ROWS = 256


def _grouped(experts, xs: torch.Tensor, rows: int) -> bool:
    """Whether ``compute`` takes the grouped products for ``rows`` rows like xs (see ``compute``)."""
    return (torch.is_grad_enabled() and rows <= GROUPED_ROWS * experts.n_experts
            and hasattr(experts, "groupable") and experts.groupable(xs)
            and (xs.requires_grad or any(p.requires_grad for p in experts.parameters())))


def combine(ys, plan: Plan, weights: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """out_n = sum over the pairs of token n of weight * y: ys (M, O) in the plan's order, or the
    list of the E experts' blocks (M_e, O); weights (N, K) -> (N, O). The sums are ``index_add_``
    in place on fresh zeros (on the CPU the out-of-place ``index_add`` is several times slower)."""
    w = weights.reshape(-1).index_select(0, plan.slot)[:, None]
    if torch.is_tensor(ys):
        return ys.new_zeros(n_tokens, ys.shape[1]).index_add_(0, plan.token, ys * w)
    counts = [len(y) for y in ys]
    out = ys[0].new_zeros(n_tokens, ys[0].shape[1])
    for y, token, w_e in zip(ys, plan.token.split(counts), w.split(counts)):
        out.index_add_(0, token, y * w_e)
    return out


def sort_based(experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
               kept: torch.Tensor | None = None) -> torch.Tensor:
    """Sort, permute, compute, combine (no padding, nothing dropped but ``kept``): x (N, D) -> (N, O).
    Where x needs no gradient, each expert's rows are gathered just before its product instead
    of permuted all at once (the loop's locality, without its E scans)."""
    _check(experts, x, chosen, weights, kept)
    plan = sort(chosen, experts.n_experts, kept)
    z = _standardised(experts, x)
    grouped = _grouped(experts, z, plan.token.numel())
    if grouped or (torch.is_grad_enabled() and z.requires_grad):  # one gather: its backward is one index_add
        ys = compute(experts, permute(z, plan), plan.counts, cat=grouped)
    else:  # each expert's rows gathered just before its product reads them (still in the caches)
        ys = experts.blocks([z.index_select(0, token) for token in plan.token.split(plan.counts.tolist())])
    return combine(ys, plan, weights, x.shape[0])


# ---------------------------------------------------------------------- the common idiom
def masked_loop(experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                kept: torch.Tensor | None = None) -> torch.Tensor:
    """A ``torch.where(chosen == e)`` per expert, a gather and an index_add each (as in
    Hugging Face's Mixtral block): the same result, E scans of the choices. x (N, D) -> (N, O)."""
    _check(experts, x, chosen, weights, kept)
    z, mask = _standardised(experts, x), chosen if kept is None else torch.where(kept, chosen, -1)
    found = [torch.where(mask == e) for e in range(experts.n_experts)]          # (token, slot) each
    ys = experts.blocks([z.index_select(0, token) for token, _ in found])
    out = z.new_zeros(x.shape[0], experts.n_outputs)
    for (token, slot), y in zip(found, ys):
        out.index_add_(0, token, y * weights[token, slot][:, None])
    return out
