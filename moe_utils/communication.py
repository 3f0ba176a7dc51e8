"""What the exchanges of expert parallelism cost: bytes counted, bytes expected, and time (chapter 8).

**Bytes.** In one exchange rank r sends every routed row whose expert lives on another rank,

    sent_r = sum over the experts e not on rank r of counts_e          rows of D elements,

and a forward pass makes two exchanges (tokens out, results back; the backward pass makes two more
of the same sizes). Under uniform routing the K distinct experts of a token are a uniform K-subset
of the E, so an expert's load from the N_r tokens of a rank is L ~ Binomial(N_r, K / E), and with a
capacity of C rows (``dispatch.capacity``) the expected rows sent per exchange are

    (R - 1) (E / R) E[min(L, C)]      =  N_r K (R - 1) / R   without a capacity   (``expected_rows``)

while the capacity-padded (static-shape) variant always sends (R - 1) (E / R) C rows
(``padded_rows``), the padding included.

**Time.** The alpha-beta (latency-bandwidth) model prices a message of b bytes at alpha + beta b.
An all-to-all in which a rank sends V bytes to R - 1 peers is modelled as (R - 1) alpha + beta V.
``time_all_to_all`` measures all_to_all_single inside a process group, ``fit_alpha_beta`` fits
alpha and beta to such measurements, and ``all_to_all_seconds`` extrapolates to GPUs in nodes:
NVLink inside a node, a network between nodes, sent directly or hierarchically.

>>> import torch, moe_utils as mu
>>> mu.communication.expected_rows(n_tokens=1024, n_experts=8, k=2, world_size=4)
1536.0
>>> mu.communication.rows_sent(torch.tensor([5, 1, 0, 2]), rank=1, world_size=2)
6
"""

import math
import time
from typing import NamedTuple

import torch
import torch.distributed as dist

from . import _checks as checks
from . import expert_parallel, topk

__all__ = ["AlphaBeta", "all_to_all_seconds", "element_size", "expected_rows", "fit_alpha_beta", "padded_rows",
           "rows_sent", "run_and_time", "time_all_to_all", "uniform_counts"]


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype`` (4 for float32, 2 for bfloat16)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch dtype, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def rows_sent(counts: torch.Tensor, rank: int, world_size: int) -> int:
    """Rows a rank sends to other ranks in one exchange: counts (E,), the rows it routes to each
    expert, minus those of its own experts (rank r holds experts r E/R .. (r+1) E/R - 1)."""
    if not torch.is_tensor(counts) or counts.ndim != 1:
        raise ValueError(f"counts must be a tensor (E,), got {getattr(counts, 'shape', counts)!r}")
    per = expert_parallel.experts_per_rank(len(counts), world_size)
    rank = checks.positive_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
    return int(counts.sum() - counts[rank * per:(rank + 1) * per].sum())


def expected_rows(n_tokens: int, n_experts: int, k: int, world_size: int, capacity: int | None = None) -> float:
    """Expected rows one rank sends per exchange under uniform routing: (R - 1) (E / R) E[min(L, C)],
    L ~ Binomial(N_r, K / E), N_r = ``n_tokens`` on the rank; no capacity: N_r K (R - 1) / R."""
    per = expert_parallel.experts_per_rank(n_experts, world_size)
    n, k = checks.positive_int("n_tokens", n_tokens, minimum=0), checks.positive_int("k", k)
    if k > n_experts:
        raise ValueError(f"k must be <= n_experts ({n_experts}), got {k}")
    if capacity is None:
        return n * k * (world_size - 1) / world_size
    capacity = checks.positive_int("capacity", capacity)
    loads = torch.arange(n + 1, dtype=torch.float64)
    p = torch.distributions.Binomial(n, probs=torch.tensor(k / n_experts, dtype=torch.float64)).log_prob(loads).exp()
    return (world_size - 1) * per * float((p * loads.clamp(max=capacity)).sum())


def padded_rows(n_experts: int, world_size: int, capacity: int) -> int:
    """Rows one rank sends per exchange in the padded variant: C rows for each of the (R - 1) E / R
    experts of the other ranks, used or not."""
    per = expert_parallel.experts_per_rank(n_experts, world_size)
    return (world_size - 1) * per * checks.positive_int("capacity", capacity)


def uniform_counts(n_tokens: int, n_experts: int, k: int, capacity_factor: float | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, int | None]:
    """Route ``n_tokens`` tokens uniformly (the top-k rule on i.i.d. Gaussian logits, so each token's
    experts are a uniform k-subset), with the rule's capacity. Returns the kept rows per expert (E,)
    and the capacity C (None without a capacity factor)."""
    n_tokens = checks.positive_int("n_tokens", n_tokens)
    logits = torch.randn(n_tokens, checks.positive_int("n_experts", n_experts), generator=generator)
    routing = topk.TopK(k=k, capacity_factor=capacity_factor)(logits)
    kept = routing.aux.get("kept")
    chosen = routing.chosen if kept is None else routing.chosen[kept]
    return torch.bincount(chosen.reshape(-1), minlength=n_experts), routing.aux.get("capacity")


