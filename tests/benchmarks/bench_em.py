"""EM with closed-form M-steps against EM with a gradient loop inside every M-step.

Same data, same start, same stopping rule; the only difference is how the experts' M-step is
solved. Then the closed-form fit alone over N = 10^3 .. 10^6.
"""

import time
import warnings

import torch

import moe_utils as mu


def fit(x, y, **kwargs):
    model = mu.MixtureOfLinearExperts(3, n_init=1, seed=0, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mu.em.ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x, y)
    return model, time.perf_counter() - start


def run(quick: bool = False) -> None:
    roof = mu.data.roof()
    split = roof.split(2000, test_size=0.5, seed=0)
    best = roof.best(split.x_test, split.y_test, split.x_train)
    print("EM on roof, 1,000 training points, softmax gate, one start")
    print(f"{'M-step of the experts':<34}{'seconds':>9}{'iterations':>12}{'test NLL':>10}{'best NLL':>10}")
    rows = {}
    for name, kwargs in [("closed form (weighted LS)", {}),
                         ("gradient loop (200 Adam steps)", {"expert_solver": "gradient", "gradient_steps": 200})]:
        model, seconds = fit(split.x_train, split.y_train, **kwargs)
        rows[name] = seconds
        nll = model.score(split.x_test, split.y_test).nll
        print(f"{name:<34}{seconds:>9.3f}{model.n_iter_:>12}{nll:>10.3f}{best.nll:>10.3f}")
    closed, grad = rows.values()
    print(f"ratio gradient / closed form: {grad / closed:.0f}x\n")

    print("Closed-form EM over N (roof, softmax gate, one start)")
    print(f"{'N':>10}{'seconds':>10}{'iterations':>12}{'ms / iteration':>16}")
    for n in ([1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000]):
        x, y, _ = roof.sample(n, seed=1)
        model, seconds = fit(x, y)
        print(f"{n:>10,}{seconds:>10.3f}{model.n_iter_:>12}{1000 * seconds / model.n_iter_:>16.2f}")
    print()
