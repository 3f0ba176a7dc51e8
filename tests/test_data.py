import math

import pytest
import torch

import moe_utils as mu
from moe_utils.data import Line, Regime, Regimes

NOISE = 0.05
ALL = sorted(mu.data.DATASETS)


def monte_carlo(data: Regimes, x_train=None, n: int = 400_000, seed: int = 123):
    """Independent estimate of the best MSE and NLL: mean over fresh samples, and std errors."""
    x, y, _ = data.sample(n, seed=seed, dtype=torch.float64)
    sq, nll = (y - data.mean(x, x_train)) ** 2, -data.log_prob(x, y, x_train)
    return sq.mean().item(), (sq.std() / math.sqrt(n)).item(), nll.mean().item(), (nll.std() / math.sqrt(n)).item()


# ------------------------------------------------------------------ the data sets match their definitions
@pytest.mark.parametrize("name", ALL)
def test_samples_follow_the_generative_process(name):
    data = mu.data.make(name)
    x, y, z = data.sample(20_000, seed=1, dtype=torch.float64)
    for e, regime in enumerate(data.regimes):
        xe = x[z == e]
        assert xe.min() >= regime.lo and xe.max() <= regime.hi
        assert abs(xe.mean().item() - (regime.lo + regime.hi) / 2) < 0.02 * (regime.hi - regime.lo)
        resid = y[z == e] - regime.fn(xe)
        assert abs(resid.mean().item()) < 4 * NOISE / math.sqrt(len(xe))
        assert resid.std().item() == pytest.approx(NOISE, rel=0.05)
        share = (z == e).double().mean().item()
        assert share == pytest.approx(data.weights[e].item(), abs=0.015)


