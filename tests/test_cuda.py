"""CPU and CUDA agree. Skipped cleanly where there is no CUDA device (CI has none)."""

import pytest
import torch

import moe_utils as mu
from conftest import cuda


@cuda
def test_data_on_cuda_equals_cpu():
    cpu = mu.data.roof().split(500, seed=0)
    gpu = mu.data.roof().split(500, seed=0, device="cuda")
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(a, b.cpu())


@cuda
def test_mixture_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    log_gates = torch.log_softmax(torch.randn(100, 3, generator=gen), -1)
    means, var, y = torch.randn(100, 3, generator=gen), torch.rand(3, generator=gen) + 0.1, torch.randn(100, generator=gen)
    cpu = mu.mixture.log_prob(log_gates, mu.mixture.gaussian_log_prob(y[:, None], means, var))
    gpu = mu.mixture.log_prob(log_gates.cuda(), mu.mixture.gaussian_log_prob(y[:, None].cuda(), means.cuda(), var.cuda()))
    torch.testing.assert_close(cpu, gpu.cpu(), rtol=1e-5, atol=1e-5)


@cuda
def test_best_scores_accept_cuda_inputs():
    data = mu.data.sin_sign()
    split = data.split(400, seed=0, device="cuda")
    cpu = data.best(split.x_test.cpu(), split.y_test.cpu(), split.x_train.cpu())
    gpu = data.best(split.x_test, split.y_test, split.x_train)
    assert abs(cpu.mse - gpu.mse) < 1e-6 and abs(cpu.nll - gpu.nll) < 1e-6


@cuda
def test_the_truth_comes_back_on_the_inputs_device():
    data = mu.data.sin_sign()
    split = data.split(400, seed=0, device="cuda")
    x, y, x_train = split.x_test, split.y_test, split.x_train
    for cpu, gpu in [(data.gate(x.cpu(), x_train.cpu()), data.gate(x, x_train)),
                     (data.mean(x.cpu(), x_train.cpu()), data.mean(x, x_train)),
                     (data.log_prob(x.cpu(), y.cpu()), data.log_prob(x, y)),
                     (data.density(x.cpu()), data.density(x))]:
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(cpu, gpu.cpu())


@cuda
def test_mixture_of_linear_experts_on_cuda_matches_cpu():
    split = mu.data.roof().split(1000, seed=0, dtype=torch.float64)
    fits = {}
    for where, (x, y, device) in {"cpu": (split.x_train, split.y_train, None),
                                  "cuda inputs": (split.x_train.cuda(), split.y_train.cuda(), None),
                                  "device='cuda'": (split.x_train, split.y_train, "cuda")}.items():
        fits[where] = mu.MixtureOfLinearExperts(3, n_init=2, seed=0, device=device).fit(x, y)
    cpu = fits.pop("cpu")
    for where, gpu in fits.items():
        fitted = (gpu.weights_, gpu.biases_, gpu.noise_var_, *gpu.model_.parameters(), gpu.predict(split.x_test))
        assert all(t.device.type == "cuda" and t.dtype == torch.float64 for t in fitted), where
        assert gpu.n_iter_ == cpu.n_iter_ and abs(gpu.log_likelihood_ - cpu.log_likelihood_) < 1e-9, where
        # float64 on both: the same EM path, apart from a different summation order
        torch.testing.assert_close((gpu.weights_.cpu(), gpu.biases_.cpu(), gpu.noise_var_.cpu()),
                                   (cpu.weights_, cpu.biases_, cpu.noise_var_), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(gpu.predict(split.x_test).cpu(), cpu.predict(split.x_test), rtol=1e-7, atol=1e-9)


@cuda
@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
@pytest.mark.parametrize("router", ["linear", "mlp", "kernel", "constant"])
def test_model_and_em_on_cuda_match_cpu(likelihood, router):
    from problems import model, problem
    x, y, _ = problem(likelihood, 300)
    cpu = model(likelihood, x, n_experts=3, router=router)
    gpu = model(likelihood, x, n_experts=3, router=router).cuda()
    resp = mu.em.init_responsibilities(x, y.to(torch.float64), 3, "kmeans")
    a = mu.em.fit(cpu, x, y, resp, max_iter=10)
    b = mu.em.fit(gpu, x.cuda(), y.cuda(), resp.cuda(), max_iter=10)
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    assert abs(a.history[-1] - b.history[-1]) < 1e-8
    for loss in (mu.competitive_loss, mu.cooperative_loss):
        ga = torch.autograd.grad(loss(cpu, x, y), list(cpu.parameters()), allow_unused=True)
        gb = torch.autograd.grad(loss(gpu, x.cuda(), y.cuda()), list(gpu.parameters()), allow_unused=True)
        for u, v in zip(ga, gb):
            if u is not None:
                torch.testing.assert_close(u, v.cpu(), rtol=1e-6, atol=1e-8)


@cuda
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_rule_on_cuda(hard):
    logits = torch.randn(50, 3, device="cuda", requires_grad=True)
    rule = mu.routing.Gumbel(hard=hard, generator=torch.Generator().manual_seed(0))
    routing = rule(logits)
    assert routing.weights.device.type == "cuda"
    routing.weights.sum().backward()
