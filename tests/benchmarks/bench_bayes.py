"""The Bayesian MoE of chapter 5 against pypolymix on seed 001's task, and against a NUTS reference.

Task: y = sin(pi x) + sign(x) + N(0, 0.05^2), 50 training inputs on [-1, 1] (and 1,000, where a
calibrated band must cover 80%), 10,000 fresh test targets. pypolymix runs as seed 001 does (two
cubic PCE experts, a tanh gate of width 16, its parameter groups, AdamW + OneCycle, 10,000 epochs
of 100 draws (2,000 at N = 1,000, labelled), data loss = summed squared error of the blended mean,
0.1 x its distribution loss; its band = quantiles of noise-free draws). moe_utils fits EM (chapter
2's point estimate), then mean-field VI of the mixture likelihood with a learned noise level. Both
run in this process, one after the other; the table gives seconds, the time ratio and the coverage
of each 80% band overall, in the gap between the training inputs nearest the jump, and out of it
(and the band's median width out of the gap).
"""

import math
import time

import torch

import moe_utils as mu
from moe_utils import bayes

PRIORS = {"experts.*": bayes.Prior(0.0, 3.0), "router.*": bayes.Prior(0.0, 50.0),
          "likelihood.*": bayes.Prior(2 * math.log(0.1), 2.0)}


def task(seed: int = 0, n: int = 50):
    data = mu.data.sin_sign()
    x, y, _ = data.sample(n, seed=seed, dtype=torch.float64)
    x_test, y_test, _ = data.sample(10_000, seed=seed + 1000, dtype=torch.float64)
    (a, b), _, _ = data.jump_gaps(x)[0]
    return x[:, None], y, x_test[:, None], y_test, (x_test > a) & (x_test < b)


def fit_ours(x, y, seed: int = 0, steps: int = 600):
    """The point-estimate MoE of chapter 2 (EM from k-means), then mean-field VI started there."""
    gen = torch.Generator().manual_seed(seed)
    point = mu.MixtureOfExperts(mu.routing.Linear(1, 2, generator=gen, l2=1 / 50**2),
                                mu.experts.Legendre(1, 4, 1, 2, generator=gen),
                                mu.likelihoods.Gaussian(2, 1, min_var=1e-6)).double()
    mu.em.fit(point, x, y, mu.em.init_responsibilities(x, y, 2, "kmeans", seed), max_iter=200)
    model = bayes.BayesianMoE.from_moe(point)
    q = bayes.Posterior(model, {"*": "mean_field"}, PRIORS)
    bayes.fit(model, q, x, y, steps=steps, n_draws=8, lr=0.05, seed=seed, progress=False)
    return model, q


def fit_pypolymix(x, y, epochs: int):
    """Seed 001's model and training loop, unchanged (float32, as it runs)."""
    from pypolymix import StochasticModel
    from pypolymix.parameter_groups import DeterministicGroup, IIDGaussianGroup
    from pypolymix.surrogate_models import GatingNetwork, MixtureOfExperts, PolynomialChaosExpansion
    x, y = x.float(), y.float()[:, None]
    width = 16
    surrogate = MixtureOfExperts(
        experts=[PolynomialChaosExpansion(num_inputs=1, num_outputs=1, degree=3) for _ in range(2)],
        gating_network=GatingNetwork(num_inputs=1, num_experts=2, width=width, depth=1,
                                     activation=torch.nn.functional.tanh))
    groups = [IIDGaussianGroup("expert1_c0", 2), DeterministicGroup("expert1_c", 2),
              IIDGaussianGroup("expert2_c0", 2), DeterministicGroup("expert2_c", 2),
              DeterministicGroup("gating_input_layer_weights", width),
              DeterministicGroup("gating_input_layer_biases", width),
              IIDGaussianGroup("gating_output_weights", 2 * width), IIDGaussianGroup("gating_output_biases", 2)]
    model = StochasticModel(surrogate_model=surrogate, parameter_groups=groups)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    for _ in range(epochs):
        optimizer.zero_grad()
        y_hat = surrogate(x, model.sample_parameters(num_samples=100))
        loss = loss_fn(y_hat, y.unsqueeze(0).expand_as(y_hat)) / 100 + 0.1 * model.distribution_loss()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model


