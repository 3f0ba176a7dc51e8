"""Stacked experts: equal to a loop over separate experts, a functional call over posterior
draws, slices of experts, and the Legendre basis."""

import math

import numpy as np
import pytest
import torch

import moe_utils as mu
from problems import F64

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731

FAMILIES = {
    "linear": lambda: mu.experts.Linear(3, 2, 4, generator=GEN()),
    "legendre": lambda: mu.experts.Legendre(3, 3, 2, 4, bounds=(-2.0, 2.0), generator=GEN()),
    "mlp": lambda: mu.experts.MLP(3, 5, 2, 4, generator=GEN()),
    "gated mlp": lambda: mu.experts.MLP(3, 5, 2, 4, gated=True, generator=GEN()),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_equals_a_loop_over_single_experts_in_value_and_gradient(family):
    experts = FAMILIES[family]().double()
    x = torch.randn(7, 3, generator=GEN(1), dtype=F64)
    out = experts(x)
    assert out.shape == (7, 4, 2)
    singles = [experts.select([e]) for e in range(4)]
    torch.testing.assert_close(out, torch.cat([s(x) for s in singles], 1))
    out.square().sum().backward()
    sum(s(x).square().sum() for s in singles).backward()
    for name, p in experts.named_parameters():
        torch.testing.assert_close(p.grad, torch.cat([getattr(s, name).grad for s in singles]))


@pytest.mark.parametrize("family", FAMILIES)
def test_functional_call_over_posterior_draws_and_a_slice_of_experts(family):
    experts = FAMILIES[family]().double()
    x = torch.randn(6, 3, generator=GEN(2), dtype=F64)
    draws = {k: v + 0.1 * torch.randn((5, *v.shape), generator=GEN(3), dtype=F64) for k, v in experts.params().items()}
    out = experts(x, draws)
    assert out.shape == (5, 6, 4, 2)
    for s in range(5):
        torch.testing.assert_close(out[s], experts(x, {k: v[s] for k, v in draws.items()}))
    part = experts.select(slice(1, 3))
    assert part.n_experts == len(part) == 2
    torch.testing.assert_close(part(x), experts(x)[:, 1:3])
    torch.testing.assert_close(experts(x, {k: v[1:3] for k, v in experts.params().items()}), part(x))


def test_mlp_reads_one_input_row_per_expert():
    experts = mu.experts.MLP(2, 4, 3, 5, generator=GEN()).double()
    x = torch.randn(6, 5, 2, generator=GEN(4), dtype=F64)                      # (N, E, D)
    out = experts(x)
    for e in range(5):
        torch.testing.assert_close(out[:, e], experts(x[:, e])[:, e])


def test_linear_families_are_linear_in_their_design():
    for experts in (FAMILIES["linear"](), FAMILIES["legendre"]()):
        experts = experts.double()
        x = torch.randn(6, 3, generator=GEN(5), dtype=F64)
        design = experts.design(x)
        torch.testing.assert_close(experts(x), torch.einsum("nf,efo->neo", design, experts.weight) + experts.bias)
        weight, bias = torch.ones_like(experts.weight), torch.zeros_like(experts.bias)
        experts.load_linear(weight, bias)
        torch.testing.assert_close(experts(x), design.sum(-1)[:, None, None].expand(6, 4, 2))
    assert mu.experts.MLP(3, 5, 2, 4).design(torch.zeros(2, 3)) is None


def test_legendre_basis_is_torch_legendre_and_orthonormal():
    t = torch.linspace(-1, 1, 101, dtype=F64)
    polys = mu.experts.legendre(t, 6, normalised=False)
    for k in range(7):
        torch.testing.assert_close(polys[:, k], torch.special.legendre_polynomial_p(t, k))
    nodes, weights = (torch.tensor(a) for a in np.polynomial.legendre.leggauss(20))
    psi = mu.experts.legendre(nodes, 6)                                          # E[psi_j psi_k] under U(-1, 1)
    torch.testing.assert_close(psi.T @ (psi * weights[:, None] / 2), torch.eye(7, dtype=F64))


def test_legendre_total_order_basis_and_bounds():
    experts = mu.experts.Legendre(2, 3, 1, 1, bounds=([0.0, -4.0], [2.0, 4.0]))
    assert experts.indices.shape == (math.comb(2 + 3, 2) - 1, 2)
    assert set(map(tuple, experts.indices.tolist())) == {(i, j) for i in range(4) for j in range(4) if 1 <= i + j <= 3}
    x = torch.tensor([[0.0, -4.0], [2.0, 4.0], [1.0, 0.0]], dtype=F64)
    z = experts.standardise(x.to(torch.float32))
    torch.testing.assert_close(z, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    feats = experts.design(x.to(torch.float32))
    i = experts.indices.tolist().index([1, 2])
    expected = math.sqrt(3) * z[:, 0] * math.sqrt(5) * (1.5 * z[:, 1] ** 2 - 0.5)
    torch.testing.assert_close(feats[:, i], expected)


@pytest.mark.parametrize("call, error, words", [
    (lambda: mu.experts.Linear(0, 1, 2), ValueError, "n_inputs must be >= 1"),
    (lambda: mu.experts.Linear(2, 1, 0), ValueError, "n_experts must be >= 1"),
    (lambda: mu.experts.Linear(2, 1, 2)(torch.zeros(3, 3)), ValueError, r"x must have shape \(N, 2\)"),
    (lambda: mu.experts.Linear(2, 1, 2)("x"), TypeError, "x must be a tensor"),
    (lambda: mu.experts.Linear(2, 1, 2, scale=[1.0, 0.0]), ValueError, "scale must be positive"),
    (lambda: mu.experts.Linear(2, 1, 2, shift=[1.0, 0.0, 2.0]), ValueError, r"shift must have shape \(2,\)"),
    (lambda: mu.experts.Legendre(1, 0, 1, 2), ValueError, "degree must be >= 1"),
    (lambda: mu.experts.Legendre(1, 2, 1, 2, bounds=(1.0, 1.0)), ValueError, "bounds must have lo < hi"),
    (lambda: mu.experts.MLP(1, 4, 1, 2, activation="sigmoid"), ValueError, "unknown activation 'sigmoid'"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
