import math

import pytest
import torch
from torch.distributions import Normal

import moe_utils as mu
from moe_utils.gates import GumbelGate, MLPGate, SoftmaxGate
from moe_utils.moe import MixtureOfExperts, competitive_loss, cooperative_loss

from conftest import cuda


def tiny_model(n_experts=2, gate="softmax", seed=0, **kwargs):
    return MixtureOfExperts.linear(1, 1, n_experts, gate=gate, seed=seed, **kwargs)


def test_forward_shapes_and_weights_sum_to_one():
    model = MixtureOfExperts.mlp(2, 3, 4, expert_hidden=5, gate="mlp")
    out = model(torch.randn(7, 2))
    assert out.means.shape == (7, 4, 3) and out.log_gates.shape == (7, 4)
    assert out.mean.shape == (7, 3) and out.log_var.shape == (4, 3)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(7))
    torch.testing.assert_close(out.mean, torch.einsum("ne,neo->no", out.weights, out.means))


def test_both_losses_on_a_hand_computed_case():
    model = tiny_model()
    with torch.no_grad():
        model.experts.weight.zero_()
        model.experts.bias.copy_(torch.tensor([[0.0], [2.0]]))
        model.gate.weight.zero_()
        model.gate.bias.zero_()  # g = (1/2, 1/2)
        model.log_var.copy_(torch.log(torch.tensor([[1.0], [4.0]])))
    x, y = torch.zeros(2, 1), torch.tensor([1.0, 4.0])
    out = model(x)
    assert cooperative_loss(out, y).item() == pytest.approx((0.0**2 + 3.0**2) / 2)  # blend = 1
    def density(t):
        return 0.5 * math.exp(-t**2 / 2) / math.sqrt(2 * math.pi) + 0.5 * math.exp(-(t - 2)**2 / 8) / math.sqrt(8 * math.pi)
    expected = -(math.log(density(1.0)) + math.log(density(4.0))) / 2
    assert competitive_loss(out, y).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_log_density_is_exact_for_one_hot_weights(dtype):
    """A hard gate on an expert far from the target: log p is the Gaussian's, not cut off."""
    means = torch.tensor([[[1.0], [0.0]]], dtype=dtype, requires_grad=True)   # (N=1, E=2, O=1)
    weights = torch.tensor([[1.0, 0.0]], dtype=dtype, requires_grad=True)
    log_var = torch.full((2, 1), math.log(0.05**2), dtype=dtype, requires_grad=True)
    out = mu.moe.Output(means, weights.log(), weights, means[:, 0], log_var, hard=True)
    y = torch.zeros(1, 1, dtype=dtype)
    log_p = -competitive_loss(out, y)  # one sample: its log density
    exact = Normal(torch.tensor(1.0, dtype=torch.float64), 0.05).log_prob(torch.tensor(0.0, dtype=torch.float64))
    assert log_p.item() == pytest.approx(exact.item(), rel=1e-6)   # about -198 nats
    log_p.sum().backward()
    assert means.grad[0, 0, 0].item() == pytest.approx(-1.0 / 0.05**2, rel=1e-5)  # d/dmu = (y - mu) / var
    assert log_var.grad[0, 0].item() == pytest.approx(0.5 * (1.0 / 0.05**2) - 0.5, rel=1e-5)
    assert torch.isfinite(weights.grad).all() and weights.grad[0, 1] > 0    # the other expert is better
    assert weights.grad[0, 0].item() == pytest.approx(1.0)                  # d log(w_0 N_0) / d w_0


def test_one_expert_equals_that_expert_alone():
    model = tiny_model(n_experts=1)
    x, y = torch.randn(20, 1), torch.randn(20)
    out = model(x)
    alone = x @ model.experts.weight[0] + model.experts.bias[0]  # (N, 1)
    torch.testing.assert_close(out.mean, alone)
    sd = model.log_var[0, 0].exp().sqrt()
    torch.testing.assert_close(model.log_prob(x, y), Normal(alone[:, 0], sd).log_prob(y))
    params = [model.experts.weight, model.experts.bias, model.log_var]
    for loss, reference in [
        (competitive_loss(out, y), -Normal(alone[:, 0], sd).log_prob(y).mean()),
        (cooperative_loss(out, y), ((alone[:, 0] - y) ** 2).mean()),
    ]:
        assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        expected = torch.autograd.grad(reference, params, retain_graph=True, allow_unused=True)
        for a, b in zip(grads, expected):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)


