"""Sparse dispatch against the dense layer and the FLOP-ideal speed-up E/k.

The expert part of a sparse layer (the routing given: the chosen experts and weights of a random
router), with N tokens, D = 256, H = 512 (plain MLP experts, GELU), E experts and k per token,
timed for a forward pass (no autograd) and a forward + backward pass, four ways:

- dense: every expert on every token, weighted by the router's softmax (the soft MoE of the same
  experts): E/k times the FLOPs of the sparse layer, so E/k is the ideal speed-up over it. One
  expert at a time on blocks of tokens, so that its activations fit in memory;
- padded: capacity-padded batched product (capacity factor 1.25; what overflows is dropped);
- sort: sort-based (one argsort, one gather, one product per expert and layer, one index_add);
- loop: a torch.where per expert (the common idiom in public code).

Then the pitfall of indexing the stacked weights as w[e] in the loop (instead of cutting them once).

Two things make the CPU times comparable (both apply to every way, the dense one included):

- the sparse ways are timed in turns (padded, sort, loop, padded, ...; the best of 3 to 7 turns),
  so that a burst of load from others on a shared machine hits all three alike;
- freed memory is kept for reuse (glibc's ``mallopt``: no ``mmap``, no trimming), as PyTorch's
  CUDA caching allocator, or jemalloc / tcmalloc on the CPU, would do. By default every tensor over
  32 MB is a fresh ``mmap`` whose pages the kernel zeroes on first touch, and whether a smaller
  one is depends on what was freed before: we counted 0.03 to 0.3 CPU seconds of page faults
  (system time) per call of the same layer (N = 65536, E = 8), changing with the calls before.
"""

import ctypes
import os
import time

import torch

import moe_utils as mu
from moe_utils import dispatch

CAPACITY_FACTOR = 1.25


CLOCK = time.perf_counter  # time.process_time with one thread: CPU seconds, robust to a shared machine


def once(fn, device: str) -> float:
    """Seconds of one call of fn (CUDA synchronised)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = CLOCK()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return CLOCK() - start


def measure(fn, device: str, budget: float = 5.0) -> float:
    """Seconds of one call of fn: the best of 3 after a warm-up call, or the first call alone if
    it took longer than ``budget`` seconds (the big dense runs, where a warm-up is negligible)."""
    first = once(fn, device)
    return first if first > budget else min(once(fn, device) for _ in range(3))


def reuse_freed_memory() -> bool:
    """Keep freed memory in the process (glibc: no mmap, no trimming); False where not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from malloc.h; mallopt takes C ints
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def in_turns(fns: dict, device: str, budget: float = 3.0) -> dict:
    """Seconds of one call of each fn: the best of 3 to 7 turns after a warm-up call each; each
    turn calls every fn once, starting one further along (a b c, b c a, c a b, a b c, ...), so that
    each fn follows each other one (whose data evicted its own from the caches); no more turns
    once they took ``budget`` seconds."""
    for fn in fns.values():
        fn()
    best, spent = {name: float("inf") for name in fns}, 0.0
    names = list(fns)
    for turn in range(7):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            seconds = once(fns[name], device)
            best[name], spent = min(best[name], seconds), spent + seconds
        if turn >= 2 and spent > budget:
            break
    return best


