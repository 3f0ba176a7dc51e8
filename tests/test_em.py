"""The EM skeleton, one test per idea, parametrised over the likelihood heads and routers."""

import copy
import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch

import moe_utils as mu
from moe_utils import em
from problems import F64, LIKELIHOODS, ROUTERS, best_order, estimator, model, problem, true_gate


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", em.ConvergenceWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_e_step_is_bayes_rule(likelihood):
    x, y, _ = problem(likelihood, 50)
    m = model(likelihood, x, n_experts=3)
    out = m(x)
    resp, log_p = mu.mixture.e_step(out.routing.log_probs, m.log_lik(out, y))
    gate = torch.softmax(m.router(x), -1)                                       # (N, E)
    if likelihood == "gaussian":
        dist = torch.distributions.Normal(out.experts[:, :, 0], m.likelihood.var[:, 0].sqrt())
        p = dist.log_prob(y[:, None]).exp()
    else:
        p = torch.distributions.Categorical(logits=out.experts).log_prob(y[:, None]).exp()
    joint = gate * p                                                            # (N, E)
    torch.testing.assert_close(resp, joint / joint.sum(-1, keepdim=True))
    torch.testing.assert_close(log_p, joint.sum(-1).log())
    torch.testing.assert_close(resp.sum(-1), torch.ones(50, dtype=F64))


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_objective_never_decreases(likelihood, router):
    for seed in range(2):
        x, y, _ = problem(likelihood, 200, seed=seed)
        for init in ("kmeans", "random"):
            m = model(likelihood, x, n_experts=3, router=router, seed=seed)
            resp = em.init_responsibilities(x, y.to(F64), 3, init, seed)
            run = quietly(em.fit, m, x, y, resp, max_iter=30, router_steps=5)
            assert (np.diff(run.history) >= -1e-9).all(), (init, seed, np.diff(run.history).min())


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_recovers_a_known_mixture_up_to_expert_order(likelihood):
    x, y, truth = problem(likelihood, 3000)
    fitted = quietly(estimator(likelihood, n_init=4, seed=0, tol=1e-7).fit, x, y)
    x_new = torch.rand(1000, 2, generator=torch.Generator().manual_seed(9), dtype=F64) * 4 - 2
    if likelihood == "gaussian":
        order = best_order(fitted.weights_, truth["w"])
        torch.testing.assert_close(fitted.weights_[order], truth["w"], atol=0.03, rtol=0)
        torch.testing.assert_close(fitted.biases_[order], truth["b"], atol=0.03, rtol=0)
        torch.testing.assert_close(fitted.noise_var_[order].sqrt(), truth["sd"], atol=0, rtol=0.08)
    else:  # 3,000 noisy binary labels: each logit slope within 30% of the truth
        slopes = fitted.model_.experts.weight.detach()
        slopes = (slopes[:, :, 1] - slopes[:, :, 0]) / fitted.model_.experts.scale        # (E, D) units of x
        order = best_order(slopes, truth["w"])
        assert ((slopes[order] - truth["w"]).norm(dim=1) < 0.3 * truth["w"].norm(dim=1)).all()
    assert (fitted.gate_probs(x_new)[:, order] - true_gate(x_new, truth)).abs().mean() < 0.03


