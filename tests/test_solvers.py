"""The solvers behind every M-step: weighted least squares, IRLS, and Gauss-Newton for routers."""

import pytest
import torch

import moe_utils as mu
from moe_utils import solvers
from problems import F64, ROUTERS, gaussian_mixture, logistic_mixture

# x shifted or scaled far from unit scale: the fit must not care
MOVES = {"as is": lambda x: x, "x + 100": lambda x: x + 100, "x * 1e4": lambda x: x * 1e4}
TOL = {F64: 1e-9, torch.float32: 1e-4}  # against a float64 SVD on the same (rounded) data


def reference_wls(x, y, weight):
    """(slopes (F, O), bias (O,)) of one weighted least-squares fit, in float64 by SVD."""
    sw = weight.double().sqrt()[:, None]
    design = torch.cat([x.double(), torch.ones(len(x), 1, dtype=F64)], 1) * sw
    coef = torch.linalg.lstsq(design, y.double() * sw, driver="gelsd").solution
    return coef[:-1], coef[-1]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("move", MOVES)
def test_weighted_least_squares_for_every_expert_and_output(move, dtype):
    x, y1, _ = gaussian_mixture(300)
    y = torch.stack([y1, 2 * y1 - x[:, 0]], 1)                                   # O = 2
    x, y = MOVES[move](x).to(dtype), y.to(dtype)
    resp = torch.rand(300, 3, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
    weight, bias = solvers.weighted_least_squares(x, y, resp)
    assert weight.shape == (3, 2, 2) and bias.shape == (3, 2) and weight.dtype == dtype
    tol, scale = TOL[dtype], y.abs().max().item()
    for e in range(3):
        slope, icpt = reference_wls(x, y, resp[:, e])
        torch.testing.assert_close(weight[e].double(), slope, rtol=tol, atol=tol * slope.abs().max().item())
        torch.testing.assert_close(x.double() @ weight[e].double() + bias[e].double(), x.double() @ slope + icpt,
                                   rtol=0, atol=tol * scale)


def test_ridge_shrinks_the_slopes_only_and_degenerate_experts_get_finite_fits():
    x, y, _ = gaussian_mixture(300)
    y, resp = y[:, None], torch.ones(300, 1, dtype=F64)
    weight, bias = solvers.weighted_least_squares(x + 100, y, resp, ridge=1e6)  # slopes ~ 0: bias = mean
    assert weight.abs().max() < 1e-4
    torch.testing.assert_close(bias[0], y.mean(0) - weight[0].T @ (x + 100).mean(0))
    resp = torch.zeros(300, 3, dtype=F64)
    resp[:2, 0] = 1.0                       # two points for three parameters: the minimum-norm fit
    resp[:, 1] = (x[:, 0] > 0).double()
    weight, bias = solvers.weighted_least_squares(torch.cat([x, x[:, :1]], 1), y, resp)  # collinear features
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()  # expert 2 has no weight: all samples


def test_weighted_variance_by_hand():
    y = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    means = torch.zeros(3, 2, 1, dtype=F64)
    resp = torch.tensor([[1.0, 0.0], [1.0, 0.5], [0.0, 0.5]], dtype=F64)
    torch.testing.assert_close(solvers.weighted_variance(y, means, resp, floor=0.1),
                               torch.tensor([[0.5], [5.0]], dtype=F64))


def softmax_objective(x, targets, v, l2):
    """sum_n sum_c t_nc log softmax(x~ V)_c - l2/2 |V|^2 for one expert: x (N, F), V (F + 1, C)."""
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return (targets * torch.log_softmax(xt @ v, -1)).sum() - 0.5 * l2 * (v**2).sum()


def test_one_irls_step_is_newtons_step_for_every_expert():
    x, y, _ = logistic_mixture(300)
    l2, gen = 5.0, torch.Generator().manual_seed(1)
    resp = torch.softmax(torch.randn(300, 2, generator=gen, dtype=F64), -1)
    targets = resp[:, :, None] * torch.nn.functional.one_hot(y, 2).to(F64)[:, None, :]  # (N, E, C)
    weight, bias = 0.1 * torch.randn(2, 2, 2, generator=gen, dtype=F64), torch.zeros(2, 2, dtype=F64)
    new_w, new_b = solvers.softmax_regression(x, targets, weight, bias, l2, steps=1)
    for e in range(2):
        v = torch.cat([weight[e], bias[e][None]]).requires_grad_()
        f = lambda v: softmax_objective(x, targets[:, e], v.reshape(3, 2), l2)  # noqa: E731
        grad = torch.autograd.grad(f(v), v)[0].flatten()
        hess = torch.autograd.functional.hessian(f, v.detach()).reshape(6, 6)
        expected = v.detach().flatten() - torch.linalg.solve(hess, grad)
        torch.testing.assert_close(torch.cat([new_w[e], new_b[e][None]]).flatten(), expected, atol=1e-8, rtol=1e-7)
    converged = solvers.softmax_regression(x, targets, weight, bias, l2, steps=20)
    for e in range(2):
        v = torch.cat([converged[0][e], converged[1][e][None]]).requires_grad_()
        grad = torch.autograd.grad(softmax_objective(x, targets[:, e], v, l2), v)[0]
        assert grad.abs().max() < 1e-8


def router(name, seed=0):
    r = mu.routing.make(name, 2, 3, generator=torch.Generator().manual_seed(seed), l2=0.3).double()
    with torch.no_grad():  # away from a symmetric start, so that every derivative matters
        for p in r.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64))
    return r


def unflatten(module, theta):
    """A flat parameter vector (P,) as {name: tensor} in ``named_parameters`` order."""
    sizes = [p.numel() for p in module.parameters()]
    return {name: t.view_as(p) for (name, p), t in zip(module.named_parameters(), theta.split(sizes))}