def dense(experts, x, probs, grad=None):
    """sum_e probs[:, e] f_e(x): each expert on every token of a block, accumulated in place (of
    the dense forms we timed, one large product over all experts at once included, the fastest).
    With ``grad``, each block's backward right after it: the same work, in bounded memory."""
    chunk = max(1024, 2**17 // experts.n_experts)
    for start in range(0, x.shape[0], chunk):
        xs, ps = x[start:start + chunk], probs[start:start + chunk]
        out = xs.new_zeros(xs.shape[0], experts.n_outputs)
        for e, y in enumerate(experts.blocks([xs] * experts.n_experts)):
            out.addcmul_(ps[:, e:e + 1], y)
        if grad is not None:
            out.backward(grad[start:start + chunk])


def indexed_loop(experts, x, chosen, weights):
    """The masked loop with the weights indexed as w1[e], w2[e]: each backward writes (E, ...) zeros."""
    out = x.new_zeros(x.shape)
    for e in range(experts.n_experts):
        token, slot = torch.where(chosen == e)
        hidden = torch.nn.functional.gelu(x[token] @ experts.w1[e] + experts.b1[e])
        out.index_add_(0, token, (hidden @ experts.w2[e] + experts.b2[e]) * weights[token, slot][:, None])
    return out


class Case:
    """Plain MLP experts (D -> H -> D, GELU), tokens x (N, D), a random router's softmax (N, E) and
    its top k, and the gradient of the output that a backward pass receives."""

    def __init__(self, n, e, k, d, h, device, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.experts = mu.experts.MLP(d, h, d, e, activation="gelu", generator=gen).to(device)
        self.x = torch.randn(n, d, generator=gen).to(device).requires_grad_()
        probs = torch.softmax(torch.randn(n, e, generator=gen), -1).to(device)
        weights, self.chosen = probs.topk(k, -1)
        self.probs, self.weights = probs.requires_grad_(), weights.requires_grad_()
        self.grad = torch.randn(n, d, generator=gen).to(device)
        self.capacity = dispatch.capacity(n, e, k, CAPACITY_FACTOR)

    def ways(self):
        args = (self.experts, self.x, self.chosen, self.weights)
        return {"padded": lambda: dispatch.padded(*args, capacity=self.capacity),
                "sort": lambda: dispatch.sort_based(*args),
                "loop": lambda: dispatch.masked_loop(*args),
                "loop, w[e]": lambda: indexed_loop(*args)}

    def call(self, fn, backward):
        """fn() (forward without autograd) or fn().backward(grad), as a function of no arguments."""
        tensors = [self.x, self.probs, self.weights, *self.experts.parameters()]

        def call():
            for t in tensors:
                t.grad = None
            if backward:
                fn().backward(self.grad)
            else:
                with torch.no_grad():
                    fn()
        return call

    def timed(self, fn, device, backward):
        """Seconds of fn() (forward without autograd) or of fn().backward(grad)."""
        return measure(self.call(fn, backward), device)

    def dense_seconds(self, device, backward):
        def call():
            for t in [self.x, self.probs, *self.experts.parameters()]:
                t.grad = None
            if backward:
                dense(self.experts, self.x, self.probs, self.grad)
            else:
                with torch.no_grad():
                    dense(self.experts, self.x, self.probs)
        return measure(call, device)


def table(device, sizes, d, h, backward):
    what = "forward + backward" if backward else "forward (no autograd)"
    print(f"Sparse dispatch on {device}, {what}: seconds, and speed-up over dense beside the ideal E/k "
          f"(D={d}, H={h}; padded: capacity factor {CAPACITY_FACTOR})")
    print(f"{'N':>7}{'E':>4}{'k':>3} |{'dense':>9}{'padded':>9}{'sort':>9}{'loop':>9} |"
          f"{'padded':>7}{'sort':>7}{'loop':>7}{'ideal':>7}{'sort/ideal':>11}")
    dense_seconds, met = {}, 0
    for n, e, k in sizes:
        case = Case(n, e, k, d, h, device)
        if (n, e) not in dense_seconds:  # the dense layer does not depend on k
            dense_seconds[n, e] = case.dense_seconds(device, backward)
        t = {"dense": dense_seconds[n, e]}
        t.update(in_turns({name: case.call(fn, backward) for name, fn in case.ways().items()
                           if name != "loop, w[e]"}, device))
        speed = {name: t["dense"] / t[name] for name in ("padded", "sort", "loop")}
        ideal = e / k
        met += speed["sort"] >= speed["loop"] and speed["sort"] >= 0.8 * ideal
        print(f"{n:>7}{e:>4}{k:>3} |{t['dense']:>9.4f}{t['padded']:>9.4f}{t['sort']:>9.4f}{t['loop']:>9.4f} |"
              f"{speed['padded']:>6.1f}x{speed['sort']:>6.1f}x{speed['loop']:>6.1f}x{ideal:>6.0f}x"
              f"{speed['sort'] / ideal:>10.0%}")
    load = f" (load average {os.getloadavg()[0]:.1f} at the end)" if hasattr(os, "getloadavg") else ""
    print(f"bar (sort no slower than loop, and >= 80% of the ideal speed-up): met in {met} of {len(sizes)} rows"
          f"{load}\n")


def pitfall(device, n, e, d, h):
    case = Case(n, e, 1, d, h, device)
    ways = case.ways()
    cut = case.timed(ways["loop"], device, backward=True)
    indexed = case.timed(ways["loop, w[e]"], device, backward=True)
    print(f"The w[e] pitfall on {device} (N={n}, E={e}, k=1, forward + backward of the masked loop): weights cut "
          f"once {cut:.4f} s, indexed w[e] per expert {indexed:.4f} s ({indexed / cut:.1f}x slower)\n")


def run(device: str = "cpu", quick: bool = False, cpu_time: bool = False) -> None:
    """Print the tables. ``cpu_time``: one thread, timed by the process's CPU clock (on a machine
    that others share, wall-clock ratios between long and short runs are noise)."""
    global CLOCK
    CLOCK = time.process_time if cpu_time and device == "cpu" else time.perf_counter
    if cpu_time:
        torch.set_num_threads(1)
        print("timed in CPU seconds of one thread\n")
    if device == "cpu":
        kept = reuse_freed_memory()
        print("freed memory kept for reuse (glibc mallopt: no mmap, no trimming)\n" if kept else
              "freed memory returned to the system (not glibc): page faults are part of the times\n")
    if quick:
        d, h, sizes = 32, 64, [(512, 4, 1), (512, 4, 2)]
    else:
        d, h, sizes = 256, 512, [(n, e, k) for n in (2**12, 2**14, 2**16) for e in (8, 64) for k in (1, 2)]
    warm = Case(64, 2, 1, d, h, device)  # start autograd and the thread pools before timing anything
    warm.timed(warm.ways()["sort"], device, backward=True)
    for backward in (False, True):
        table(device, sizes, d, h, backward)
    pitfall(device, *((512, 8) if quick else (2**14, 64)), d, h)
