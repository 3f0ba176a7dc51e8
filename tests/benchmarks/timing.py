"""A tiny timer shared by the benchmarks: best of a few repeats, CUDA synchronised."""

import time

import torch


def best_time(fn, repeats: int = 3, device: str = "cpu") -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn()`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)
