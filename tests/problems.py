"""Small known mixtures shared by the tests: one per likelihood head, so that each idea of the EM
skeleton is tested once, parametrised over Gaussian and Categorical experts."""

import itertools

import torch

import moe_utils as mu

F64 = torch.float64
LIKELIHOODS = ["gaussian", "categorical"]
ROUTERS = ["constant", "linear", "mlp", "kernel"]


def gaussian_mixture(n=1500, seed=0, dtype=F64):
    """A known 2-input mixture of 2 linear Gaussian experts with a linear-softmax gate."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=F64) * 4 - 2
    truth = {"gate_w": torch.tensor([[3.0, 1.0], [-3.0, -1.0]], dtype=F64), "gate_b": torch.tensor([0.5, -0.5], dtype=F64),
             "w": torch.tensor([[1.0, -2.0], [-1.5, 0.5]], dtype=F64), "b": torch.tensor([1.0, -1.0], dtype=F64),
             "sd": torch.tensor([0.1, 0.2], dtype=F64)}
    z = torch.multinomial(true_gate(x, truth), 1, generator=gen)[:, 0]
    y = (x * truth["w"][z]).sum(-1) + truth["b"][z] + truth["sd"][z] * torch.randn(n, generator=gen, dtype=F64)
    return x.to(dtype), y.to(dtype), truth


def logistic_mixture(n=1500, seed=0, dtype=F64):
    """A known mixture of 2 logistic experts with a linear-softmax gate, x in [-3, 3]^2."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=F64) * 6 - 3
    truth = {"gate_w": torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=F64), "gate_b": torch.zeros(2, dtype=F64),
             "w": torch.tensor([[1.0, 4.0], [-2.0, -3.0]], dtype=F64), "b": torch.tensor([1.0, -0.5], dtype=F64)}
    z = torch.multinomial(true_gate(x, truth), 1, generator=gen)[:, 0]
    y = torch.bernoulli(torch.sigmoid(x @ truth["w"].T + truth["b"])[torch.arange(n), z], generator=gen).long()
    return x.to(dtype), y, truth


def true_gate(x, truth):
    return torch.softmax(x @ truth["gate_w"].T + truth["gate_b"], -1)


def problem(likelihood, n=1500, seed=0, dtype=F64):
    """(x, y, truth) of the known mixture for a likelihood head."""
    return (gaussian_mixture if likelihood == "gaussian" else logistic_mixture)(n, seed, dtype)


def model(likelihood, x, n_experts=2, router="linear", seed=0):
    """A MixtureOfExperts with linear experts for a likelihood head, standardised on x; Gaussian
    noise variances at least 1e-4 (the data's smallest is 0.01)."""
    n_outputs = 1 if likelihood == "gaussian" else 2
    m = mu.MixtureOfExperts.linear(x.shape[1], n_outputs, n_experts, router=router, likelihood=likelihood,
                                   x=x, seed=seed).to(x.dtype)
    if likelihood == "gaussian":
        m.likelihood.min_var = 1e-4  # without a floor the likelihood is unbounded (an expert on 3 points)
    return m


def estimator(likelihood, n_experts=2, **kwargs):
    if likelihood == "gaussian":
        return mu.MixtureOfLinearExperts(n_experts, **kwargs)
    return mu.MixtureOfLogisticExperts(n_experts, **kwargs)


def best_order(fitted, true):
    """The permutation of the expert axis of ``fitted`` (E, ...) closest to ``true`` (E, ...)."""
    perms = list(itertools.permutations(range(len(true))))
    return list(min(perms, key=lambda p: (fitted[list(p)] - true).abs().sum().item()))
