"""The curves of chapter 6 match their definitions, and their best achievable error is right."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import moe_utils as mu

F64 = torch.float64
CURVES = mu.data2d.CURVES


def dense(curve, n=200_001):
    t = torch.linspace(curve.lo, curve.hi, n, dtype=F64)
    return t, curve.points(t)


def test_the_figure8_is_a_lemniscate_that_crosses_itself():
    curve = mu.data2d.curve("figure8")
    t, x = dense(curve)
    # Bernoulli's lemniscate: (x^2 + y^2)^2 = x^2 - y^2
    torch.testing.assert_close((x**2).sum(1) ** 2, x[:, 0] ** 2 - x[:, 1] ** 2, atol=1e-12, rtol=0)
    crossing = torch.tensor([math.pi / 2, 3 * math.pi / 2], dtype=F64)
    torch.testing.assert_close(curve.points(crossing), torch.zeros(2, 2, dtype=F64), atol=1e-15, rtol=0)
    v = curve.velocity(crossing)                     # the two branches cross at right angles
    sine = (v[0, 0] * v[1, 1] - v[0, 1] * v[1, 0]) / (v[0].norm() * v[1].norm())
    assert abs(abs(sine) - 1) < 1e-12 and v[0].norm() > 0.5
    # the reference's "figure8", (sin t, cos t), is a circle: every point at distance 1 from 0
    assert torch.allclose(torch.stack([torch.sin(t), torch.cos(t)], 1).norm(dim=1), torch.ones_like(t))
    assert (x.norm(dim=1).max() - x.norm(dim=1).min()) > 0.99  # the lemniscate is not


def test_circle_and_spiral_follow_their_formulas():
    t = torch.linspace(0, 6 * math.pi, 1001, dtype=F64)
    spiral = mu.data2d.curve("spiral").points(t)
    torch.testing.assert_close(spiral.norm(dim=1), t / (6 * math.pi))          # radius grows with the angle
    torch.testing.assert_close(torch.atan2(spiral[1:, 1], spiral[1:, 0]), torch.atan2(torch.sin(t[1:]), torch.cos(t[1:])))
    angle = np.unwrap(torch.atan2(spiral[1:, 1], spiral[1:, 0]).numpy())
    assert (np.diff(angle) > 0).all() and (angle[-1] - angle[0]) / (2 * math.pi) == pytest.approx(3, abs=1e-2)  # 3 turns
    circle = mu.data2d.curve("circle").points(t[:200])
    torch.testing.assert_close(circle, torch.stack([torch.cos(t[:200]), torch.sin(t[:200])], 1))


@pytest.mark.parametrize("name", CURVES)
def test_arc_length_agrees_with_the_parameter_and_the_polyline(name):
    curve = mu.data2d.curve(name)
    t, x = dense(curve)
    polyline = torch.cat([torch.zeros(1, dtype=F64), (x[1:] - x[:-1]).norm(dim=1).cumsum(0)])
    some = torch.arange(0, len(t), 10_000)
    torch.testing.assert_close(curve.arc_length(t[some]), polyline[some], rtol=1e-8, atol=1e-9)
    c = 1 / (6 * math.pi)
    exact = {"circle": t, "spiral": c / 2 * (t * torch.sqrt(1 + t**2) + torch.asinh(t)),
             "figure8": None}[name]
    if exact is not None:
        torch.testing.assert_close(curve.arc_length(t[some]), exact[some], rtol=1e-10, atol=1e-12)
    lemniscate_constant = special.gamma(0.25) ** 2 / (2 * math.sqrt(2 * math.pi))  # 2.622057...
    total = {"circle": 2 * math.pi, "spiral": exact[-1].item() if exact is not None else None,
             "figure8": 2 * lemniscate_constant}[name]
    assert curve.length == pytest.approx(total, rel=1e-10)


@pytest.mark.parametrize("name", CURVES)
def test_samples_lie_on_the_curve_plus_gaussian_noise(name):
    curve = mu.data2d.curve(name, noise=0.05)
    x, t = curve.sample(20_000, seed=3, dtype=F64)
    assert x.shape == (20_000, 2) and t.shape == (20_000,) and x.dtype == F64
    assert curve.lo <= t.min() and t.max() <= curve.hi
    assert stats.kstest(((t - curve.lo) / (curve.hi - curve.lo)).numpy(), "uniform").pvalue > 1e-3
    noise = (x - curve.points(t)).numpy()
    assert abs(noise.std() - 0.05) < 0.002 and abs(noise.mean()) < 0.002
    assert stats.normaltest(noise[:, 0]).pvalue > 1e-3
    clean, t0 = mu.data2d.curve(name, noise=0.0).sample(500, seed=3, dtype=F64)
    torch.testing.assert_close(clean, curve.points(t0), atol=0, rtol=0)


def test_split_is_seeded_and_keeps_points_with_their_parameters():
    curve = mu.data2d.curve("spiral", noise=0.0)
    s = curve.split(101, test_size=0.4, seed=2, dtype=F64)
    assert len(s.x_test) == 40 and len(s.x_train) == 61 and s.t_train.shape == (61,)
    torch.testing.assert_close(curve.points(s.t_train), s.x_train)
    torch.testing.assert_close(curve.points(s.t_test), s.x_test)
    again = curve.split(101, test_size=0.4, seed=2, dtype=F64)
    assert torch.equal(again.x_test, s.x_test) and not torch.equal(curve.split(101, seed=3).x_test[:5], s.x_test[:5].float())


@pytest.mark.parametrize("name", CURVES)
def test_projection_finds_the_nearest_point(name):
    curve = mu.data2d.curve(name, noise=0.05)
    x, t = curve.sample(300, seed=0, dtype=F64)
    t_hat, dist2 = curve.project(x)
    torch.testing.assert_close(((curve.points(t_hat) - x) ** 2).sum(1), dist2)
    _, table = dense(curve)
    brute = torch.cdist(x, table).min(1).values ** 2   # a 200,001-point polyline
    assert (dist2 <= brute + 1e-9).all() and (brute - dist2).max() < 1e-6
    assert mu.data2d.curve(name, 0.0).project(curve.points(t))[1].max() < 1e-20


def test_best_mse_of_the_circle_is_the_rice_distribution_formula():
    for noise, rel in ((0.02, 1e-9), (0.05, 1e-9), (0.2, 1e-6)):  # 10 x 10 Gauss-Hermite nodes
        # E|x| for x ~ N(u, noise^2 I), |u| = 1, is noise sqrt(pi/2) L_{1/2}(-1 / (2 noise^2)), with
        # L_{1/2}(q) = exp(q/2) ((1 - q) I_0(-q/2) - q I_1(-q/2)), written with scaled Bessel functions
        q = -1 / (2 * noise**2)
        rice_mean = noise * math.sqrt(math.pi / 2) * ((1 - q) * special.ive(0, -q / 2) - q * special.ive(1, -q / 2))
        if noise > 0.03:  # scipy's own Rice mean overflows for smaller noise
            assert rice_mean == pytest.approx(stats.rice.mean(1 / noise, scale=noise), rel=1e-12)
        exact = 2 + 2 * noise**2 - 2 * rice_mean              # E(|x| - 1)^2 = E|x|^2 - 2 E|x| + 1
        assert mu.data2d.curve("circle", noise).best_mse() == pytest.approx(exact, rel=rel)


@pytest.mark.parametrize("name", CURVES)
def test_best_mse_is_zero_without_noise_and_about_the_noise_variance_with_it(name):
    assert mu.data2d.curve(name, 0.0).best_mse() == 0.0
    curve = mu.data2d.curve(name, 0.05)
    best = curve.best_mse()
    assert 0.8 * 0.05**2 < best < 1.05 * 0.05**2            # the noise across the curve, noise^2
    x, _ = curve.sample(100_000, seed=1, dtype=F64)
    d2 = curve.project(x)[1]
    assert abs(d2.mean().item() - best) < 4 * d2.std().item() / math.sqrt(len(d2))  # Monte Carlo agrees


def test_curves_return_on_the_asked_dtype_and_device():
    curve = mu.data2d.curve("circle")
    x, t = curve.sample(10, seed=0)
    assert x.dtype == t.dtype == torch.float32 and x.device.type == "cpu"
    assert curve.points(t).dtype == torch.float32 and curve.arc_length(t).dtype == torch.float32
    assert curve.project(x)[0].dtype == torch.float32


@pytest.mark.parametrize("call, error, match", [
    (lambda: mu.data2d.curve("figure-8"), ValueError, "unknown curve 'figure-8'"),
    (lambda: mu.data2d.curve("circle", noise=-0.1), ValueError, "noise must be in"),
    (lambda: mu.data2d.curve("circle", noise=math.nan), ValueError, "noise must be finite"),
    (lambda: mu.data2d.curve("circle").sample(0), ValueError, "n must be >= 1"),
    (lambda: mu.data2d.curve("circle").sample(10, dtype=torch.int64), TypeError, "dtype must be a floating"),
    (lambda: mu.data2d.curve("circle").project(torch.zeros(5, 3)), ValueError, r"x must have 2 feature"),
    (lambda: mu.data2d.curve("circle").project(torch.tensor([[0.0, math.nan]])), ValueError, "x contains NaN"),
    (lambda: mu.data2d.curve("circle").points("t"), TypeError, "t must be a tensor"),
    (lambda: mu.data2d.curve("circle").split(10, test_size=1.0), ValueError, "test_size must be in"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()
