import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import moe_utils as mu
from conftest import cuda
from moe_utils import classify, em

F64 = torch.float64


def fit_quietly(model, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", em.ConvergenceWarning)
        return model.fit(x, y)


def logistic_mixture(n=3000, seed=0):
    """Samples of a known mixture of 2 logistic experts with a linear-softmax gate, x in [-3, 3]^2."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=F64) * 6 - 3
    truth = {"gate_w": torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=F64), "gate_b": torch.zeros(2, dtype=F64),
             "w": torch.tensor([[1.0, 4.0], [-2.0, -3.0]], dtype=F64), "b": torch.tensor([1.0, -0.5], dtype=F64)}
    z = torch.multinomial(true_gate(x, truth), 1, generator=gen)[:, 0]
    y = torch.bernoulli(true_experts(x, truth)[torch.arange(n), z], generator=gen).long()
    return x, y, truth


def true_gate(x, truth):
    return torch.softmax(x @ truth["gate_w"].T + truth["gate_b"], -1)               # (N, E)


def true_experts(x, truth):
    return torch.sigmoid(x @ truth["w"].T + truth["b"])                            # (N, E): p_e(1 | x)


# ---------------------------------------------------------------------- the data set
@pytest.mark.parametrize("n", [1, 2, 7, 1001])
def test_blobs_sizes_halves_and_the_rule(n):
    x, y, z = classify.blobs(n, seed=3)
    assert x.shape == (n, 2) and y.shape == z.shape == (n,) and x.dtype == torch.float32
    assert y.dtype == z.dtype == torch.long
    assert (z == 0).sum() == n // 2 and (z == 1).sum() == n - n // 2
    assert torch.equal(classify.circle_rule(x), y)


def test_blobs_are_seeded_and_follow_the_reference_recipe():
    x, y, z = classify.blobs(20001, seed=0, dtype=F64)
    a, b = classify.blobs(20001, seed=0, dtype=F64), classify.blobs(20001, seed=1, dtype=F64)
    assert torch.equal(a[0], x) and not torch.equal(b[0], x)
    torch.testing.assert_close(x[z == 0].mean(0), torch.tensor([3.0, 0.0], dtype=F64), atol=0.05, rtol=0)
    torch.testing.assert_close(x[z == 1].mean(0), torch.tensor([-3.0, 0.0], dtype=F64), atol=0.05, rtol=0)
    torch.testing.assert_close(x[z == 1].std(0), torch.ones(2, dtype=F64), atol=0.03, rtol=0)
    before_shift = x + torch.tensor([0.0, 2.0], dtype=F64)   # the reference labels before shifting y by -2
    assert torch.equal((before_shift.norm(dim=1) > math.sqrt(13)).long(), y)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=F64)
    assert torch.allclose((centres - torch.tensor(classify.CENTRE, dtype=F64)).norm(dim=1),
                          torch.full((2,), classify.RADIUS, dtype=F64))  # the circle passes through both centres


def test_split_is_seeded_and_keeps_the_rule():
    s = classify.blobs_split(1001, test_size=0.5, seed=2)
    assert len(s.x_train) + len(s.x_test) == 1001 and s.x_train.shape[1] == 2
    assert torch.equal(classify.circle_rule(s.x_test), s.y_test) and torch.equal(classify.circle_rule(s.x_train), s.y_train)
    assert torch.equal(classify.blobs_split(1001, seed=2).x_test, s.x_test)


# ---------------------------------------------------------------------- EM
@pytest.mark.parametrize("gate", ["softmax", "mlp", "constant"])
@pytest.mark.parametrize("seed", range(4))
def test_em_log_likelihood_never_decreases(gate, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(150, 2, generator=gen, dtype=F64) * 2
    y = (torch.rand(150, generator=gen, dtype=F64) < torch.sigmoid(x[:, 0] * x[:, 1])).long()  # not linear
    for init, n_experts in (("kmeans", 3), ("random", 2)):
        model = classify.MixtureOfLogisticExperts(n_experts, gate=gate, init=init, n_init=1, max_iter=25, seed=seed)
        history = np.array(fit_quietly(model, x, y).log_likelihood_history_)
        assert (np.diff(history) >= -1e-10).all(), np.diff(history).min()


def test_em_step_by_hand_matches_the_estimator_objective():
    x, y, _ = logistic_mixture(300)
    model = fit_quietly(classify.MixtureOfLogisticExperts(2, n_init=1, max_iter=5), x, y)
    resp, log_lik = classify.e_step(model.gate_, model.experts_, x, y)
    torch.testing.assert_close(resp.sum(-1), torch.ones(300, dtype=F64))
    assert log_lik == pytest.approx(model.log_prob(x, y).mean().item())
    new = classify.m_step_experts(model.experts_, x, y, resp)
    assert new is not model.experts_ and new[0].weight is not model.experts_[0].weight


def match(model, truth, x):
    """The permutation of fitted experts whose gate best matches the true one."""
    perms = list(itertools.permutations(range(2)))
    err = [(model.gate_probs(x)[:, list(p)] - true_gate(x, truth)).abs().mean().item() for p in perms]
    return list(perms[int(np.argmin(err))])


@pytest.mark.parametrize("seed", [0, 2])
def test_fit_recovers_a_known_mixture_up_to_expert_order(seed):
    # Tolerance (3,000 noisy binary labels): on fresh inputs the fitted gate and experts' probabilities
    # are within 0.02 and 0.04 of the true ones on average, and each expert's logit slope (in the units
    # of x) within 30% of the true one (Euclidean norm). EM keeps the best of 4 starts: k-means can cut
    # the square the wrong way, a local optimum that a restart leaves behind.
    x, y, truth = logistic_mixture(seed=seed)
    model = classify.MixtureOfLogisticExperts(2, n_init=4, seed=seed, tol=1e-6).fit(x, y)
    x_new = torch.rand(2000, 2, generator=torch.Generator().manual_seed(9), dtype=F64) * 6 - 3
    order = match(model, truth, x_new)
    assert (model.gate_probs(x_new)[:, order] - true_gate(x_new, truth)).abs().mean() < 0.02
    assert (model.expert_probs(x_new)[:, order, 1] - true_experts(x_new, truth)).abs().mean() < 0.04
    for e, expert in enumerate(model.experts_[i] for i in order):  # logit difference in the units of x
        slope = (expert.weight[1] - expert.weight[0]) / expert.scale
        assert (slope - truth["w"][e]).norm() < 0.3 * truth["w"][e].norm()


def test_one_expert_is_l2_regularised_logistic_regression():
    x, y, _ = logistic_mixture(500)
    l2 = 0.1
    model = classify.MixtureOfLogisticExperts(1, n_init=1, tol=1e-12, expert_steps=10, expert_l2=l2).fit(x, y)
    expert = model.experts_[0]
    # Two logits v_1, v_0 with penalty l2/2 (|v_1|^2 + |v_0|^2) are logistic regression on w = v_1 - v_0
    # with penalty l2/4 |w|^2 (the bias included): scikit-learn's C = 2 / l2 on standardised x and a ones column.
    feats = torch.cat([expert.features(x), torch.ones(500, 1, dtype=F64)], 1).numpy()
    ref = LogisticRegression(C=2 / l2, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(feats, y.numpy())
    torch.testing.assert_close(model.predict_proba(x)[:, 1], torch.tensor(ref.predict_proba(feats)[:, 1]),
                               atol=1e-6, rtol=0)
    objective = em._gate_objective(expert, x, torch.nn.functional.one_hot(y, 2).to(F64), l2)
    grads = torch.autograd.grad(objective, list(expert.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-8  # the gradient of the MAP objective vanishes


def test_restarts_keep_the_best_are_reproducible_and_warn():
    x, y, _ = logistic_mixture(400)
    a = fit_quietly(classify.MixtureOfLogisticExperts(3, init="random", n_init=3, seed=1, max_iter=15), x, y)
    b = fit_quietly(classify.MixtureOfLogisticExperts(3, init="random", n_init=3, seed=1, max_iter=15), x, y)
    assert a.log_likelihood_ == max(a.restart_log_likelihoods_) == b.log_likelihood_
    assert a.n_iter_ == len(a.log_likelihood_history_) and a.fit_seconds_ > 0
    with pytest.warns(em.ConvergenceWarning, match="did not converge in max_iter=2"):
        c = classify.MixtureOfLogisticExperts(2, max_iter=2, n_init=1).fit(x, y)
    assert not c.converged_


# ---------------------------------------------------------------------- probabilities
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_probabilities_are_in_the_unit_interval_and_sum_to_one(dtype, n_classes):
    x, y, _ = classify.blobs(400, seed=0, dtype=dtype)
    y = torch.where(x[:, 1] > 1.5, n_classes - 1, y)  # a third class on top, when there is one
    model = fit_quietly(classify.MixtureOfLogisticExperts(3, n_classes=n_classes, n_init=1, max_iter=20), x, y)
    net = classify.MoEClassifier.linear(2, n_classes, 3).to(dtype)
    for probs in (model.predict_proba(x), model.expert_probs(x), net.predict_proba(x), net.expert_probs(x)):
        assert probs.dtype == dtype and ((probs >= 0) & (probs <= 1)).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1], dtype=dtype))
    for gate in (model.gate_probs(x), net.gate_probs(x), model.responsibilities(x, y)):
        torch.testing.assert_close(gate.sum(-1), torch.ones(400, dtype=dtype))
    # predict_proba renormalises with a softmax, so check the log-probabilities themselves: the mixture
    # logsumexp_e(log g_e + log p_e(c)) must sum to one over the classes without any renormalisation
    logits_net = classify.MoEClassifier.linear(2, n_classes, 3, combine="logits").to(dtype)
    with torch.no_grad():
        for log_probs in (model.predict_log_proba(x), net(x), logits_net(x)):
            assert log_probs.dtype == dtype and (log_probs <= 0).all()
            torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(400, dtype=dtype))
        torch.testing.assert_close(net.predict_proba(x), net(x).exp())
    assert model.predict_proba(x).shape == (400, n_classes) and model.predict(x).dtype == torch.long
    assert (model.log_prob(x, y) <= 0).all() and model.log_prob(x, y).shape == (400,)
    score = model.score(x, y)
    assert score.nll == pytest.approx(-model.log_prob(x, y).mean().item(), rel=1e-5)
    assert score.accuracy == pytest.approx((model.predict(x) == y).double().mean().item())


def test_float32_and_float64_fit_alike():
    s64 = classify.blobs_split(1000, seed=0, dtype=F64)
    s32 = classify.blobs_split(1000, seed=0, dtype=torch.float32)
    a = fit_quietly(classify.MixtureOfLogisticExperts(2, n_init=1), s64.x_train, s64.y_train)
    b = fit_quietly(classify.MixtureOfLogisticExperts(2, n_init=1), s32.x_train, s32.y_train)
    assert a.predict_proba(s64.x_test).dtype == F64 and b.predict_proba(s32.x_test).dtype == torch.float32
    assert b.score(s32.x_test, s32.y_test).accuracy == pytest.approx(a.score(s64.x_test, s64.y_test).accuracy, abs=0.01)
    assert b.predict(s64.x_test.numpy()).shape == (500,)  # arrays are accepted and cast


# ---------------------------------------------------------------------- the gradient module and losses
def test_module_mixes_probabilities_and_its_gradient_is_the_responsibility_weighted_one():
    x, y, _ = classify.blobs(200, seed=0, dtype=F64)
    net = classify.MoEClassifier.linear(2, 2, 3, seed=1).to(F64)
    log_g, logits = net.parts(x)
    expected = torch.log((log_g.exp()[:, :, None] * torch.softmax(logits, -1)).sum(1))
    torch.testing.assert_close(net(x), expected)
    # d log p(y|x) = sum_e r_e d[log g_e + log p_e(y)]: the gradient that EM's M-steps follow
    log_p = net(x)[torch.arange(200), y].sum()
    joint = log_g + torch.log_softmax(logits, -1)[torch.arange(200), :, y]
    surrogate = (torch.softmax(joint, -1).detach() * joint).sum()
    for a, b in zip(torch.autograd.grad(log_p, list(net.parameters()), retain_graph=True),
                    torch.autograd.grad(surrogate, list(net.parameters()))):
        torch.testing.assert_close(a, b)


def test_one_expert_makes_both_combinations_equal_and_losses_are_what_they_say():
    x, y, _ = classify.blobs(100, seed=0, dtype=F64)
    probs = classify.MoEClassifier.linear(2, 2, 1, seed=0).to(F64)
    logits = classify.MoEClassifier.linear(2, 2, 1, seed=0, combine="logits").to(F64)
    torch.testing.assert_close(probs(x), logits(x))
    p1 = probs(x).exp()[:, 1]
    torch.testing.assert_close(classify.mse_loss(probs(x), y), ((p1 - y) ** 2).mean())  # MSE on the sigmoid
    torch.testing.assert_close(classify.nll_loss(probs(x), y), -torch.log(torch.where(y == 1, p1, 1 - p1)).mean())


def test_losses_check_the_labels_and_accept_integral_floats():
    log_probs = torch.log_softmax(torch.randn(5, 3, dtype=F64), -1)
    y = torch.tensor([0, 2, 1, 1, 0])
    for loss in (classify.nll_loss, classify.mse_loss):
        for same in (y.int(), y.double(), y.numpy(), y[:, None]):  # converted to the same long labels
            torch.testing.assert_close(loss(log_probs, same), loss(log_probs, y))


def test_init_from_responsibilities_is_one_m_step_of_em():
    s = classify.blobs_split(600, seed=0, dtype=F64)
    x, y = s.x_train, s.y_train
    shift, scale = mu.gates.standardiser(x)
    resp = em.init_responsibilities(x, y.to(F64), 3, "kmeans", seed=0)
    net = classify.MoEClassifier.linear(2, 2, 3, gate="mlp", seed=0, shift=shift, scale=scale).to(F64)
    assert classify.init_from_responsibilities(net, x, y, resp) is net
    # the same M-step, by hand: each expert a softmax regression on r_ne one_hot(y_n), the gate fitted to resp
    gen = torch.Generator().manual_seed(0)
    experts = torch.nn.ModuleList(mu.gates.SoftmaxGate(2, 2, shift=shift, scale=scale, generator=gen).to(F64)
                                  for _ in range(3))
    experts = classify.m_step_experts(experts, x, y, resp, steps=30)
    expected = classify.expert_log_probs(experts, x).exp()                              # (N, E, C)
    torch.testing.assert_close(net.expert_probs(x), expected, atol=1e-6, rtol=0)
    gate = classify.MoEClassifier.linear(2, 2, 3, gate="mlp", seed=0, shift=shift, scale=scale).to(F64).gate
    before = em._gate_objective(gate, x, resp, 1e-2).item()
    with torch.no_grad():
        em.fit_softmax(gate, x, resp, l2=1e-2, steps=10)
    torch.testing.assert_close(net.gate_probs(x), gate(x).exp().detach())
    assert em._gate_objective(net.gate, x, resp, 1e-2).item() > before + 0.1
    start = mu.metrics.class_scores(net(x).detach(), y).accuracy
    assert start > 0.8  # k-means regions of the two blobs, a line each: far better than a random net
    with pytest.raises(ValueError, match="resp must have 3 feature"):
        classify.init_from_responsibilities(net, x, y, resp[:, :2])
    with pytest.raises(ValueError, match="y must hold class labels"):
        classify.init_from_responsibilities(net, x, y + 1, resp)
    with pytest.raises(ValueError, match="resp must hold probabilities"):
        classify.init_from_responsibilities(net, x, y, resp * 2)


def test_one_newton_step_is_the_chapters_irls_update():
    # Chapter 4, eq-cls-irls: w <- (X~^T R S X~ + (l2/2) I)^-1 X~^T R S z with z = X~ w + S^-1 (y - p), where
    # w = v_1 - v_0 (weights and bias) of a 2-class softmax expert on the standardised inputs X~ = (x', 1),
    # R = diag(r), S = diag(p (1 - p)). A penalty of l2 / 2 |V|^2 is l2 / 4 |w|^2 in w, hence l2 / 2, not l2.
    x, y, _ = logistic_mixture(300)
    l2 = 5.0  # large, so that l2 and l2 / 2 give clearly different steps
    r = torch.rand(300, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    shift, scale = mu.gates.standardiser(x)
    expert = mu.gates.SoftmaxGate(2, 2, shift=shift, scale=scale, generator=torch.Generator().manual_seed(2))
    expert = expert.to(F64)

    def w_of(ex):
        return torch.cat([ex.weight[1] - ex.weight[0], (ex.bias[1] - ex.bias[0])[None]]).detach()

    feats = torch.cat([expert.features(x), torch.ones(300, 1, dtype=F64)], 1)            # (N, D + 1)
    w = w_of(expert)
    p = torch.sigmoid(feats @ w)
    rs = r[:, 0] * p * (1 - p)
    z = feats @ w + (y - p) / (p * (1 - p))
    expected = torch.linalg.solve(feats.T @ (rs[:, None] * feats) + l2 / 2 * torch.eye(3, dtype=F64),
                                  feats.T @ (rs * z))
    new = classify.m_step_experts(torch.nn.ModuleList([expert]), x, y, r, l2=l2, steps=1)[0]
    torch.testing.assert_close(w_of(new), expected, atol=1e-8, rtol=1e-7)


def test_gradient_training_learns():
    s = classify.blobs_split(600, seed=0)
    shift, scale = mu.gates.standardiser(s.x_train)
    net = classify.MoEClassifier.linear(2, 2, 4, gate="mlp", shift=shift, scale=scale)
    history = mu.train.fit(net, lambda m, x, y: classify.nll_loss(m(x), y), s.x_train, s.y_train,
                           epochs=300, lr=0.05, progress=False)
    assert history.loss[-1] < history.loss[0] / 3
    assert mu.metrics.class_scores(net(s.x_test).detach(), s.y_test).accuracy > 0.93


# ---------------------------------------------------------------------- metrics and plots
def test_scores_and_reliability_by_hand():
    log_probs = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]))
    y = torch.tensor([0, 1, 1, 1])
    s = mu.metrics.class_scores(log_probs, y)
    assert s.accuracy == 0.75 and s.nll == pytest.approx(-(math.log(0.9 * 0.8 * 0.4 * 0.7)) / 4)
    rel = mu.metrics.reliability(torch.tensor([0.1, 0.8, 0.4, 0.7]), y, n_bins=2)
    torch.testing.assert_close(rel.count, torch.tensor([2, 2]))
    torch.testing.assert_close(rel.confidence, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(rel.frequency, torch.tensor([0.5, 1.0], dtype=F64))
    assert rel.ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)
    empty = mu.metrics.reliability(torch.tensor([0.05, 0.1]), torch.tensor([0, 0]), n_bins=4)
    assert empty.count.tolist() == [2, 0, 0, 0] and empty.ece == pytest.approx(0.075)


def test_figures():
    s = classify.blobs_split(200, seed=0, dtype=F64)
    model = fit_quietly(classify.MixtureOfLogisticExperts(2, n_init=1, max_iter=10), s.x_train, s.y_train)
    fig = mu.plots.decision_figure({"MoE": model, "net": classify.MoEClassifier.linear(2, 2, 2)},
                                   s.x_test, s.y_test, rule=classify.circle_rule, resolution=40)
    names = {t.name for t in fig.data}
    assert {"expert 0", "expert 1", "model's boundary", "true boundary", "class 0", "class 1"} <= names
    assert sum(t.type == "heatmap" for t in fig.data) == 2
    rel = mu.metrics.reliability(model.predict_proba(s.x_test)[:, 1], s.y_test)
    fig = mu.plots.reliability_figure({"MoE": rel})
    assert any("ECE" in (t.name or "") for t in fig.data)


# ---------------------------------------------------------------------- validation
X, Y = torch.zeros(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
M = classify.MixtureOfLogisticExperts


@pytest.mark.parametrize("call, error, words", [
    (lambda: M(2).fit(X, torch.tensor([0, 1, 2, 1, 0, 1])), ValueError, r"y must hold class labels in \{0, ..., 1\}, got 2"),
    (lambda: M(2).fit(X, torch.tensor([0, 1, -1, 1, 0, 1])), ValueError, "class labels.*got -1"),
    (lambda: M(2).fit(X, torch.tensor([0, 1, 0.5, 1, 0, 1])), ValueError, "class labels.*got 0.5"),
    (lambda: M(2, n_classes=3).fit(X, torch.tensor([0, 1, 3, 1, 0, 1])), ValueError, r"\{0, ..., 2\}, got 3"),
    (lambda: M(2).fit(X, Y[:5]), ValueError, "x has 6, y has 5"),
    (lambda: M(2).fit(torch.zeros(6, 2, 1), Y), ValueError, "x must have shape"),
    (lambda: M(2).fit(X, torch.zeros(6, 2)), ValueError, "y must have shape"),
    (lambda: M(2).fit(X.clone().index_fill_(0, torch.tensor([1]), math.nan), Y), ValueError, "x contains NaN"),
    (lambda: M(2).fit(X, torch.tensor([0.0, 1, math.inf, 1, 0, 1])), ValueError, "y contains NaN or inf"),
    (lambda: M(0), ValueError, "n_experts must be >= 1, got 0"),
    (lambda: M(2.5), TypeError, "n_experts must be an integer"),
    (lambda: M(2, n_classes=1), ValueError, "n_classes must be >= 2"),
    (lambda: M(7).fit(X, Y), ValueError, "6 samples, fewer than n_experts=7"),
    (lambda: M(2, gate="tree"), ValueError, "unknown gate 'tree'"),
    (lambda: M(2, init="kmeans_xy"), ValueError, "unknown init 'kmeans_xy'"),
    (lambda: M(2, expert_l2=-1.0), ValueError, "expert_l2 must be in"),
    (lambda: M(2).predict(X), RuntimeError, "not fitted yet"),
    (lambda: M(2).fit("abc", Y), TypeError, "x must be a tensor"),
    (lambda: classify.blobs(0), ValueError, "n must be >= 1"),
    (lambda: classify.blobs(10, seed=-1), ValueError, "seed must be >= 0"),
    (lambda: classify.circle_rule(torch.zeros(4, 3)), ValueError, r"x must have 2 feature\(s\)"),
    (lambda: classify.MoEClassifier.linear(2, 2, 2, combine="sum"), ValueError, "unknown combine 'sum'"),
    (lambda: classify.MoEClassifier.linear(2, 2, 2, gate="gumbel"), ValueError, "unknown gate 'gumbel'"),
    (lambda: classify.MoEClassifier.linear(2, 2, 0), ValueError, "n_experts must be >= 1"),
    (lambda: classify.MoEClassifier.linear(2, 2, 2)(torch.zeros(3, 3)), ValueError, r"x must have shape \(N, 2\)"),
    (lambda: mu.metrics.reliability(torch.tensor([0.5, 1.5]), torch.tensor([0, 1])), ValueError, "prob must hold"),
    (lambda: mu.metrics.reliability(torch.tensor([0.5]), torch.tensor([0]), n_bins=0), ValueError, "n_bins must be >= 1"),
    (lambda: mu.metrics.class_scores(torch.zeros(3, 2), torch.tensor([0, 1])), ValueError, "y must have 3 entries"),
    (lambda: classify.nll_loss(torch.zeros(5, 2), torch.tensor([1])), ValueError, r"y must have 5 entries.*got 1"),
    (lambda: classify.mse_loss(torch.zeros(5, 2), torch.tensor([1])), ValueError, r"y must have 5 entries.*got 1"),
    (lambda: classify.nll_loss(torch.zeros(5, 2), torch.tensor([0, 1, 2, 1, 0])), ValueError,
     r"y must hold class labels in \{0, ..., 1\}, got 2"),
    (lambda: classify.mse_loss(torch.zeros(5, 2), torch.tensor([0, 1, -1, 1, 0])), ValueError, "class labels.*got -1"),
    (lambda: classify.nll_loss(torch.zeros(5, 2), torch.tensor([0, 1, 0.5, 1, 0])), ValueError, "y must hold.*got 0.5"),
    (lambda: classify.mse_loss(torch.zeros(5, 2), torch.tensor([0.0, 1, math.nan, 1, 0])), ValueError,
     "y contains NaN"),
    (lambda: classify.nll_loss(torch.zeros(5, 2), torch.zeros(5, 2, dtype=torch.long)), ValueError, "y must have shape"),
    (lambda: classify.nll_loss(torch.zeros(5), torch.zeros(5, dtype=torch.long)), ValueError,
     r"log_probs must have shape \(N, C\), got \(5,\)"),
    (lambda: classify.mse_loss([[0.0, 0.0]], torch.zeros(1, dtype=torch.long)), TypeError, "log_probs must be a tensor"),
    (lambda: classify.MoEClassifier.linear(2, 2, 2).predict_proba(torch.zeros(3, 3)), ValueError,
     r"x must have 2 feature\(s\)"),
    (lambda: classify.init_from_responsibilities(torch.nn.Linear(2, 2), X, Y, torch.ones(6, 2) / 2), TypeError,
     "model must be an MoEClassifier"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ["predict_proba", "gate_probs", "expert_probs"])
def test_network_prediction_helpers_reject_nan_and_inf(method, bad):
    net = classify.MoEClassifier.linear(2, 2, 3, gate="mlp")
    x = torch.zeros(4, 2, dtype=F64)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        getattr(net, method)(x)
    assert getattr(net, method)(x.nan_to_num(0.0, 0.0, 0.0)).isfinite().all()  # float64 in, float32 net: fine


def test_predict_checks_the_number_of_features():
    s = classify.blobs_split(100, seed=0)
    model = fit_quietly(M(2, n_init=1, max_iter=5), s.x_train, s.y_train)
    with pytest.raises(ValueError, match=r"x must have 2 feature\(s\)"):
        model.predict(torch.zeros(3, 3))


@cuda
def test_device_follows_the_inputs():
    s = classify.blobs_split(400, seed=0, device="cuda")
    model = M(2, n_init=1).fit(s.x_train, s.y_train)
    assert model.predict_proba(s.x_test).device.type == "cuda" and model.gate_.shift.device.type == "cuda"
    net = classify.MoEClassifier.linear(2, 2, 2).to("cuda")
    assert net.predict_proba(s.x_test).device.type == "cuda"
