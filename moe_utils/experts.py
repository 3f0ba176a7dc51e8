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
>>> weight.round(decimals=3), bias.round(decimals=3)
(tensor([[ 2.],
        [-1.]]), tensor([0., 1.]))
"""

import math

import torch
from torch import nn

__all__ = ["LinearExperts", "MLPExperts", "fit_linear", "linear_means", "noise_variance"]


def fit_linear(x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor,
               ridge: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares for E linear experts at once.

    Expert e minimises sum_n resp[n, e] (y_n - w_e . x_n - b_e)^2 (+ ridge |w_e, b_e|^2, a tiny
    default that only matters when an expert has (almost) no samples).
    x (N, D), y (N,), resp (N, E) -> weight (E, D), bias (E,).
    """
    n, f = x.shape[0], x.shape[1] + 1
    design = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)               # (N, D+1)
    outer = (design[:, :, None] * design[:, None, :]).reshape(n, f * f)     # (N, (D+1)^2)
    gram = (resp.T @ outer).reshape(-1, f, f)                               # (E, D+1, D+1), one GEMM
    rhs = resp.T @ (design * y[:, None])                                    # (E, D+1)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1.0)        # (E,)
    eye = torch.eye(f, dtype=x.dtype, device=x.device)
    coef = torch.linalg.solve(gram + ridge * scale[:, None, None] * eye, rhs)  # (E, D+1)
    return coef[:, :-1], coef[:, -1]


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