def test_low_temperature_is_the_argmax_gate():
    gate = SoftmaxGate(1, 3, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    x = torch.linspace(-2, 2, 50)[:, None]
    hard = torch.nn.functional.one_hot(gate.logits(x).argmax(-1), 3).float()
    torch.testing.assert_close(gate(x).exp(), hard)


@pytest.mark.parametrize("hard", [False, True])
def test_gradients_flow_through_the_gumbel_gate(hard):
    model = tiny_model(3, gate="gumbel", hard=hard, tau=0.5)
    model.train()
    x, y = torch.randn(64, 1), torch.randn(64)
    competitive_loss(model(x), y).backward()
    grad = model.gate.base.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    if hard:
        weights = model(x).weights
        assert set(weights.detach().unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("eval_mode", ["argmax", "softmax"])
def test_gumbel_gate_is_deterministic_in_eval_and_random_in_training(eval_mode):
    model = tiny_model(3, gate="gumbel_mlp", eval_mode=eval_mode)
    x = torch.randn(100, 1)
    model.train()
    assert not torch.equal(model(x).weights, model(x).weights)
    model.eval()
    first, second = model(x).weights, model(x).weights
    torch.testing.assert_close(first, second)
    base = model.gate.base(x).exp()
    expected = base if eval_mode == "softmax" else torch.nn.functional.one_hot(base.argmax(-1), 3).float()
    torch.testing.assert_close(first, expected)


def test_gumbel_max_samples_the_softmax():
    gate = GumbelGate(SoftmaxGate(1, 3), tau=1e-3, hard=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gate.base.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
        gate.base.weight.zero_()
    gate.train()
    _, weights = gate.mix(torch.zeros(20_000, 1))
    torch.testing.assert_close(weights.mean(0), torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0), atol=0.015, rtol=0)


def test_init_from_responsibilities_is_one_m_step():
    split = mu.data.roof().split(600, seed=0)
    x, y = split.x_train[:, None], split.y_train
    resp = mu.em.init_responsibilities(x, y, 3, "kmeans", 0)
    model = mu.moe.init_from_responsibilities(tiny_model(3, gate="mlp"), x, y, resp)
    weight, bias, var = mu.em.m_step_experts(x, y, resp)
    torch.testing.assert_close(model.experts.weight[:, :, 0], weight)
    torch.testing.assert_close(model.log_var[:, 0].exp(), var, rtol=1e-4, atol=1e-7)
    with pytest.raises(TypeError, match="LinearExperts"):
        mu.moe.init_from_responsibilities(MixtureOfExperts.mlp(1, 1, 3), x, y, resp)


@pytest.mark.parametrize("gate, kwargs", [("mlp", {}), ("gumbel", {"hard": True}), ("gumbel_mlp", {})])
def test_to_another_dtype_keeps_working(gate, kwargs):
    model = tiny_model(3, gate=gate, **kwargs).to(torch.float64).train()
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    for loss in (competitive_loss(model(x), y), cooperative_loss(model(x), y)):
        assert loss.dtype == torch.float64
        loss.backward()
    assert all(p.grad.dtype == torch.float64 and torch.isfinite(p.grad).all() for p in model.parameters())


@cuda
@pytest.mark.parametrize("gate", ["softmax", "mlp", "gumbel"])
def test_to_cuda_matches_cpu(gate):
    model = tiny_model(3, gate=gate).eval()
    x, y = torch.randn(50, 1), torch.randn(50)
    cpu = model.log_prob(x, y)
    gpu = model.to("cuda").log_prob(x.cuda(), y.cuda())
    torch.testing.assert_close(cpu, gpu.cpu(), rtol=1e-4, atol=1e-5)
    model.train()  # a training step on the GPU (a Gumbel gate samples its noise there)
    loss = competitive_loss(model(x.cuda()), y.cuda())
    loss.backward()
    assert all(p.grad.is_cuda and torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_helper_early_stopping_restores_the_best_epoch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, generator=gen)
    y = 2 * x[:, 0] + 0.1 * torch.randn(200, generator=gen)
    model = tiny_model(2)
    history = mu.train.fit(model, lambda m, x, y: competitive_loss(m(x), y), x[:150], y[:150], epochs=300,
                           lr=0.05, x_val=x[150:], y_val=y[150:], patience=10, progress=False)
    assert len(history.val_loss) == len(history.loss) <= 300
    with torch.no_grad():
        final = competitive_loss(model(x[150:]), y[150:]).item()
    assert final == pytest.approx(min(history.val_loss), rel=1e-5)
    assert history.val_loss[history.best_epoch] == min(history.val_loss)


def test_training_helper_mini_batches_and_callback():
    x, y = torch.randn(100, 1), torch.randn(100)
    seen = []
    history = mu.train.fit(tiny_model(), lambda m, x, y: cooperative_loss(m(x), y), x, y, epochs=3,
                           batch_size=32, callback=lambda epoch, m: seen.append(epoch), progress=False)
    assert seen == [0, 1, 2] and len(history.loss) == 3


def test_anneal_schedule_endpoints():
    schedule = mu.train.anneal(2.0, 0.1, 11)
    assert schedule(0) == pytest.approx(2.0) and schedule(10) == pytest.approx(0.1)
    assert schedule(5) == pytest.approx(math.sqrt(0.2))


@pytest.mark.parametrize("call, error, words", [
    (lambda: SoftmaxGate(1, 3, temperature=0.0), ValueError, "temperature must be in"),
    (lambda: SoftmaxGate(1, 3, temperature=-1.0), ValueError, "temperature must be in"),
    (lambda: MLPGate(1, 3, temperature=float("nan")), ValueError, "temperature must be finite"),
    (lambda: GumbelGate(SoftmaxGate(1, 3), tau=0.0), ValueError, "tau must be in"),
    (lambda: GumbelGate(SoftmaxGate(1, 3), eval_mode="sample"), ValueError, "unknown eval_mode 'sample'"),
    (lambda: MixtureOfExperts.linear(1, 1, 0), ValueError, "n_experts must be >= 1"),
    (lambda: MixtureOfExperts.linear(1, 1, 2, gate="tree"), ValueError, "unknown gate 'tree'"),
    (lambda: tiny_model()(torch.zeros(4, 2)), ValueError, r"x must have shape \(N, 1\) or \(N,\)"),
    (lambda: tiny_model().log_prob(torch.zeros(4, 1), torch.zeros(3)), ValueError, "y must have shape"),
    (lambda: tiny_model()([0.0, 1.0]), TypeError, "x must be a tensor"),
    (lambda: mu.train.fit(tiny_model(), cooperative_loss, torch.zeros(4, 1), torch.zeros(3)), ValueError,
     "x has 4, y has 3"),
    (lambda: mu.train.fit(tiny_model(), cooperative_loss, torch.zeros(4, 1), torch.zeros(4), patience=3),
     ValueError, "patience needs a validation split"),
    (lambda: mu.train.anneal(0.0, 1.0, 10), ValueError, "start must be in"),
    (lambda: mu.train.fit(tiny_model(), cooperative_loss, torch.tensor([[float("nan")]]), torch.zeros(1)),
     ValueError, "x contains NaN or inf"),
    (lambda: mu.train.fit(tiny_model(), cooperative_loss, torch.zeros(4, 1), torch.zeros(4),
                          x_val=torch.zeros(2, 1), y_val=torch.tensor([0.0, float("inf")])),
     ValueError, "y_val contains NaN or inf"),
    (lambda: mu.train.fit(tiny_model(), cooperative_loss, [[0.0]], torch.zeros(1)), TypeError, "x must be a tensor"),
    (lambda: mu.train.fit(tiny_model(), cooperative_loss, torch.zeros(4, 1), torch.zeros(4), lr=-1.0),
     ValueError, "lr must be in"),
    (lambda: setattr(GumbelGate(SoftmaxGate(1, 3)), "temperature", -5.0), ValueError, "temperature must be in"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
