"""MixtureOfExperts, its two losses and the training loop."""

import math

import pytest
import torch

import moe_utils as mu
from problems import F64, LIKELIHOODS, model, problem

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_forward_predict_and_blend_shapes(likelihood):
    x, y, _ = problem(likelihood, 20)
    m = model(likelihood, x, n_experts=3)
    out = m(x)
    width = 1 if likelihood == "gaussian" else 2
    assert out.experts.shape == (20, 3, width) and out.routing.log_probs.shape == (20, 3)
    assert m.predict(x).shape == m.blend(out).shape == (20, width)
    assert m.log_prob(x, y).shape == (20,) and m.responsibilities(x, y).shape == (20, 3)
    if likelihood == "categorical":  # a mixture of probabilities: rows of exp(predict) sum to one
        torch.testing.assert_close(m.predict(x).exp().sum(-1), torch.ones(20, dtype=F64))


def parts(m, x):
    """The gate (N, E), the experts' means (N, E) and variances (E,), recomputed from the parameters."""
    gate = torch.softmax(m.router.standardise(x) @ m.router.weight.T + m.router.bias, -1)
    means = m.experts.standardise(x) @ m.experts.weight[:, :, 0].T + m.experts.bias[:, 0]
    return gate, means, m.likelihood.log_var[:, 0].exp()


def test_both_losses_equal_their_written_out_formulas_in_value_and_gradient():
    x, y, _ = problem("gaussian", 40)
    m = model("gaussian", x, n_experts=3)
    with torch.no_grad():
        m.likelihood.log_var.copy_(torch.tensor([[-1.0], [0.0], [0.5]]))
    for loss, formula in [
        (mu.cooperative_loss, lambda g, f, v: ((g * f).sum(-1) - y).pow(2).mean()),
        (mu.competitive_loss, lambda g, f, v: -torch.log((g * torch.exp(-(y[:, None] - f) ** 2 / (2 * v))
                                                          / torch.sqrt(2 * math.pi * v)).sum(-1)).mean()),
    ]:
        value = loss(m, x, y)
        got = torch.autograd.grad(value, list(m.parameters()), allow_unused=True)
        expected_value = formula(*parts(m, x))
        expected = torch.autograd.grad(expected_value, list(m.parameters()), allow_unused=True)
        torch.testing.assert_close(value, expected_value)
        for name, a, b in zip([n for n, _ in m.named_parameters()], got, expected):
            if b is None:  # the cooperative loss ignores the noise variances
                assert a is None or a.abs().max() == 0, name
            else:
                torch.testing.assert_close(a, b, msg=name)
                if name.startswith("router"):  # the gate is trained through the blend too
                    assert b.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_log_density_is_exact_for_a_one_hot_gate(dtype):
    x = torch.zeros(2, 1, dtype=dtype)
    m = mu.MixtureOfExperts.linear(1, 1, 2, rule=mu.routing.Gumbel(eval_rule="argmax")).to(dtype).eval()
    with torch.no_grad():
        m.experts.weight.zero_()
        m.experts.bias.copy_(torch.tensor([[0.0], [40.0]]))
        m.likelihood.log_var.zero_()
        m.router.bias.copy_(torch.tensor([0.0, 1.0]))  # picks expert 1, which is 40 sd from y = 0
    y = torch.zeros(2, dtype=dtype)
    torch.testing.assert_close(m.log_prob(x, y), torch.full((2,), -800.0 - 0.5 * math.log(2 * math.pi), dtype=dtype))


def test_one_expert_is_that_expert_alone():
    x, y, _ = problem("gaussian", 30)
    m = model("gaussian", x, n_experts=1)
    out = m(x)
    alone = torch.distributions.Normal(out.experts[:, 0, 0], m.likelihood.var[0, 0].sqrt()).log_prob(y)
    torch.testing.assert_close(m.log_prob(x, y), alone)
    torch.testing.assert_close(m.predict(x)[:, 0], out.experts[:, 0, 0])
    g1 = torch.autograd.grad(m.log_prob(x, y).sum(), m.experts.weight)[0]
    g2 = torch.autograd.grad(alone.sum(), m.experts.weight)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("rule", [mu.routing.Softmax(0.5), mu.routing.Gumbel(hard=True, generator=GEN()),
                                  mu.routing.Gumbel(generator=GEN())], ids=["softmax", "hard gumbel", "soft gumbel"])