def lstsq(x, y, weight):
    """Reference weighted least squares in float64 by SVD: (slopes (D,), bias)."""
    design = torch.cat([x.double(), torch.ones(len(x), 1, dtype=F64)], 1) * weight.double().sqrt()[:, None]
    coef = torch.linalg.lstsq(design, y.double()[:, None] * weight.double().sqrt()[:, None], driver="gelsd").solution
    return coef[:-1, 0], coef[-1, 0]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_one_expert_equals_its_plain_fit(likelihood):
    x, y, _ = problem(likelihood, 400)
    if likelihood == "gaussian":  # least squares, and the residual variance
        fitted = estimator(likelihood, 1).fit(x, y)
        slope, bias = lstsq(x, y, torch.ones(400))
        prediction = x @ slope + bias
        torch.testing.assert_close(fitted.weights_[0], slope)
        torch.testing.assert_close(fitted.predict(x), prediction)
        torch.testing.assert_close(fitted.noise_var_[0], ((prediction - y) ** 2).mean())
        return
    # softmax regression with the Gaussian prior l2/2 |V|^2 on the standardised inputs: its MAP by scipy
    l2 = 0.1
    fitted = estimator(likelihood, 1, n_init=1, tol=1e-12, expert_steps=10, expert_l2=l2).fit(x, y)
    feats = torch.cat([fitted.model_.experts.design(x), torch.ones(400, 1, dtype=F64)], 1)

    def neg_objective(v):
        v = torch.tensor(v).reshape(3, 2)
        return (-torch.log_softmax(feats @ v, -1)[torch.arange(400), y].sum() + 0.5 * l2 * (v**2).sum()).item()

    ref = scipy.optimize.minimize(neg_objective, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    probs = torch.softmax(feats @ torch.tensor(ref).reshape(3, 2), -1)
    torch.testing.assert_close(fitted.predict_proba(x), probs, atol=1e-6, rtol=0)


def permuted(m, perm):
    """A copy of a linear-router model with its experts in the order ``perm``."""
    new = copy.deepcopy(m)
    with torch.no_grad():
        for module in (new.router, new.experts, new.likelihood):
            for p in module.parameters():
                if p.ndim and p.shape[0] == m.n_experts:
                    p.copy_(p[perm])
    return new


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_permuting_experts_permutes_everything(likelihood):
    x, y, _ = problem(likelihood, 300)
    m = model(likelihood, x, n_experts=3)
    perm = [2, 0, 1]
    resp = em.init_responsibilities(x, y.to(F64), 3, "random", 0)
    other = permuted(m, perm)
    a = quietly(em.fit, m, x, y, resp, max_iter=20)
    b = quietly(em.fit, other, x, y, resp[:, perm], max_iter=20)
    np.testing.assert_allclose(a.history, b.history, rtol=1e-9)
    torch.testing.assert_close(b.state, a.state[:, perm])
    torch.testing.assert_close(other(x).experts, m(x).experts[:, perm])


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_float32_and_float64_agree(likelihood):
    x, y, _ = problem(likelihood, 500)
    fits = {dtype: quietly(estimator(likelihood, 2, n_init=1, seed=0, tol=1e-5).fit, x.to(dtype), y.to(dtype)
                           if likelihood == "gaussian" else y) for dtype in (torch.float32, F64)}
    assert fits[torch.float32].model_.experts.weight.dtype == torch.float32
    assert fits[torch.float32].log_likelihood_ == pytest.approx(fits[F64].log_likelihood_, abs=1e-3)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_restarts_keep_the_best_are_reproducible_and_warn(likelihood):
    x, y, _ = problem(likelihood, 300)
    a = quietly(estimator(likelihood, 3, init="random", n_init=3, seed=1, max_iter=15).fit, x, y)
    b = quietly(estimator(likelihood, 3, init="random", n_init=3, seed=1, max_iter=15).fit, x, y)
    assert a.log_likelihood_ == max(a.restart_log_likelihoods_) == b.log_likelihood_
    assert len(set(a.restart_log_likelihoods_)) > 1
    with pytest.warns(em.ConvergenceWarning, match="did not converge"):
        estimator(likelihood, 2, max_iter=2, tol=0.0).fit(x, y)


def test_iterate_stops_reports_drops_takes_round_off_and_raises_on_nan():
    steps = iter([1.0, 2.0, 2.0 + 1e-9])
    run = em.iterate(lambda s: (s, next(steps)), None, 10, tol=1e-6)
    assert run.converged and run.history == [1.0, 2.0, 2.0 + 1e-9]
    steps = iter([1.0, 0.5, 0.6, 0.6])
    with pytest.warns(em.ConvergenceWarning, match="decreased at 1 of 4 iterations"):
        run = em.iterate(lambda s: (s, next(steps)), None, 10, tol=1e-6)
    assert run.converged and len(run.history) == 4  # the drop was not taken for convergence
    steps = iter([1.0, 1.0 - 1e-9, 1.0 - 2e-9])  # rounding, not a drop: converged at the second
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert em.iterate(lambda s: (s, next(steps)), None, 10, tol=1e-6).history == [1.0, 1.0 - 1e-9]
    values = iter([0.0, math.nan])
    with pytest.raises(FloatingPointError, match="became nan at iteration 2"):
        em.iterate(lambda s: (s, next(values)), None, 5, 0.0)


def test_gradient_m_step_is_slower_and_no_better_than_the_closed_form():
    x, y, _ = problem("gaussian", 400)
    closed = mu.MixtureOfLinearExperts(2, seed=0).fit(x, y)
    slow = quietly(mu.MixtureOfLinearExperts(2, seed=0, expert_solver="gradient", gradient_steps=20, max_iter=20).fit,
                   x, y)
    assert slow.log_likelihood_ <= closed.log_likelihood_ + 1e-9
    # its first M-step is still the closed form: the first objective equals the closed-form run's
    assert slow.log_likelihood_history_[0] == pytest.approx(closed.log_likelihood_history_[0], abs=0.05)


def test_experts_without_a_closed_form_need_gradient_steps():
    x, y, _ = problem("gaussian", 300)
    experts = mu.experts.MLP(2, 8, 1, 2, generator=torch.Generator().manual_seed(0))
    m = mu.MixtureOfExperts(mu.routing.Linear(2, 2), experts, mu.likelihoods.Gaussian(2)).to(F64)
    resp = em.init_responsibilities(x, y, 2, "kmeans")
    with pytest.raises(ValueError, match="no closed-form M-step: pass gradient_steps"):
        em.m_step(m, x, y, resp)
    before = em.e_step(m, x, y)[1]
    run = quietly(em.fit, m, x, y, resp, max_iter=5, gradient_steps=50, lr=0.02)
    assert run.history[-1] > before


@pytest.mark.parametrize("move", [lambda x: x + 100, lambda x: x * 1e4], ids=["x + 100", "x * 1e4"])
def test_moved_inputs_give_the_same_fit(move):
    x, y, _ = problem("gaussian", 400)
    plain = mu.MixtureOfLinearExperts(2, seed=0).fit(x, y)
    moved = mu.MixtureOfLinearExperts(2, seed=0).fit(move(x), y)
    assert (np.diff(moved.log_likelihood_history_) >= -1e-9).all()
    torch.testing.assert_close(moved.predict(move(x)), plain.predict(x), atol=1e-6, rtol=0)


def assert_sane(fitted, x, y):
    for value in (fitted.weights_, fitted.biases_, fitted.noise_var_, fitted.predict(x), fitted.log_prob(x, y)):
        assert torch.isfinite(value).all()
    assert (fitted.noise_var_ > 0).all() and math.isfinite(fitted.log_likelihood_)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_constant_y_fits_exactly_with_a_tiny_noise_variance(router, dtype):
    x = torch.linspace(-1, 1, 40, dtype=dtype)
    for value in (2.5, 0.0):
        y = torch.full((40,), value, dtype=dtype)
        fitted = mu.MixtureOfLinearExperts(2, router=router).fit(x, y)
        assert_sane(fitted, x, y)
        torch.testing.assert_close(fitted.predict(x), y)
        floor = max(len(y) * (torch.finfo(dtype).eps * value) ** 2, torch.finfo(dtype).tiny)
        torch.testing.assert_close(fitted.noise_var_, torch.full((2,), floor, dtype=dtype))


@pytest.mark.parametrize("router", ROUTERS)
def test_constant_x_one_sample_and_identical_points(router):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.full((60,), 3.0, dtype=F64), torch.randn(60, generator=gen, dtype=F64)
    for init in em.INITS:
        # nothing to converge to: a few iterations show the fit stays sane
        fitted = quietly(mu.MixtureOfLinearExperts(2, router=router, init=init, max_iter=10).fit, x, y)
        assert_sane(fitted, x, y)
        prediction = fitted.predict(x)  # the same for every sample: x tells the experts apart nowhere
        assert (prediction == prediction[0]).all() and y.min() < prediction[0] < y.max()
    x1, y1 = torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([2.0], dtype=F64)
    fitted = mu.MixtureOfLinearExperts(1, router=router).fit(x1, y1)
    assert_sane(fitted, x1, y1)
    torch.testing.assert_close(fitted.predict(x1), y1)
    labels = em.kmeans(torch.ones(10, 2), 3, torch.Generator().manual_seed(0))
    assert labels.shape == (10,) and ((labels >= 0) & (labels < 3)).all()


@pytest.mark.parametrize("method", em.INITS)
def test_starting_responsibilities(method):
    x, y, _ = problem("gaussian", 300)
    resp = em.init_responsibilities(x, y, 3, method, seed=4)
    assert resp.shape == (300, 3) and resp.dtype == F64 and (resp > 0).all()
    torch.testing.assert_close(resp.sum(-1), torch.ones(300, dtype=F64))
    torch.testing.assert_close(resp, em.init_responsibilities(x, y, 3, method, seed=4))
    with pytest.raises(ValueError, match="unknown init 'smart'"):
        em.init_responsibilities(x, y, 3, "smart")


def test_one_m_step_starts_gradient_training_where_em_starts():
    x, y, _ = problem("gaussian", 300)
    resp = em.init_responsibilities(x, y, 2, "kmeans")
    a, b = model("gaussian", x), model("gaussian", x)
    em.m_step(a, x, y, resp)
    run = em.fit(b, x, y, resp, max_iter=1)
    assert em.e_step(a, x, y)[1] == pytest.approx(run.history[0], rel=1e-12)
    loss = mu.competitive_loss(a, x, y)  # the same module trains by gradient from there
    loss.backward()
    assert a.router.weight.grad.abs().sum() > 0 and a.experts.weight.grad.abs().sum() > 0
