"""The closed-form and Newton solvers behind every M-step, batched over experts.

- ``weighted_least_squares``: E weighted linear regressions in one GEMM and one batched solve
  (Gaussian experts that are linear in their parameters: linear, Legendre);
- ``weighted_variance``: each expert's responsibility-weighted residual variance;
- ``softmax_regression``: E weighted softmax regressions by Newton's method (IRLS), batched over
  experts (Categorical experts, stacked as V (E, F+1, C));
- ``newton_softmax``: any router network fitted to soft labels by Gauss-Newton, with the
  derivatives of its logits from autograd (``torch.func.jacrev``, one sample at a time under
  ``vmap``), so no router writes its own.

Every Newton step is kept only if a backtracking line search finds an increase of the objective,
so an M-step built from them never decreases the EM objective (generalised EM).

>>> import torch, moe_utils as mu
>>> x = torch.linspace(-1, 1, 100)[:, None]
>>> y = torch.where(x < 0, 2 * x, -x + 1)                      # (N, 1)
>>> resp = torch.cat([(x < 0).float(), (x >= 0).float()], 1)    # (N, E)
>>> weight, bias = mu.solvers.weighted_least_squares(x, y, resp)
>>> weight[:, 0, 0].round(decimals=3), bias[:, 0].round(decimals=3) + 0.0  # + 0.0 prints -0. as 0.
(tensor([ 2., -1.]), tensor([0., 1.]))
"""

import math

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from . import _checks as checks
from ._scaling import standardiser

__all__ = ["newton_softmax", "softmax_newton_terms", "softmax_regression", "weighted_least_squares",
           "weighted_variance"]


def weighted_least_squares(x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor,
                           ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e minimises sum_n r_ne |y_n - x_n W_e - b_e|^2 (+ ``ridge`` on the standardised slopes).

    x (N, F), y (N, O), resp (N, E) >= 0 -> weight (E, F, O), bias (E, O).

    Solved standardised, so that an offset or a scale of x or y (x + 100, x * 1e4) costs no
    accuracy: every expert's weighted moments about the plain centre come from one GEMM over the
    samples, and the slopes from its weighted correlation matrix. The bias is never penalised.
    Degenerate problems get the minimum-norm solution (a pseudo-inverse that drops directions at
    the rounding level of the dtype): a feature constant where an expert has weight gets slope 0;
    collinear features share the slope; an expert with no weight is fitted to all samples equally.
    """
    n, f, o = checks.same_length(x=x, y=y, resp=resp), x.shape[1], y.shape[1]
    ridge = checks.finite_float("ridge", ridge, 0.0)
    tiny = torch.finfo(x.dtype).tiny
    rounding = 8 * math.sqrt(n + 16) * torch.finfo(x.dtype).eps  # relative error of a sum of N terms
    x_shift, x_scale = standardiser(x)                                        # (F,), (F,)
    y_shift, y_scale = standardiser(y)                                        # (O,), (O,)
    xs, ys = (x - x_shift) / x_scale, (y - y_shift) / y_scale                 # (N, F), (N, O)
    total = resp.sum(0)                                                       # (E,)
    p = torch.where(total > 0, resp / total.clamp_min(tiny), 1.0 / n)       # (N, E), columns sum to 1
    outer = (xs[:, :, None] * xs[:, None, :]).flatten(1)                     # (N, F^2)
    cross = (xs[:, :, None] * ys[:, None, :]).flatten(1)                     # (N, F O)
    moments = p.T @ torch.cat([xs, ys, outer, cross], 1)                      # (E, F + O + F^2 + F O)
    mx, my = moments[:, :f], moments[:, f:f + o]                              # (E, F), (E, O)
    second = moments[:, f + o:f + o + f * f].reshape(-1, f, f)                # (E, F, F)
    cov_xx = second - mx[:, :, None] * mx[:, None, :]                         # (E, F, F)
    cov_xy = moments[:, f + o + f * f:].reshape(-1, f, o) - mx[:, :, None] * my[:, None, :]  # (E, F, O)
    # Centring on an expert's mean cancels digits, the more the further it sits from the plain
    # centre for its spread (``far``). A variance at the rounding level of its second moment is a
    # constant feature; the pseudo-inverse cuts more the larger ``far`` is.
    var, raw = cov_xx.diagonal(dim1=-2, dim2=-1), second.diagonal(dim1=-2, dim2=-1)  # (E, F) each
    live = var > rounding * raw
    far = torch.where(live, raw / var.clamp_min(tiny), torch.ones_like(var))  # (E, F), >= 1
    inv_sd = torch.where(live, var.clamp_min(tiny).rsqrt(), torch.zeros_like(var))  # (E, F)
    corr = cov_xx * inv_sd[:, :, None] * inv_sd[:, None, :] + ridge * torch.diag_embed(live.to(x.dtype))
    rtol = (rounding * f * far.amax(-1)).clamp_max(0.5)                      # (E,)
    slope = torch.linalg.pinv(corr, hermitian=True, rtol=rtol) @ (cov_xy * inv_sd[:, :, None])
    slope = slope * inv_sd[:, :, None]                                        # (E, F, O), standardised
    weight = slope * y_scale / x_scale[:, None]                               # (E, F, O)
    bias = y_shift + y_scale * (my - torch.einsum("ef,efo->eo", mx, slope)) \
        - torch.einsum("f,efo->eo", x_shift, weight)                         # (E, O)
    return weight, bias


def weighted_variance(y: torch.Tensor, means: torch.Tensor, resp: torch.Tensor,
                      floor: float = 0.0) -> torch.Tensor:
    """sum_n r_ne (y_no - mu_neo)^2 / sum_n r_ne, at least ``floor``: the closed-form M-step of a
    Gaussian expert's noise variance. y (N, O), means (N, E, O), resp (N, E) -> (E, O)."""
    tiny = torch.finfo(y.dtype).tiny
    sq = torch.einsum("ne,neo->eo", resp, (y[:, None, :] - means) ** 2)
    return (sq / resp.sum(0).clamp_min(tiny)[:, None]).clamp_min(floor)


def _solve(curv: torch.Tensor, grad: torch.Tensor, l2: float) -> torch.Tensor:
    """(curv + (l2 + a tiny damping) I)^-1 grad in float64, batched: curv (..., P, P), grad (..., P)."""
    curv = curv.double()
    eye = torch.eye(curv.shape[-1], dtype=curv.dtype, device=curv.device)
    damping = l2 + 1e-9 * curv.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30)  # keeps it well posed
    return torch.linalg.solve(curv + damping[..., None, None] * eye, grad.double()).to(grad.dtype)