# ---------------------------------------------------------------------- time
class AlphaBeta(NamedTuple):
    """A link in the alpha-beta model: ``alpha`` seconds per message, ``beta`` seconds per byte."""

    alpha: float
    beta: float

    def seconds(self, n_bytes: float, messages: float = 1) -> float:
        """Time to send ``n_bytes`` in ``messages`` messages: messages alpha + beta n_bytes."""
        return messages * self.alpha + self.beta * n_bytes

    @property
    def bandwidth(self) -> float:
        """Bytes per second, 1 / beta."""
        return math.inf if self.beta == 0 else 1.0 / self.beta


def fit_alpha_beta(messages, n_bytes, seconds) -> AlphaBeta:
    """Fit seconds ~ alpha messages + beta n_bytes by least squares on the relative error (the
    measurements span orders of magnitude), with alpha, beta >= 0. Three 1-D sequences of one length."""
    m, b, t = (checks.vector(name, v, dtype=torch.float64).double()
               for name, v in (("messages", messages), ("n_bytes", n_bytes), ("seconds", seconds)))
    checks.same_length(messages=m, n_bytes=b, seconds=t)
    if len(t) < 2 or (t <= 0).any():
        raise ValueError("fit_alpha_beta needs at least two measurements, all seconds > 0")
    design = torch.stack([m, b], 1) / t[:, None]             # rows scaled by 1 / t: relative error
    ones = torch.ones_like(t)
    coef = torch.linalg.lstsq(design, ones[:, None]).solution[:, 0]
    if (coef < 0).any():                                      # the best fit with one term at 0
        fits = [torch.zeros(2, dtype=torch.float64).index_fill(0, torch.tensor([j]), float(
            (design[:, j] @ ones) / (design[:, j] @ design[:, j]))) for j in (0, 1)]
        coef = min(fits, key=lambda c: float(((design @ c - ones) ** 2).sum()))
    return AlphaBeta(float(coef[0]), float(coef[1]))


def time_all_to_all(sizes, repeats: int = 5, group=None) -> list[float]:
    """Inside a process group: the seconds of one all_to_all_single in which every rank sends
    ``sizes[i]`` bytes (float32) to every rank, for each i: the fastest of ``repeats`` calls after
    one warm-up (the least disturbed by other processes, as ``timeit`` does), the largest over the
    ranks (an all-to-all ends when its slowest rank does)."""
    repeats = checks.positive_int("repeats", repeats)
    world, cuda = dist.get_world_size(group), dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    out = []
    for size in sizes:
        n = max(1, checks.positive_int("sizes", size) // 4)
        send, recv = torch.ones(world * n, device=device), torch.empty(world * n, device=device)
        times = []
        for i in range(repeats + 1):
            dist.barrier(group=group)
            start = time.perf_counter()
            dist.all_to_all_single(recv, send, group=group)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        worst = torch.tensor([min(times[1:])], dtype=torch.float64, device=device)
        dist.all_reduce(worst, dist.ReduceOp.MAX, group=group)
        out.append(float(worst))
    return out


def run_and_time(rank: int, world_size: int, configs: list[dict], sizes=(), repeats: int = 5) -> dict:
    """A worker for ``parallel.run_local`` that does several things in one launch (a launch costs
    seconds): ``expert_parallel.run`` for each config, then ``time_all_to_all(sizes, repeats)``.
    Returns {"runs": [one result per config], "all_to_all": [seconds per size]}."""
    runs = [expert_parallel.run(rank, world_size, config) for config in configs]
    return {"runs": runs, "all_to_all": time_all_to_all(sizes, repeats)}


def all_to_all_seconds(n_bytes: float, world_size: int, gpus_per_node: int, nvlink: AlphaBeta, network: AlphaBeta,
                       hierarchical: bool = False) -> dict:
    """Modelled time of one all-to-all in which each of R GPUs holds ``n_bytes`` spread evenly over
    the R destinations (its own share included), G = ``gpus_per_node`` per node.

    Direct: G - 1 NVLink and R - G network messages, the two kinds of traffic in parallel:
    latency (G-1) a_nv + (R-G) a_net, bandwidth max(n (G-1)/R b_nv, n (R-G)/R b_net).
    Hierarchical (DeepSpeed-MoE): an all-to-all inside the node that gathers what goes to GPUs of
    the same local index, then one between nodes: latency (G-1) a_nv + (R/G - 1) a_net, bandwidth
    n (G-1)/G b_nv + n (R-G)/R b_net (the NVLink step carries almost everything once more).
    Returns {"latency", "bandwidth", "seconds"} in seconds.
    """
    world = checks.positive_int("world_size", world_size)
    g = min(checks.positive_int("gpus_per_node", gpus_per_node), world)
    n = checks.finite_float("n_bytes", n_bytes, 0.0)
    if world % g:
        raise ValueError(f"world_size ({world}) must be a multiple of gpus_per_node ({g})")
    if hierarchical:
        latency = (g - 1) * nvlink.alpha + (world // g - 1) * network.alpha
        bandwidth = n * (g - 1) / g * nvlink.beta + n * (world - g) / world * network.beta
    else:
        latency = (g - 1) * nvlink.alpha + (world - g) * network.alpha
        bandwidth = max(n * (g - 1) / world * nvlink.beta, n * (world - g) / world * network.beta)
    return {"latency": latency, "bandwidth": bandwidth, "seconds": latency + bandwidth}