def router_objective(r, x, targets, l2, temperature):
    theta = torch.nn.utils.parameters_to_vector(r.parameters())
    return (targets * torch.log_softmax(r(x) / temperature, -1)).sum() - 0.5 * l2 * (theta**2).sum()


@pytest.mark.parametrize("name", ROUTERS)
def test_router_newton_terms_are_the_autograd_derivatives(name):
    x, _, _ = gaussian_mixture(80)
    targets = torch.softmax(torch.randn(80, 3, generator=torch.Generator().manual_seed(2), dtype=F64), -1)
    r, temperature = router(name), 0.7
    objective, grad, curv = solvers.softmax_newton_terms(r, x, targets, 0.3, temperature)
    expected = router_objective(r, x, targets, 0.3, temperature)
    auto = torch.autograd.grad(expected, list(r.parameters()))
    torch.testing.assert_close(objective, expected.detach())
    torch.testing.assert_close(grad, torch.cat([g.flatten() for g in auto]))
    # the curvature: the Gauss-Newton matrix J^T (diag p - p p^T) J / T^2 + l2 I, with J from an
    # independent reverse-mode Jacobian; for a linear router it is minus the exact Hessian (IRLS)
    theta = torch.nn.utils.parameters_to_vector(r.parameters()).detach()
    logits = lambda th: torch.func.functional_call(r, unflatten(r, th), (x,)) / temperature  # noqa: E731
    jac = torch.autograd.functional.jacobian(logits, theta)                      # (N, C, P)
    p = torch.softmax(logits(theta), -1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    gauss_newton = torch.einsum("ncp,ncd,ndq->pq", jac, a, jac) + 0.3 * torch.eye(len(theta), dtype=F64)
    torch.testing.assert_close(curv, gauss_newton)
    if name == "linear":
        f = lambda th: router_objective_at(r, th, x, targets, temperature)  # noqa: E731
        torch.testing.assert_close(curv, -torch.autograd.functional.hessian(f, theta))


def router_objective_at(r, theta, x, targets, temperature):
    logits = torch.func.functional_call(r, unflatten(r, theta), (x,)) / temperature
    return (targets * torch.log_softmax(logits, -1)).sum() - 0.15 * (theta**2).sum()


@pytest.mark.parametrize("name", ROUTERS)
def test_router_m_step_never_makes_its_objective_worse(name):
    x, _, _ = gaussian_mixture(200)
    targets = torch.softmax(3 * torch.randn(200, 3, generator=torch.Generator().manual_seed(3), dtype=F64), -1)
    r = router(name)
    prior = lambda: r.log_prior().item()  # noqa: E731
    before = (targets * torch.log_softmax(r(x), -1)).sum().item() + prior()
    r.m_step(x, targets, steps=5)
    after = (targets * torch.log_softmax(r(x), -1)).sum().item() + prior()
    if name == "kernel":  # its closed form maximises the joint sum r [log a + log N(x)] instead
        return
    assert after >= before


@pytest.mark.parametrize("temperature", [1.0, 0.4])
def test_linear_router_irls_reaches_the_gauss_newton_optimum(temperature):
    # Linear.m_step solves its softmax regression by IRLS; the generic Gauss-Newton step of any
    # router network (autograd Jacobian) is the same Newton step for it, so both reach one optimum
    x, _, _ = gaussian_mixture(200)
    targets = torch.softmax(3 * torch.randn(200, 3, generator=torch.Generator().manual_seed(3), dtype=F64), -1)
    irls, gauss_newton = router("linear"), router("linear")
    irls.m_step(x, targets, temperature=temperature, steps=1)
    solvers.newton_softmax(gauss_newton, x, targets, gauss_newton.l2, steps=1, temperature=temperature)
    for a, b in zip(irls.parameters(), gauss_newton.parameters()):
        torch.testing.assert_close(a, b)  # one step: the same Newton step
    irls.m_step(x, targets, temperature=temperature, steps=30)
    objective, grad, _ = solvers.softmax_newton_terms(irls, x, targets, irls.l2, temperature)
    assert grad.abs().max() < 1e-8


def test_constant_router_m_step_is_the_dirichlet_map():
    resp = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]], dtype=F64)
    r = mu.routing.Constant(1, 2, alpha=3.0).double()
    r.m_step(torch.zeros(3, 1, dtype=F64), resp)
    counts = resp.sum(0) + 2.0
    torch.testing.assert_close(torch.softmax(r.logit, -1), counts / counts.sum())


def test_kernel_router_m_step_is_the_weighted_gaussian_fit():
    x, _, _ = gaussian_mixture(300)
    resp = torch.softmax(torch.randn(300, 3, generator=torch.Generator().manual_seed(4), dtype=F64), -1)
    r = mu.routing.Kernel(2, 3).double()
    r.m_step(x, resp)
    w = resp / resp.sum(0)
    mean = w.T @ x
    torch.testing.assert_close(r.mean.detach() * r.scale + r.shift, mean)
    torch.testing.assert_close((2 * r.log_scale).exp().detach() * r.scale**2, w.T @ x**2 - mean**2)
    torch.testing.assert_close(torch.softmax(r.log_weight, -1), resp.mean(0))
    # softmax of its logits is the posterior over the components of that Gaussian mixture of x
    comps = torch.distributions.Independent(torch.distributions.Normal(mean, (w.T @ x**2 - mean**2).sqrt()), 1)
    joint = comps.log_prob(x[:, None, :]) + resp.mean(0).log()
    torch.testing.assert_close(torch.log_softmax(r(x), -1), torch.log_softmax(joint, -1))
    torch.testing.assert_close(r.input_log_prob(x), torch.logsumexp(joint, -1))