def softmax_regression(x: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       l2: float = 1e-2, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """E weighted softmax regressions, batched: expert e raises
    sum_n sum_c t_nec log softmax(x_n W_e + b_e)_c - l2/2 (|W_e|^2 + |b_e|^2) by ``steps`` Newton steps.

    x (N, F); targets (N, E, C) soft labels (r_ne one_hot(y_n) in an M-step; rows may sum to any
    weight >= 0); weight (E, F, C), bias (E, C) the start -> new (weight, bias). With V_e = [W_e; b_e]
    (F+1, C) and x~ = (x, 1), the gradient is X~^T (T_e - w_e p_e) - l2 V_e and the Hessian
    -sum_n w_ne (diag p_ne - p_ne p_ne^T) (x) x~_n x~_n^T - l2 I: IRLS, one batched solve for all
    experts. Each expert's step is halved until its objective does not decrease.
    """
    xt = torch.cat([x, torch.ones_like(x[:, :1])], 1)                         # (N, F1)
    v = torch.cat([weight, bias[:, None, :]], 1)                              # (E, F1, C)
    n_experts, f1, c = v.shape
    w = targets.sum(-1)                                                       # (N, E)

    def objective(v):                                                         # (E,)
        logits = torch.einsum("nf,efc->nec", xt, v)
        return (targets * torch.log_softmax(logits, -1)).sum((0, 2)) - 0.5 * l2 * (v**2).sum((1, 2))

    for _ in range(steps):
        before = objective(v)
        p = torch.softmax(torch.einsum("nf,efc->nec", xt, v), -1)            # (N, E, C)
        grad = torch.einsum("nf,nec->efc", xt, targets - w[..., None] * p) - l2 * v
        a = w[..., None, None] * (torch.diag_embed(p) - p[..., :, None] * p[..., None, :])  # (N, E, C, C)
        curv = torch.einsum("nf,ng,necd->efcgd", xt, xt, a).reshape(n_experts, f1 * c, f1 * c)
        step = _solve(curv, grad.reshape(n_experts, -1), l2).reshape(v.shape)
        scale = torch.ones(n_experts, dtype=v.dtype, device=v.device)
        for _ in range(30):  # backtracking, per expert
            worse = objective(v + scale[:, None, None] * step) < before
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        else:  # no step helps an expert: it is at its optimum, to rounding
            scale = torch.where(worse, torch.zeros_like(scale), scale)
        v = v + scale[:, None, None] * step
    return v[:, :-1], v[:, -1]


def softmax_newton_terms(module, x: torch.Tensor, targets: torch.Tensor, l2: float,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(objective, gradient (P,), curvature (P, P)) of
    Q(theta) = sum_n sum_c t_nc log softmax(f(x_n; theta) / T)_c - l2/2 |theta|^2 at the module's
    parameters, in ``parameters_to_vector`` order.

    J = d logits / d theta (N, C, P) comes from reverse-mode autograd, one sample at a time under
    ``vmap``: a sample's C logits need C backward passes through its own small graph, where
    forward mode would push P tangents through every sample. With p = softmax(f / T) and
    w_n = sum_c t_nc: gradient J^T (T - w p) / T - l2 theta; curvature (minus the Gauss-Newton
    Hessian) sum_n w_n J_n^T (diag p_n - p_n p_n^T) J_n / T^2 + l2 I, the exact Hessian for a
    linear-softmax router (Newton, IRLS), positive semi-definite for any router.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    theta = parameters_to_vector(params.values())                             # (P,)

    def logits_of(params, x_n):                                               # (D,) -> (C,)
        return torch.func.functional_call(module, params, (x_n[None],))[0] / temperature

    with torch.no_grad():
        logits = module(x) / temperature                                      # (N, C)
    jac = torch.func.vmap(torch.func.jacrev(logits_of), in_dims=(None, 0))(params, x)
    jac = torch.cat([j.flatten(2) for j in jac.values()], -1)                 # (N, C, P)
    p, w = torch.softmax(logits, -1), targets.sum(-1)
    objective = (targets * torch.log_softmax(logits, -1)).sum() - 0.5 * l2 * (theta**2).sum()
    grad = torch.einsum("nc,ncp->p", targets - w[:, None] * p, jac) - l2 * theta
    pj = torch.einsum("nc,ncp->np", p, jac)                                   # (N, P)
    weighted = (w[:, None] * p)[:, :, None] * jac                             # (N, C, P)
    curv = weighted.flatten(0, 1).T @ jac.flatten(0, 1) - (w[:, None] * pj).T @ pj
    return objective, grad, curv + l2 * torch.eye(len(theta), dtype=curv.dtype, device=curv.device)


def newton_softmax(module, x: torch.Tensor, targets: torch.Tensor, l2: float = 1e-2, steps: int = 3,
                   temperature: float = 1.0) -> None:
    """Raise Q(theta) of ``softmax_newton_terms`` in place by ``steps`` Gauss-Newton steps.

    ``module`` maps x (N, D) to logits (N, C) (any router network); targets (N, C) are soft labels
    (responsibilities, in a router's M-step). Each step is kept only after a backtracking line
    search finds an increase; the loop stops early at the optimum.
    """
    def objective() -> torch.Tensor:
        theta = parameters_to_vector(module.parameters())
        return (targets * torch.log_softmax(module(x) / temperature, -1)).sum() - 0.5 * l2 * (theta**2).sum()

    with torch.no_grad():
        for _ in range(steps):
            before, grad, curv = softmax_newton_terms(module, x, targets, l2, temperature)
            theta = parameters_to_vector(module.parameters())
            step = _solve(curv, grad, 0.0)  # curv holds the prior's l2 I already
            for scale in 0.5 ** torch.arange(30, dtype=theta.dtype):
                vector_to_parameters(theta + scale * step, module.parameters())
                if objective() >= before:
                    break
            else:  # no step helps: at the optimum, to rounding
                vector_to_parameters(theta, module.parameters())
                return
            if grad.abs().max() < 1e-10 * x.shape[0]:
                return
