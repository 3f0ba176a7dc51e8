"""CPU and CUDA agree. Skipped cleanly where there is no CUDA device (CI has none)."""

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
    cpu = mu.mixture.log_prob(log_gates, means, var, y)
    gpu = mu.mixture.log_prob(log_gates.cuda(), means.cuda(), var.cuda(), y.cuda())
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
        fitted = (gpu.weights_, gpu.biases_, gpu.noise_var_, *gpu.gate_.parameters(), gpu.predict(split.x_test))
        assert all(t.device.type == "cuda" and t.dtype == torch.float64 for t in fitted), where
        assert gpu.n_iter_ == cpu.n_iter_ and abs(gpu.log_likelihood_ - cpu.log_likelihood_) < 1e-9, where
        # float64 on both: the same EM path, apart from a different summation order
        torch.testing.assert_close((gpu.weights_.cpu(), gpu.biases_.cpu(), gpu.noise_var_.cpu()),
                                   (cpu.weights_, cpu.biases_, cpu.noise_var_), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(gpu.predict(split.x_test).cpu(), cpu.predict(split.x_test), rtol=1e-7, atol=1e-9)
