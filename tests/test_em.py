import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import moe_utils as mu
from moe_utils import em
from moe_utils.gates import ConstantGate, MLPGate, SoftmaxGate

F64 = torch.float64


def mixture_data(n=3000, seed=0, dtype=F64):
    """Samples of a known 2-input mixture of 2 linear experts with a linear-softmax gate."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=F64) * 4 - 2
    gate_w, gate_b = torch.tensor([[3.0, 1.0], [-3.0, -1.0]], dtype=F64), torch.tensor([0.5, -0.5], dtype=F64)
    w, b = torch.tensor([[1.0, -2.0], [-1.5, 0.5]], dtype=F64), torch.tensor([1.0, -1.0], dtype=F64)
    sd = torch.tensor([0.1, 0.2], dtype=F64)
    probs = torch.softmax(x @ gate_w.T + gate_b, -1)
    z = torch.multinomial(probs, 1, generator=gen)[:, 0]
    y = (x * w[z]).sum(-1) + b[z] + sd[z] * torch.randn(n, generator=gen, dtype=F64)
    truth = {"w": w, "b": b, "sd": sd, "gate_w": gate_w, "gate_b": gate_b}
    return x.to(dtype), y.to(dtype), truth


def random_regression(seed):
    """A random 1-D data set from a random number of random lines (for the monotonicity test)."""
    gen = torch.Generator().manual_seed(seed)
    n_lines = int(torch.randint(1, 4, (1,), generator=gen))
    x = torch.rand(150, generator=gen, dtype=F64) * 4 - 2
    z = torch.randint(n_lines, (150,), generator=gen)
    slope, icpt = torch.randn(n_lines, generator=gen, dtype=F64), torch.randn(n_lines, generator=gen, dtype=F64)
    y = slope[z] * x + icpt[z] + 0.1 * torch.randn(150, generator=gen, dtype=F64)
    return x, y


@pytest.mark.parametrize("gate", ["softmax", "mlp", "constant"])
@pytest.mark.parametrize("seed", range(8))
def test_log_likelihood_never_decreases(gate, seed):
    x, y = random_regression(seed)
    for init in ("kmeans", "random"):
        model = mu.MixtureOfLinearExperts(3, gate=gate, init=init, n_init=1, max_iter=40, seed=seed,
                                          gate_steps=5, alpha=1.5 if gate == "constant" else 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", em.ConvergenceWarning)
            model.fit(x, y)
        history = np.array(model.log_likelihood_history_)
        assert (np.diff(history) >= -1e-9).all(), np.diff(history).min()


def match_experts(model, truth):
    """The permutation of fitted experts that best matches the true ones."""
    perms = list(itertools.permutations(range(len(truth["b"]))))
    err = [(model.weights_[list(p)] - truth["w"]).abs().sum().item() for p in perms]
    return list(perms[int(np.argmin(err))])


def test_fit_recovers_a_known_mixture_up_to_expert_order():
    x, y, truth = mixture_data()
    model = mu.MixtureOfLinearExperts(2, seed=0).fit(x, y)
    order = match_experts(model, truth)
    torch.testing.assert_close(model.weights_[order], truth["w"], atol=0.03, rtol=0)
    torch.testing.assert_close(model.biases_[order], truth["b"], atol=0.03, rtol=0)
    torch.testing.assert_close(model.noise_var_[order].sqrt(), truth["sd"], atol=0, rtol=0.08)
    x_new = torch.rand(500, 2, generator=torch.Generator().manual_seed(9), dtype=F64) * 4 - 2
    true_gate = torch.softmax(x_new @ truth["gate_w"].T + truth["gate_b"], -1)
    assert (model.gate_probs(x_new)[:, order] - true_gate).abs().mean() < 0.03


def weighted_least_squares(x, y, weight):
    """The reference: (slopes (D,), bias) of one weighted least-squares fit, in float64 by SVD."""
    x, y, sw = x.double(), y.double(), weight.double().sqrt()[:, None]
    design = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(design * sw, y[:, None] * sw, driver="gelsd").solution[:, 0]
    return coef[:-1], coef[-1]


# x shifted or scaled far from unit scale: the fit must not care (the old ridge on the bias did)
MOVES = {"as is": lambda x: x, "x + 100": lambda x: x + 100, "x * 1e4": lambda x: x * 1e4}
# tolerances against a float64 SVD on the same (rounded) data: slopes relative, predictions
# relative to max |y|; float32 loses ~1e-6 to rounding, float64 ~1e-13
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("move", MOVES)
def test_one_expert_is_least_squares(move, dtype):
    x, y, _ = mixture_data(500)
    x, y = MOVES[move](x).to(dtype), y.to(dtype)
    model = mu.MixtureOfLinearExperts(1, n_init=1).fit(x, y)
    slope, bias = weighted_least_squares(x, y, torch.ones(len(y)))
    prediction = x.double() @ slope + bias
    tol, scale = TOL[dtype], y.abs().max().item()
    torch.testing.assert_close(model.weights_[0].double(), slope, rtol=tol, atol=0)
    torch.testing.assert_close(model.predict(x).double(), prediction, rtol=0, atol=tol * scale)
    torch.testing.assert_close(model.noise_var_[0].double(), ((prediction - y.double()) ** 2).mean(), rtol=tol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("move", MOVES)
def test_fit_linear_is_weighted_least_squares_for_every_expert(move, dtype):
    x, y, _ = mixture_data(300)
    x, y = MOVES[move](x).to(dtype), y.to(dtype)
    resp = torch.rand(300, 3, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
    weight, bias = mu.experts.fit_linear(x, y, resp)
    assert weight.dtype == bias.dtype == dtype
    tol, scale = TOL[dtype], y.abs().max().item()
    for e in range(3):
        slope, icpt = weighted_least_squares(x, y, resp[:, e])
        torch.testing.assert_close(weight[e].double(), slope, rtol=tol, atol=0)
        torch.testing.assert_close(x.double() @ weight[e].double() + bias[e].double(), x.double() @ slope + icpt,
                                   rtol=0, atol=tol * scale)


def test_fit_linear_ridge_shrinks_the_slopes_only():
    x, y, _ = mixture_data(300)
    resp = torch.ones(300, 1, dtype=F64)
    exact_w, _ = mu.experts.fit_linear(x, y, resp)
    weight, bias = mu.experts.fit_linear(x + 100, y, resp, ridge=1e6)  # slopes ~ 0: the bias is y's mean
    assert weight.abs().max() < 1e-4 * exact_w.abs().max()
    torch.testing.assert_close(bias[0], y.mean() - weight[0] @ (x + 100).mean(0))


def test_fit_linear_degenerate_experts_get_finite_minimum_norm_fits():
    x, y, _ = mixture_data(60)
    resp = torch.zeros(60, 4, dtype=F64)
    resp[:, 0] = 1.0                   # every sample, but the features are duplicated below
    resp[7, 1] = 1.0                   # one sample: slope 0 through it
    resp[:2, 2] = 1.0                  # two samples, three features: an exact, minimum-norm fit
    # resp[:, 3] == 0: no weight at all, fitted to every sample equally
    x3 = torch.cat([x, x[:, :1]], 1)   # (N, 3); feature 2 repeats feature 0
    weight, bias = mu.experts.fit_linear(x3, y, resp)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    slope, icpt = weighted_least_squares(x, y, resp[:, 0])
    torch.testing.assert_close(weight[0, 0], weight[0, 2])           # the repeated slope is shared
    torch.testing.assert_close(torch.stack([weight[0, 0] + weight[0, 2], weight[0, 1]]), slope)
    torch.testing.assert_close(bias[0], icpt)
    torch.testing.assert_close(weight[1], torch.zeros(3, dtype=F64))
    torch.testing.assert_close(bias[1], y[7])
    torch.testing.assert_close(x3[:2] @ weight[2] + bias[2], y[:2])
    torch.testing.assert_close((weight[3], bias[3]), (weight[0], bias[0]))  # both: every sample, equally
    assert (weight[2] != 0).all()  # minimum norm spreads the fit over every feature


@pytest.mark.parametrize("move", ["x + 100", "x * 1e4"])
def test_em_on_moved_inputs_is_monotone_and_the_same_fit(move):
    split = mu.data.roof().split(600, seed=0, dtype=F64)
    base = mu.MixtureOfLinearExperts(3, n_init=1, seed=0).fit(split.x_train, split.y_train)
    model = mu.MixtureOfLinearExperts(3, n_init=1, seed=0).fit(MOVES[move](split.x_train), split.y_train)
    assert (np.diff(model.log_likelihood_history_) >= -1e-9).all(), np.diff(model.log_likelihood_history_).min()
    assert model.log_likelihood_ == pytest.approx(base.log_likelihood_, abs=1e-8)
    torch.testing.assert_close(model.predict(MOVES[move](split.x_test)), base.predict(split.x_test),
                               rtol=0, atol=1e-8)


@pytest.mark.parametrize("gate", ["softmax", "mlp", "constant"])
def test_float32_with_barely_more_samples_than_experts(gate):
    for n_experts, d in ((3, 1), (2, 2)):
        gen = torch.Generator().manual_seed(n_experts)
        x, y = torch.rand(n_experts + 1, d, generator=gen), torch.rand(n_experts + 1, generator=gen)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = mu.MixtureOfLinearExperts(n_experts, gate=gate, n_init=2, seed=0).fit(x, y)
        for value in (model.weights_, model.biases_, model.noise_var_, model.predict(x)):
            assert value.dtype == torch.float32 and torch.isfinite(value).all()
        assert (model.noise_var_ > 0).all()
        # no drop of the objective beyond float32 round-off (em.iterate would have warned)
        assert not [w for w in caught if "decreased" in str(w.message)]


def test_responsibilities_sum_to_one_and_match_bayes_rule():
    split = mu.data.roof().split(600, seed=0, dtype=F64)
    model = mu.MixtureOfLinearExperts(3, seed=0).fit(split.x_train, split.y_train)
    r = model.responsibilities(split.x_test, split.y_test)
    torch.testing.assert_close(r.sum(-1), torch.ones(len(r), dtype=F64))
    joint = model.gate_probs(split.x_test) * torch.exp(mu.mixture.gaussian_log_prob(
        split.y_test[:, None], model.expert_means(split.x_test), model.noise_var_))
    torch.testing.assert_close(r, joint / joint.sum(-1, keepdim=True))


@pytest.mark.parametrize("gate", ["softmax", "constant", "mlp"])
def test_permuting_experts_permutes_everything(gate):
    split = mu.data.roof().split(600, seed=1, dtype=F64)
    x, y = split.x_train[:, None], split.y_train
    model = mu.MixtureOfLinearExperts(3, gate=gate, seed=0, n_init=1, max_iter=30, gate_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", em.ConvergenceWarning)
        model.fit(x, y)
    perm = [2, 0, 1]
    g = model.gate_
    permuted = type(g)(1, 3, shift=g.shift, scale=g.scale, **({"n_hidden": g.n_hidden} if gate == "mlp" else {})).to(x)
    with torch.no_grad():
        for name, p in g.named_parameters():
            permuted_p = dict(permuted.named_parameters())[name]
            last = name in ("logit", "weight", "bias", "w2", "b2")
            permuted_p.copy_(p[perm] if last else p)
    w, b, v = model.weights_[perm], model.biases_[perm], model.noise_var_[perm]
    resp, ll = em.e_step(g, model.weights_, model.biases_, model.noise_var_, x, y)
    resp_p, ll_p = em.e_step(permuted, w, b, v, x, y)
    torch.testing.assert_close(resp_p, resp[:, perm])
    assert ll_p == pytest.approx(ll)
    w2, b2, v2 = em.m_step_experts(x, y, resp_p)
    w1, b1, v1 = em.m_step_experts(x, y, resp)
    torch.testing.assert_close((w2, b2, v2), (w1[perm], b1[perm], v1[perm]))
    if gate != "mlp":  # the MLP's hidden units are not tied to experts, the rest is exact
        new, new_p = em.m_step_gate(g, x, resp), em.m_step_gate(permuted, x, resp_p)
        torch.testing.assert_close(new_p(x), new(x)[:, perm])


def test_softmax_m_step_reaches_the_optimum_of_its_objective():
    x, y, _ = mixture_data(800)
    resp = torch.softmax(torch.randn(800, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 2, -1)
    gate = SoftmaxGate(2, 3).to(F64)
    new = em.m_step_gate(gate, x, resp, l2=1e-3, steps=20)
    params = [new.weight, new.bias]
    objective = em._gate_objective(new, x, resp, 1e-3)
    grads = torch.autograd.grad(objective, params)
    assert max(gr.abs().max().item() for gr in grads) < 1e-8
    assert objective.item() > em._gate_objective(gate, x, resp, 1e-3).item()


def test_constant_gate_m_step_is_the_dirichlet_map():
    resp = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F64)
    gate = em.m_step_gate(ConstantGate(1, 2).to(F64), torch.zeros(3, 1, dtype=F64), resp, alpha=3.0)
    expected = torch.tensor([2 + 2, 1 + 2], dtype=F64) / 7
    torch.testing.assert_close(gate(torch.zeros(1, 1, dtype=F64)).exp()[0], expected)


def test_mlp_gate_m_step_never_makes_its_objective_worse():
    x, y, _ = mixture_data(300)
    resp = torch.softmax(torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64), -1)
    gate = MLPGate(2, 2, n_hidden=4, generator=torch.Generator().manual_seed(0)).to(F64)
    for _ in range(3):
        new = em.m_step_gate(gate, x, resp, steps=3)
        assert em._gate_objective(new, x, resp, 1e-3).item() >= em._gate_objective(gate, x, resp, 1e-3).item()
        gate = new


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    split = mu.data.zig_step().split(800, seed=0, dtype=dtype)
    model = mu.MixtureOfLinearExperts(2, seed=0).fit(split.x_train, split.y_train)
    assert model.weights_.dtype == dtype and model.predict(split.x_test).dtype == dtype
    best = mu.data.zig_step().best(split.x_test, split.y_test, split.x_train)
    assert model.score(split.x_test, split.y_test).nll < best.nll + 0.05


def test_accepts_arrays_columns_and_lists():
    x, y, _ = mu.data.zig_step().sample(300, seed=0, dtype=F64)
    a = mu.MixtureOfLinearExperts(2, seed=0, n_init=1).fit(x.numpy(), y.numpy()[:, None])
    b = mu.MixtureOfLinearExperts(2, seed=0, n_init=1).fit(x[:, None], y)
    torch.testing.assert_close(a.weights_, b.weights_)
    assert a.predict(x.tolist()).shape == (300,)


def test_restarts_keep_the_best_and_are_reproducible():
    split = mu.data.roof().split(600, seed=0, dtype=F64)
    a = mu.MixtureOfLinearExperts(3, init="random", n_init=4, seed=3).fit(split.x_train, split.y_train)
    b = mu.MixtureOfLinearExperts(3, init="random", n_init=4, seed=3).fit(split.x_train, split.y_train)
    assert a.log_likelihood_ == max(a.restart_log_likelihoods_) == b.log_likelihood_
    assert len(a.log_likelihood_history_) == a.n_iter_ and a.log_likelihood_history_[-1] == a.log_likelihood_


def test_warns_when_it_does_not_converge():
    split = mu.data.roof().split(600, seed=0)
    with pytest.warns(em.ConvergenceWarning, match="did not converge in max_iter=2"):
        model = mu.MixtureOfLinearExperts(3, max_iter=2, n_init=1).fit(split.x_train, split.y_train)
    assert not model.converged_


def test_gradient_m_step_reaches_no_better_objective_than_the_closed_form():
    split = mu.data.zig_step().split(600, seed=0, dtype=F64)
    closed = mu.MixtureOfLinearExperts(2, n_init=1, seed=0).fit(split.x_train, split.y_train)
    grad = mu.MixtureOfLinearExperts(2, n_init=1, seed=0, expert_solver="gradient", gradient_steps=100,
                                     max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", em.ConvergenceWarning)
        grad.fit(split.x_train, split.y_train)
    assert grad.log_likelihood_ <= closed.log_likelihood_ + 1e-6


def test_gradient_solver_takes_its_first_m_step_in_closed_form():
    split = mu.data.zig_step().split(300, seed=0, dtype=F64)
    fits = []
    for solver in ("closed_form", "gradient"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", em.ConvergenceWarning)  # one iteration: not converged
            fits.append(mu.MixtureOfLinearExperts(2, n_init=1, max_iter=1, expert_solver=solver)
                        .fit(split.x_train, split.y_train))
    closed, grad = fits
    torch.testing.assert_close((grad.weights_, grad.biases_, grad.noise_var_),
                               (closed.weights_, closed.biases_, closed.noise_var_))


def steps_through(objectives):
    """A fake EM step that returns the given objectives one after another."""
    values = iter(objectives)
    return lambda state: (state, next(values))


def test_iterate_stops_when_the_gain_falls_below_tol():
    run = em.iterate(steps_through([0.0, 1.0, 1.5, 1.5 + 1e-7, 9.0]), (), max_iter=5, tol=1e-6)
    assert run.converged and run.history == [0.0, 1.0, 1.5, 1.5 + 1e-7]


def test_iterate_reports_a_decrease_instead_of_converging():
    eps = torch.finfo(F64).eps
    with pytest.warns(em.ConvergenceWarning, match="decreased at 1 of 4 iterations .* 0.5 at iteration 3"):
        run = em.iterate(steps_through([0.0, 1.0, 0.5, 0.5]), (), max_iter=10, tol=1e-6, eps=eps)
    assert run.converged and run.history == [0.0, 1.0, 0.5, 0.5]  # not stopped at the drop
    with pytest.warns(em.ConvergenceWarning, match="decreased"):
        run = em.iterate(steps_through([0.0, -1.0, -2.0, -3.0]), (), max_iter=4, tol=1e-6, eps=eps)
    assert not run.converged


def test_iterate_takes_round_off_as_no_change():
    eps = torch.finfo(F64).eps
    for level in (1.0, 1e6):  # round-off grows with the objective's magnitude
        drop = 0.5 * em.ROUND_OFF * eps * level
        with warnings.catch_warnings():
            warnings.simplefilter("error", em.ConvergenceWarning)
            run = em.iterate(steps_through([0.0, level, level - drop]), (), max_iter=3, tol=1e-6, eps=eps)
        assert run.converged and len(run.history) == 3
        with pytest.warns(em.ConvergenceWarning, match="decreased"):
            em.iterate(steps_through([0.0, level, level - 4 * drop, level - 4 * drop]), (), max_iter=4,
                       tol=1e-6, eps=eps)


def test_iterate_raises_on_a_nan_objective():
    with pytest.raises(FloatingPointError, match="objective became nan at iteration 2"):
        em.iterate(steps_through([0.0, math.nan]), (), max_iter=5, tol=1e-6)


def test_convergence_warning_is_exported():
    assert mu.ConvergenceWarning is em.ConvergenceWarning and "ConvergenceWarning" in mu.__all__
    assert issubclass(mu.ConvergenceWarning, UserWarning)


@pytest.mark.parametrize("call, error, words", [
    (lambda: mu.MixtureOfLinearExperts(0), ValueError, "n_experts must be >= 1, got 0"),
    (lambda: mu.MixtureOfLinearExperts(2.5), TypeError, "n_experts must be an integer"),
    (lambda: mu.MixtureOfLinearExperts(2, gate="tree"), ValueError, "unknown gate 'tree'"),
    (lambda: mu.MixtureOfLinearExperts(2, init="smart"), ValueError, "unknown init 'smart'"),
    (lambda: mu.MixtureOfLinearExperts(2, alpha=0.5), ValueError, "alpha must be in"),
    (lambda: mu.MixtureOfLinearExperts(2, tol=-1.0), ValueError, "tol must be in"),
    (lambda: mu.MixtureOfLinearExperts(2).fit(torch.zeros(5), torch.zeros(4)), ValueError, "x has 5, y has 4"),
    (lambda: mu.MixtureOfLinearExperts(2).fit(torch.zeros(5, 1, 1), torch.zeros(5)), ValueError, "x must have shape"),
    (lambda: mu.MixtureOfLinearExperts(2).fit(torch.zeros(5), torch.zeros(5, 2)), ValueError, "y must have shape"),
    (lambda: mu.MixtureOfLinearExperts(2).fit(torch.tensor([0.0, math.nan, 1.0]), torch.zeros(3)), ValueError, "x contains NaN"),
    (lambda: mu.MixtureOfLinearExperts(2).fit(torch.zeros(3), torch.tensor([0.0, math.inf, 1.0])), ValueError, "y contains NaN or inf"),
    (lambda: mu.MixtureOfLinearExperts(5).fit(torch.arange(3.0), torch.zeros(3)), ValueError, "fewer than n_experts=5"),
    (lambda: mu.MixtureOfLinearExperts(2).predict(torch.zeros(3)), RuntimeError, "not fitted yet"),
    (lambda: mu.MixtureOfLinearExperts(2).fit("abc", torch.zeros(3)), TypeError, "x must be a tensor"),
    (lambda: mu.MixtureOfLinearExperts(2, device="foo").fit(torch.arange(3.0), torch.zeros(3)), ValueError,
     "unknown device 'foo'"),
    (lambda: mu.experts.fit_linear(torch.zeros(4, 1), torch.zeros(4), torch.ones(3, 2)), ValueError,
     "x has 4, y has 4, resp has 3"),
    (lambda: mu.experts.fit_linear(torch.zeros(4, 1), torch.zeros(4), torch.ones(4, 2), ridge=-1.0), ValueError,
     "ridge must be in"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_predict_checks_the_number_of_features():
    x, y, _ = mixture_data(200)
    model = mu.MixtureOfLinearExperts(2, n_init=1).fit(x, y)
    with pytest.raises(ValueError, match=r"x must have 2 feature\(s\)"):
        model.predict(torch.zeros(3, 3, dtype=F64))


# ---------------------------------------------------------------- degenerate data: sane fits, no NaN
def assert_sane(model, x, y):
    for value in (model.weights_, model.biases_, model.noise_var_, model.predict(x), model.log_prob(x, y)):
        assert torch.isfinite(value).all()
    assert (model.noise_var_ > 0).all() and math.isfinite(model.log_likelihood_)


@pytest.mark.parametrize("gate", ["softmax", "mlp", "constant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_y_fits_exactly_with_a_tiny_noise_variance(gate, dtype):
    x = torch.linspace(-1, 1, 40, dtype=dtype)
    for value in (2.5, 0.0):
        y = torch.full((40,), value, dtype=dtype)
        model = mu.MixtureOfLinearExperts(2, gate=gate, n_init=1).fit(x, y)
        assert_sane(model, x, y)
        torch.testing.assert_close(model.predict(x), y)
        # the noise variance is floored at the rounding level of y: N (eps max|y|)^2 (or tiny)
        floor = max(len(y) * (torch.finfo(dtype).eps * value) ** 2, torch.finfo(dtype).tiny)
        torch.testing.assert_close(model.noise_var_, torch.full((2,), floor, dtype=dtype))


@pytest.mark.parametrize("gate", ["softmax", "mlp", "constant"])
def test_constant_x_gives_a_mixture_of_constants(gate):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.full((60,), 3.0, dtype=F64), torch.randn(60, generator=gen, dtype=F64)
    for init in ("kmeans", "kmeans_xy", "random"):
        model = mu.MixtureOfLinearExperts(2, gate=gate, init=init, n_init=1).fit(x, y)
        assert_sane(model, x, y)
        torch.testing.assert_close(model.weights_, torch.zeros(2, 1, dtype=F64))
        prediction = model.predict(x)  # the same for every sample: x tells the experts apart nowhere
        assert (prediction == prediction[0]).all() and y.min() < prediction[0] < y.max()


def test_kmeans_of_identical_points_does_not_fail():
    labels = em.kmeans(torch.ones(10, 2), 3, torch.Generator().manual_seed(0))
    assert labels.shape == (10,) and ((labels >= 0) & (labels < 3)).all()


@pytest.mark.parametrize("gate", ["softmax", "mlp", "constant"])
def test_one_sample_one_expert(gate):
    x, y = torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([2.0], dtype=F64)
    model = mu.MixtureOfLinearExperts(1, gate=gate).fit(x, y)
    assert_sane(model, x, y)
    torch.testing.assert_close(model.predict(x), y)
