"""Experts stored stacked: one parameter tensor per layer with a leading expert axis E.

Two kinds of experts, for the two ways the course fits them:

- closed form (EM, chapter 2): ``fit_linear`` solves E weighted least-squares problems in one
  batched call, and ``noise_variance`` gives each expert's weighted residual variance;
- gradient training (chapter 3 on): ``LinearExperts`` and ``MLPExperts`` are ``nn.Module`` s
  whose forward maps x (N, D) to every expert's output (N, E, O) with one ``einsum``.

>>> import torch, moe_utils as mu
>>> x = torch.linspace(-1, 1, 100)[:, None]
>>> y = torch.where(x[:, 0] < 0, 2 * x[:, 0], -x[:, 0] + 1)
>>> resp = torch.stack([(x[:, 0] < 0).float(), (x[:, 0] >= 0).float()], dim=1)
>>> weight, bias = mu.experts.fit_linear(x, y, resp)
>>> weight.round(decimals=3), bias.round(decimals=3) + 0.0  # + 0.0 prints -0. as 0.
(tensor([[ 2.],
        [-1.]]), tensor([0., 1.]))
"""

import math

import torch
from torch import nn

from . import checks
from .gates import standardiser

__all__ = ["LinearExperts", "MLPExperts", "fit_linear", "linear_means", "noise_variance"]