def test_every_rule_trains_in_float64(rule):
    x, y, _ = problem("gaussian", 200)
    m = mu.MixtureOfExperts.linear(2, 1, 2, router="mlp", rule=rule, x=x).double()
    history = mu.train.fit(m, mu.competitive_loss, x, y, epochs=60, lr=0.05, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert m(x).experts.dtype == F64 and not m.training  # fit leaves the model in eval mode


def test_classifier_trains_and_its_cooperative_loss_is_a_squared_error_on_probabilities():
    s = mu.data2d.blobs_split(600, seed=0)
    m = mu.MixtureOfExperts.linear(2, 2, 4, router="mlp", likelihood="categorical", x=s.x_train)
    history = mu.train.fit(m, mu.competitive_loss, s.x_train, s.y_train, epochs=300, lr=0.05, progress=False)
    assert history.loss[-1] < history.loss[0] / 3
    assert mu.metrics.class_scores(m.predict(s.x_test).detach(), s.y_test).accuracy > 0.93
    out = m(s.x_test)
    probs = torch.softmax(torch.einsum("ne,nec->nc", out.routing.weights, out.experts), -1)
    one_hot = torch.nn.functional.one_hot(s.y_test, 2)
    torch.testing.assert_close(mu.cooperative_loss(m, s.x_test, s.y_test), ((probs - one_hot) ** 2).mean())


def test_losses_add_the_routings_auxiliary_losses_and_training_logs_them():
    class Penalised(mu.routing.Softmax):
        def forward(self, logits):
            routing = super().forward(logits)
            return routing._replace(aux={"z_loss": logits.pow(2).mean(), "load": routing.weights.mean(0)})

    x, y, _ = problem("gaussian", 100)
    m = mu.MixtureOfExperts.linear(2, 1, 2, rule=Penalised(), x=x).double()
    plain = -m.log_prob(x, y).mean()
    torch.testing.assert_close(mu.competitive_loss(m, x, y), plain + m.router(x).pow(2).mean())

    def loss(model, x, y):
        out = model(x)
        return mu.competitive_loss(model, x, y), {"z": out.routing.aux["z_loss"]}

    history = mu.train.fit(m, loss, x, y, epochs=5, progress=False, batch_size=30)
    assert len(history.logs["z"]) == 5 and all(v > 0 for v in history.logs["z"])


def test_training_loop_early_stopping_mini_batches_callback_and_anneal():
    x, y, _ = problem("gaussian", 300)
    m = model("gaussian", x)
    seen = []
    history = mu.train.fit(m, mu.competitive_loss, x[:200], y[:200], epochs=40, lr=0.05, batch_size=64,
                           x_val=x[200:], y_val=y[200:], patience=5, callback=lambda e, _: seen.append(e),
                           progress=False)
    assert seen == list(range(len(history.loss))) and len(history.val_loss) == len(history.loss)
    best = min(range(len(history.val_loss)), key=history.val_loss.__getitem__)
    assert history.best_epoch == best
    with torch.no_grad():  # the kept parameters are the best epoch's
        assert mu.competitive_loss(m, x[200:], y[200:]).item() == pytest.approx(history.val_loss[best], rel=1e-9)
    schedule = mu.train.anneal(2.0, 0.1, 11)
    assert schedule(0) == pytest.approx(2.0) and schedule(10) == pytest.approx(0.1) and schedule(99) == pytest.approx(0.1)


@pytest.mark.parametrize("call, error, words", [
    (lambda: mu.MixtureOfExperts(mu.routing.Linear(1, 2), mu.experts.Linear(1, 1, 3), mu.likelihoods.Gaussian(3)),
     ValueError, "same number of experts, got router 2, experts 3, likelihood 3"),
    (lambda: mu.MixtureOfExperts(mu.routing.Linear(2, 2), mu.experts.Linear(1, 1, 2), mu.likelihoods.Gaussian(2)),
     ValueError, "router reads 2 inputs but the experts read 1"),
    (lambda: mu.MixtureOfExperts.linear(1, 1, 2, likelihood="poisson"), ValueError, "unknown likelihood 'poisson'"),
    (lambda: mu.MixtureOfExperts.linear(1, 1, 2)(torch.zeros(3, 2)), ValueError, r"x must have shape \(N, 1\)"),
    (lambda: mu.competitive_loss(mu.MixtureOfExperts.linear(1, 1, 2), torch.zeros(3, 1), torch.zeros(3, 2)),
     ValueError, r"y must have shape \(N, 1\)"),
    (lambda: mu.competitive_loss(mu.MixtureOfExperts.linear(1, 2, 2, likelihood="categorical"), torch.zeros(3, 1),
                                 torch.tensor([0, 2, 1])), ValueError, r"class labels in \{0, ..., 1\}"),
    (lambda: mu.train.fit(mu.MixtureOfExperts.linear(1, 1, 2), mu.competitive_loss, torch.tensor([[math.nan]]),
                          torch.zeros(1)), ValueError, "x contains NaN"),
    (lambda: mu.train.fit(mu.MixtureOfExperts.linear(1, 1, 2), mu.competitive_loss, torch.zeros(3, 1),
                          torch.zeros(3), patience=2), ValueError, "patience needs a validation split"),
    (lambda: mu.train.anneal(0.0, 1.0, 5), ValueError, "start must be in"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
