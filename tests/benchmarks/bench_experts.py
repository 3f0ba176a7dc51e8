"""Stacked experts (one tensor with an expert axis) against a Python loop over experts.

Two operations every chapter relies on: the forward pass of E linear experts on N samples,
and the closed-form weighted least-squares fit of E experts.
"""

import torch

import moe_utils as mu

from .timing import best_time


def run(device: str = "cpu", quick: bool = False) -> None:
    sizes = [(1_000, 4), (10_000, 16), (100_000, 64)] if quick else \
        [(1_000, 4), (10_000, 16), (100_000, 64), (1_000_000, 8), (1_000_000, 64)]
    d, o = 8, 4
    print(f"Stacked experts vs a loop over experts on {device} (D={d}, O={o}); seconds, best of 3")
    print(f"{'N':>10}{'E':>5} | {'forward':>9}{'loop':>9}{'ratio':>7} | {'fit WLS':>9}{'loop':>9}{'ratio':>7}")
    gen = torch.Generator().manual_seed(0)
    for n, e in sizes:
        x = torch.randn(n, d, generator=gen).to(device)
        y = torch.randn(n, generator=gen).to(device)
        resp = torch.softmax(torch.randn(n, e, generator=gen), -1).to(device)
        stacked = mu.experts.Linear(d, o, e, generator=gen).to(device)
        layers = [torch.nn.Linear(d, o).to(device) for _ in range(e)]
        with torch.no_grad():
            t_fwd = best_time(lambda: stacked(x), device=device)
            t_fwd_loop = best_time(lambda: torch.stack([layer(x) for layer in layers], 1), device=device)
        wls = mu.solvers.weighted_least_squares
        t_fit = best_time(lambda: wls(x, y[:, None], resp), device=device)
        t_fit_loop = best_time(lambda: [wls(x, y[:, None], resp[:, k:k + 1]) for k in range(e)], device=device)
        print(f"{n:>10,}{e:>5} | {t_fwd:>9.4f}{t_fwd_loop:>9.4f}{t_fwd_loop / t_fwd:>6.1f}x"
              f" | {t_fit:>9.4f}{t_fit_loop:>9.4f}{t_fit_loop / t_fit:>6.1f}x")
    print()
