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