def test_roof_definition():
    roof = mu.data.roof()
    assert [(r.lo, r.hi) for r in roof.regimes] == [(-2.0, -0.5), (-0.75, 0.75), (0.5, 2.0)]
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(roof.expert_means(x).diagonal(), torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    # Half and half in the overlaps, one regime elsewhere.
    gate = roof.gate(torch.tensor([-0.6, 0.0, 0.6, -1.5]))
    assert torch.allclose(gate, torch.tensor([[0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [1, 0, 0]], dtype=torch.float64))


@pytest.mark.parametrize("overlap", [0.1, 0.5, 1.0])
def test_zig_overlap_is_a_real_overlap_in_x(overlap):
    zig = mu.data.zig(overlap)
    left, right = zig.regimes
    assert left.hi - right.lo == pytest.approx(overlap)
    assert zig.jumps() == []
    x, y, z = zig.sample(20_000, seed=0)
    inside = x.abs() < overlap / 2
    assert set(z[inside].tolist()) == {0, 1}  # both branches are present at the same x
    # In the overlap the branches are 1 apart and equally likely: a spread of 1/4 on its mass.
    overlap_mass = overlap / (2 + overlap / 2)
    assert zig.best_mse() == pytest.approx(NOISE**2 + overlap_mass / 4, rel=1e-9)


def test_zig_step_is_the_non_overlapping_case():
    step = mu.data.zig_step()
    assert step.name == "zig_step"
    assert step.jumps() == [(0.0, 0, 1)]
    assert step.best_mse() == pytest.approx(NOISE**2, rel=1e-9)


def test_sin_sign_definition():
    data = mu.data.sin_sign()
    x = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    assert torch.allclose(data.mean(x), torch.sin(math.pi * x) + torch.sign(x))
    assert data.support == (-1.0, 1.0)
    assert [c for c, _, _ in data.jumps()] == [0.0]


def test_linear_definition():
    data = mu.data.linear()
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    assert torch.allclose(data.mean(x), x)


@pytest.mark.parametrize("name", ALL)
def test_gate_density_and_log_prob_are_consistent(name):
    data = mu.data.make(name)
    x = torch.linspace(*data.support, 1001, dtype=torch.float64)
    assert torch.allclose(data.gate(x).sum(-1), torch.ones_like(x))
    lo, hi = data.support
    dx = (hi - lo) / 1000
    assert (data.density(x).sum() * dx).item() == pytest.approx(1.0, abs=0.01)  # a density in x
    # p(y | x) integrates to one in y.
    ys = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    x0 = torch.full_like(ys, 0.3 * lo + 0.7 * hi)
    assert (data.log_prob(x0, ys).exp().sum() * (ys[1] - ys[0])).item() == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ best achievable values
def test_roof_best_mse_matches_the_hand_derivation():
    # Two overlaps of width 0.25 with density 4/9 and conditional spread (x + 1.5)^2 / 4.
    overlap_term = 2 * (1 / 9) * (1 - 0.75**3) / 3
    assert mu.data.roof().best_mse() == pytest.approx(NOISE**2 + overlap_term, rel=1e-10)


def test_no_overlap_best_nll_is_the_noise_entropy():
    entropy = 0.5 * math.log(2 * math.pi * math.e * NOISE**2)
    assert mu.data.linear().best_nll() == pytest.approx(entropy, abs=1e-9)
    # A 50/50 overlap of well-separated branches adds log 2 on its mass (2/9 on roof).
    assert mu.data.roof().best_nll() == pytest.approx(entropy + 2 / 9 * math.log(2), abs=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_best_values_agree_with_monte_carlo(name):
    data = mu.data.make(name)
    mse, mse_se, nll, nll_se = monte_carlo(data)
    assert abs(data.best_mse() - mse) < 4 * mse_se
    assert abs(data.best_nll() - nll) < 4 * nll_se


@pytest.mark.parametrize("name", ["zig_step", "sin_sign"])
@pytest.mark.parametrize("n_train", [20, 50])
def test_best_values_given_training_inputs_agree_with_monte_carlo(name, n_train):
    data = mu.data.make(name)
    x_train = data.sample(n_train, seed=7, dtype=torch.float64)[0]
    mse, mse_se, nll, nll_se = monte_carlo(data, x_train)
    assert abs(data.best_mse(x_train) - mse) < 4 * mse_se
    assert abs(data.best_nll(x_train) - nll) < 4 * nll_se
    assert data.best_mse(x_train) > data.best_mse()  # a jump hidden in a gap costs MSE


def test_the_learners_gate_is_a_ramp_across_the_gap():
    data = mu.data.sin_sign()
    x_train = torch.tensor([-0.9, -0.2, 0.3, 0.8])
    [((a, b), left, right)] = data.jump_gaps(x_train)
    assert (a, b, left, right) == (pytest.approx(-0.2), pytest.approx(0.3), 0, 1)
    gate = data.gate(torch.tensor([-0.2, 0.05, 0.3]), x_train)
    assert torch.allclose(gate[:, 0], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), atol=1e-6)


def test_gap_cost_for_sin_sign_is_about_ten_noise_floors_with_50_points():
    data = mu.data.sin_sign()
    ratios = [data.best_mse(data.sample(50, seed=s)[0]) / NOISE**2 for s in range(200)]
    # p(0) h^2 E[L] / 6 with E[L] ~ 2R/(N+1): 0.5 * 4 * (4/51) / 6 = 0.026, ~10.5 floors (+1).
    assert 8 < sum(ratios) / len(ratios) < 15


def test_best_on_a_test_set_is_the_bayes_predictors_score():
    data = mu.data.roof()
    split = data.split(2000, seed=3, dtype=torch.float64)
    best = data.best(split.x_test, split.y_test, split.x_train)
    mean = data.mean(split.x_test, split.x_train)
    assert best.mse == pytest.approx(((split.y_test - mean) ** 2).mean().item())
    assert best.nll == pytest.approx(-data.log_prob(split.x_test, split.y_test, split.x_train).mean().item())
    assert best.mse == pytest.approx(data.best_mse(), rel=0.2)


# ------------------------------------------------------------------ sampling and splitting
def test_sampling_is_reproducible_and_typed():
    roof = mu.data.roof()
    a, b = roof.sample(100, seed=5), roof.sample(100, seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(roof.sample(100, seed=6)[0], a[0])
    x, y, z = roof.sample(10, dtype=torch.float64)
    assert x.dtype == y.dtype == torch.float64 and z.dtype == torch.long
    assert roof.sample(10)[0].dtype == torch.float32


def test_split_sizes_disjoint_and_reproducible():
    split = mu.data.roof().split(1001, test_size=0.2, seed=0)
    assert len(split.x_train) + len(split.x_test) == 1001
    assert len(split.x_test) == 200
    assert len(set(split.x_train.tolist()) & set(split.x_test.tolist())) == 0
    again = mu.data.roof().split(1001, test_size=0.2, seed=0)
    assert all(torch.equal(u, v) for u, v in zip(split, again))


def test_train_test_split_of_several_arrays():
    a, b = torch.arange(10), torch.arange(10) * 2
    a_tr, a_te, b_tr, b_te = mu.data.train_test_split(a, b, test_size=0.3, seed=1)
    assert len(a_te) == 3 and torch.equal(b_tr, a_tr * 2) and torch.equal(b_te, a_te * 2)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, error, words", [
    (lambda: mu.data.roof().sample(-5), ValueError, "n must be >= 1, got -5"),
    (lambda: mu.data.roof().sample(2.5), TypeError, "n must be an integer"),
    (lambda: mu.data.roof().sample(10, seed=-1), ValueError, "seed must be >= 0"),
    (lambda: mu.data.roof(noise=float("nan")), ValueError, "noise must be finite"),
    (lambda: mu.data.roof(noise=-0.1), ValueError, "noise must be in"),
    (lambda: mu.data.zig(overlap=-0.5), ValueError, "overlap must be in"),
    (lambda: mu.data.zig(overlap=2.0), ValueError, "overlap must be in"),
    (lambda: mu.data.make("spiral"), ValueError, "unknown data set 'spiral'; expected one of"),
    (lambda: mu.data.roof().split(100, test_size=1.5), ValueError, "test_size must be in"),
    (lambda: mu.data.roof().split(1, test_size=0.5), ValueError, "empty train or test set"),
    (lambda: mu.data.roof().mean(torch.zeros(3, 2)), ValueError, "x must have shape"),
    (lambda: mu.data.roof().log_prob(torch.zeros(3), torch.zeros(4)), ValueError, "y must have 3 entries"),
    (lambda: mu.data.roof().best(torch.zeros(3), torch.tensor([0, 1, float("nan")])), ValueError, "y_test contains NaN"),
    (lambda: mu.data.train_test_split(torch.zeros(3), torch.zeros(4)), ValueError, "same number of samples"),
    (lambda: Regimes("gap", [Regime(0, 1, Line(1, 0)), Regime(2, 3, Line(1, 0))], 0.1), ValueError, "cover one interval"),
    (lambda: Regimes("bad", [Regime(1, 0, Line(1, 0))], 0.1), ValueError, "lo < hi"),
    (lambda: Regimes("bad", [Regime(0, 1, Line(1, 0)), Regime(2, 1, Line(1, 0))], 0.1), ValueError,
     r"regimes\[1\] needs lo < hi"),
    (lambda: mu.data.roof(noise=1e-300), ValueError, "noise must be in"),
    (lambda: mu.data.zig(overlap=float("nan")), ValueError, "overlap must be finite"),
    (lambda: mu.data.roof().sample(10, seed=1.5), TypeError, "seed must be an integer"),
    (lambda: mu.data.roof().sample(10, seed=2**70), ValueError, "seed must be < 2"),
    (lambda: mu.data.roof().sample(10, dtype=torch.int64), TypeError, "dtype must be a floating torch dtype"),
    (lambda: mu.data.roof().sample(10, dtype="float32"), TypeError, "dtype must be a floating torch dtype"),
    (lambda: mu.data.roof().sample(10, device="tpu"), ValueError, "unknown device 'tpu'"),
    (lambda: mu.data.roof().split(100, test_size=float("nan")), ValueError, "test_size must be finite"),
    (lambda: mu.data.train_test_split(), TypeError, "at least one tensor"),
    (lambda: mu.data.train_test_split([1, 2, 3]), TypeError, r"arrays\[0\] must be a tensor"),
    (lambda: mu.data.train_test_split(torch.tensor(1.0)), TypeError, r"arrays\[0\] must be a tensor of shape \(N, ...\), got \(\)"),
    (lambda: mu.data.train_test_split(torch.zeros(5), seed=-1), ValueError, "seed must be >= 0"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