def coverage(samples, y_test, gap):
    lo, hi = bayes.band(samples, 0.8)
    inside = ((y_test >= lo) & (y_test <= hi)).double()
    return inside.mean().item(), inside[gap].mean().item(), inside[~gap].mean().item(), (hi - lo)[~gap].median().item()


def run(quick: bool = False) -> None:
    compare(50, 300 if quick else 10_000, quick)
    if not quick:  # the seed's 10,000 epochs at N = 1,000 take an hour here: 2,000, labelled
        compare(1000, 2_000, quick)
        x, y, x_test, y_test, gap = task()
        nuts_reference(x, y, x_test, y_test, gap, *fit_ours(x, y))


def compare(n: int, epochs: int, quick: bool = False) -> None:
    """Both fits on n training points, timed in this process, with their bands' coverage."""
    x, y, x_test, y_test, gap = task(n=n)
    torch.manual_seed(1234)
    fit_ours(x, y, seed=1, steps=10)  # warm-up: torch.func's first call (EM's router step) loads code
    start = time.perf_counter()
    ours = fit_ours(x, y)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs = fit_pypolymix(x, y, epochs)
    t_theirs = time.perf_counter() - start
    model, q = ours
    ys = bayes.predictive_sample(model, q.rsample(1000, torch.Generator().manual_seed(1)), x_test,
                                 generator=torch.Generator().manual_seed(2))[..., 0]
    with torch.no_grad():
        theirs_ys = theirs(x_test.float(), num_samples=1000)[..., 0].double()
    print(f"Bayesian MoE vs pypolymix on seed 001's task (N = {n}, {len(y_test):,} test targets, "
          f"{int(gap.sum())} in the jump gap){' [quick: pypolymix epochs cut]' if quick else ''}")
    print(f"{'method':<44}{'seconds':>9}{'cover':>8}{'in gap':>8}{'out':>8}{'width out':>11}")
    for name, seconds, samples in [("moe_utils: EM + mean-field VI (600 steps)", t_ours, ys),
                                   (f"pypolymix, seed 001 ({epochs:,} epochs)", t_theirs, theirs_ys)]:
        cover, in_gap, out, width = coverage(samples, y_test, gap)
        print(f"{name:<44}{seconds:>9.2f}{cover:>8.3f}{in_gap:>8.3f}{out:>8.3f}{width:>11.3f}")
    print(f"time ratio pypolymix / moe_utils: {t_theirs / t_ours:.0f}x (nominal 80% bands)\n")


def nuts_reference(x, y, x_test, y_test, gap, model, q, chains: int = 2, samples: int = 500) -> None:
    """VI against pyro's NUTS on the same model, priors and likelihood (chains in sequence)."""
    from pyro.ops.stats import split_gelman_rubin
    start = time.perf_counter()
    runs = [bayes.nuts(model, q, x, y, n_samples=samples, warmup=samples, seed=s) for s in range(chains)]
    seconds = time.perf_counter() - start
    draws = {k: torch.cat([d[k] for d, _ in runs]) for k in runs[0][0]}
    sigma = torch.stack([(0.5 * d["likelihood.log_var"][:, 0, 0]).exp() for d, _ in runs])
    divergences = sum(len(diag["divergences"]["chain 0"]) for _, diag in runs)
    print(f"VI vs NUTS ({chains} chains x {samples} draws after {samples} warm-up, {seconds:.0f} s; "
          f"divergences {divergences}, split R-hat of sigma {split_gelman_rubin(sigma).item():.3f})")
    print(f"{'method':<10}{'cover':>8}{'in gap':>8}{'out':>8}{'width out':>11}{'sigma':>8}{'test NLL':>10}")
    for name, d in [("VI", q.rsample(1000, torch.Generator().manual_seed(3))), ("NUTS", draws)]:
        ys = bayes.predictive_sample(model, d, x_test, generator=torch.Generator().manual_seed(4))[..., 0]
        cover, in_gap, out, width = coverage(ys, y_test, gap)
        nll = -bayes.log_predictive(model, d, x_test, y_test).mean().item()
        sigma = (0.5 * d["likelihood.log_var"]).exp().mean().item()
        print(f"{name:<10}{cover:>8.3f}{in_gap:>8.3f}{out:>8.3f}{width:>11.3f}{sigma:>8.4f}{nll:>10.3f}")
    print()


if __name__ == "__main__":
    run()