def fit_linear(x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor,
               ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares for E linear experts at once, batched over experts.

    Expert e minimises sum_n resp[n, e] (y_n - w_e . x_n - b_e)^2 (+ ``ridge`` |slopes|^2 of the
    standardised problem, see below). x (N, D), y (N,), resp (N, E) >= 0 -> weight (E, D), bias (E,).

    The problem is solved standardised, so that an offset or a scale of x or y (x + 100, x * 1e4)
    costs no accuracy: x and y are centred and scaled by their plain mean and standard deviation,
    each expert's features by their weighted mean and standard deviation, and the slopes come
    from the expert's weighted correlation matrix (by one GEMM over the samples for all experts).
    The bias is never penalised. Degenerate problems get the minimum-norm solution (a pseudo-inverse
    that drops directions at the rounding level of the dtype) instead of an error:

    - a feature that is constant (to rounding) where an expert has weight gets slope 0;
    - collinear features, or fewer points than features, share the slope (minimum norm);
    - an expert with no weight at all (``resp[:, e] == 0``) is fitted to all samples equally.

    ``ridge`` (>= 0; default 0, exact weighted least squares) is relative to the standardised
    problem, in which every feature has unit weighted variance for every expert.
    """
    n, d = checks.same_length(x=x, y=y, resp=resp), x.shape[1]
    ridge = checks.finite_float("ridge", ridge, 0.0)
    tiny = torch.finfo(x.dtype).tiny
    rounding = 8 * math.sqrt(n + 16) * torch.finfo(x.dtype).eps  # relative error of a sum of N terms
    x_shift, x_scale = standardiser(x)                                        # (D,), (D,)
    y_shift, y_scale = standardiser(y[:, None])                               # (1,), (1,)
    xs, ys = (x - x_shift) / x_scale, (y - y_shift) / y_scale                 # (N, D), (N,)
    total = resp.sum(0)                                                       # (E,)
    p = torch.where(total > 0, resp / total.clamp_min(tiny), 1.0 / n)       # (N, E), columns sum to 1
    # every expert's weighted means of x, y, x x^T and x y, about the plain centre, in one GEMM
    outer = (xs[:, :, None] * xs[:, None, :]).flatten(1)                     # (N, D^2)
    moments = p.T @ torch.cat([xs, ys[:, None], outer, xs * ys[:, None]], 1)  # (E, D + 1 + D^2 + D)
    mx, my = moments[:, :d], moments[:, d]                                    # (E, D), (E,)
    second = moments[:, d + 1:d + 1 + d * d].reshape(-1, d, d)                # (E, D, D)
    cov_xx = second - mx[:, :, None] * mx[:, None, :]                         # (E, D, D)
    cov_xy = moments[:, d + 1 + d * d:] - mx * my[:, None]                    # (E, D)
    # centring on an expert's mean cancels digits, the more the further it sits from the plain centre
    # for its spread (``far``: second moment / variance). A variance at the rounding level of its
    # second moment is a constant feature; the pseudo-inverse cuts more the larger ``far`` is.
    var, raw = cov_xx.diagonal(dim1=-2, dim2=-1), second.diagonal(dim1=-2, dim2=-1)  # (E, D) each
    live = var > rounding * raw                                               # else: constant for e
    far = torch.where(live, raw / var.clamp_min(tiny), torch.ones_like(var))  # (E, D), >= 1
    inv_sd = torch.where(live, var.clamp_min(tiny).rsqrt(), torch.zeros_like(var))  # (E, D)
    corr = cov_xx * inv_sd[:, :, None] * inv_sd[:, None, :] + ridge * torch.diag_embed(live.to(x.dtype))
    rtol = (rounding * d * far.amax(-1)).clamp_max(0.5)                      # (E,)
    slope = (torch.linalg.pinv(corr, hermitian=True, rtol=rtol) @ (cov_xy * inv_sd)[:, :, None])[:, :, 0]
    slope = slope * inv_sd                                                    # (E, D), standardised units
    weight = slope * y_scale / x_scale                                        # (E, D)
    bias = y_shift + y_scale * (my - (slope * mx).sum(-1)) - weight @ x_shift  # (E,)
    return weight, bias


def linear_means(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Every linear expert's prediction: x (N, D), weight (E, D), bias (E,) -> (N, E)."""
    return x @ weight.T + bias


def noise_variance(y: torch.Tensor, means: torch.Tensor, resp: torch.Tensor,
                   min_var: float = 0.0) -> torch.Tensor:
    """Each expert's responsibility-weighted residual variance, at least ``min_var``.

    y (N,), means (N, E), resp (N, E) -> (E,). This is the closed-form M-step for the
    noise variance: sum_n r_ne (y_n - mu_ne)^2 / sum_n r_ne.
    """
    tiny = torch.finfo(y.dtype).tiny
    var = (resp * (y[:, None] - means) ** 2).sum(0) / resp.sum(0).clamp_min(tiny)
    return var.clamp_min(min_var)


class LinearExperts(nn.Module):
    """E linear experts, stacked: weight (E, D, O), bias (E, O). Forward: x (N, D) -> (N, E, O)."""

    def __init__(self, n_inputs: int, n_outputs: int, n_experts: int, generator=None):
        super().__init__()
        bound = 1 / math.sqrt(n_inputs)
        self.weight = nn.Parameter(_uniform((n_experts, n_inputs, n_outputs), bound, generator))
        self.bias = nn.Parameter(_uniform((n_experts, n_outputs), bound, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,edo->neo", x, self.weight) + self.bias


class MLPExperts(nn.Module):
    """E one-hidden-layer tanh networks, stacked. Forward: x (N, D) -> (N, E, O).

    w1 (E, D, H), b1 (E, H), w2 (E, H, O), b2 (E, O).
    """

    def __init__(self, n_inputs: int, n_hidden: int, n_outputs: int, n_experts: int, generator=None):
        super().__init__()
        b1, b2 = 1 / math.sqrt(n_inputs), 1 / math.sqrt(n_hidden)
        self.w1 = nn.Parameter(_uniform((n_experts, n_inputs, n_hidden), b1, generator))
        self.b1 = nn.Parameter(_uniform((n_experts, n_hidden), b1, generator))
        self.w2 = nn.Parameter(_uniform((n_experts, n_hidden, n_outputs), b2, generator))
        self.b2 = nn.Parameter(_uniform((n_experts, n_outputs), b2, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(torch.einsum("nd,edh->neh", x, self.w1) + self.b1)   # (N, E, H)
        return torch.einsum("neh,eho->neo", hidden, self.w2) + self.b2


def _uniform(shape, bound: float, generator) -> torch.Tensor:
    """U(-bound, bound) initial values (PyTorch's nn.Linear default), from ``generator``."""
    return (2 * torch.rand(shape, generator=generator) - 1) * bound
