"""The scikit-learn-style estimators: what a chapter calls, and a clear error for bad input."""

import math

import numpy as np
import pytest
import torch

import moe_utils as mu
from problems import F64, LIKELIHOODS, estimator, problem

Lin, Log = mu.MixtureOfLinearExperts, mu.MixtureOfLogisticExperts


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_fitted_estimator_answers_in_the_fitted_dtype_and_shapes(likelihood):
    x, y, _ = problem(likelihood, 300)
    fitted = estimator(likelihood, 3, n_init=1, max_iter=30, tol=1e-4).fit(x.numpy(), y.tolist())  # arrays, lists
    assert fitted.gate_probs(x).shape == fitted.responsibilities(x, y).shape == (300, 3)
    assert fitted.log_prob(x, y).shape == (300,) and fitted.log_prob(x, y).dtype == F64
    torch.testing.assert_close(fitted.gate_probs(x).sum(-1), torch.ones(300, dtype=F64))
    assert fitted.fit_seconds_ > 0 and fitted.n_iter_ == len(fitted.log_likelihood_history_)
    if likelihood == "gaussian":
        assert fitted.predict(x).shape == (300,) and fitted.expert_means(x).shape == (300, 3)
        assert fitted.score(x, y).mse == pytest.approx(((fitted.predict(x) - y) ** 2).mean().item())
    else:
        proba = fitted.predict_proba(x)
        assert proba.shape == (300, 2) and ((proba >= 0) & (proba <= 1)).all()
        torch.testing.assert_close(proba.sum(-1), torch.ones(300, dtype=F64))
        assert fitted.expert_probs(x).shape == (300, 3, 2) and fitted.predict(x).dtype == torch.long
        assert fitted.score(x, y).accuracy == (fitted.predict(x) == y).double().mean().item()
    with pytest.raises(ValueError, match=r"x must have 2 feature\(s\)"):
        fitted.gate_probs(torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="x contains NaN"):
        fitted.gate_probs(torch.tensor([[0.0, math.nan]]))


def test_three_classes():
    x, _, _ = problem("categorical", 300)
    y = (x[:, 0] > 1).long() + (x[:, 0] > -1).long()
    fitted = Log(2, n_classes=3, n_init=1, max_iter=20).fit(x, y)
    assert fitted.predict_proba(x).shape == (300, 3) and fitted.score(x, y).accuracy > 0.9


@pytest.mark.parametrize("call, error, words", [
    (lambda: Lin(0), ValueError, "n_experts must be >= 1, got 0"),
    (lambda: Lin(2.5), TypeError, "n_experts must be an integer"),
    (lambda: Lin(2, router="tree"), ValueError, "unknown router 'tree'"),
    (lambda: Lin(2, init="smart"), ValueError, "unknown init 'smart'"),
    (lambda: Lin(2, alpha=0.5), ValueError, "alpha must be in"),
    (lambda: Lin(2, tol=-1.0), ValueError, "tol must be in"),
    (lambda: Lin(2, expert_solver="adam"), ValueError, "unknown expert_solver 'adam'"),
    (lambda: Lin(2, device="foo"), ValueError, "unknown device 'foo'"),
    (lambda: Log(2, n_classes=1), ValueError, "n_classes must be >= 2"),
    (lambda: Log(2, init="kmeans_xy"), ValueError, "unknown init 'kmeans_xy'"),
    (lambda: Lin(2).fit(torch.zeros(5), torch.zeros(4)), ValueError, "x has 5, y has 4"),
    (lambda: Lin(2).fit(torch.zeros(5, 1, 1), torch.zeros(5)), ValueError, "x must have shape"),
    (lambda: Lin(2).fit(torch.zeros(5), torch.zeros(5, 2)), ValueError, "y must have shape"),
    (lambda: Lin(2).fit(torch.tensor([0.0, math.nan, 1.0]), torch.zeros(3)), ValueError, "x contains NaN"),
    (lambda: Lin(2).fit(torch.zeros(3), torch.tensor([0.0, math.inf, 1.0])), ValueError, "y contains NaN or inf"),
    (lambda: Lin(5).fit(torch.arange(3.0), torch.zeros(3)), ValueError, "fewer than n_experts=5"),
    (lambda: Lin(2).fit("abc", torch.zeros(3)), TypeError, "x must be a tensor"),
    (lambda: Log(2).fit(torch.zeros(3, 2), torch.tensor([0, 1, 2])), ValueError, r"class labels in \{0, ..., 1\}"),
    (lambda: Log(2).fit(torch.zeros(3, 2), torch.tensor([0.0, 0.5, 1.0])), ValueError, "class labels"),
    (lambda: Lin(2).predict(torch.zeros(3)), RuntimeError, "not fitted yet"),
    (lambda: Log(2).predict_proba(torch.zeros(3, 2)), RuntimeError, "not fitted yet"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
