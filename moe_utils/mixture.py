"""Combining experts: Gaussian mixtures in log space.

A mixture of E Gaussian experts gives, for each sample n,

    p(y_n | x_n) = sum_e g_e(x_n) N(y_n; mu_ne, var_ne)

Gates are passed as log-probabilities ``log_gates`` (N, E) and everything is combined with
``logsumexp``, so nothing underflows even when an expert is 40 standard deviations away.

>>> import torch, moe_utils as mu
>>> log_gates = torch.log(torch.tensor([[0.5, 0.5]]))
>>> means, var = torch.tensor([[0.0, 1.0]]), torch.tensor([0.01, 0.01])
>>> mu.mixture.mean(log_gates, means)
tensor([0.5000])
>>> mu.mixture.responsibilities(log_gates, means, var, torch.tensor([0.9])).round(decimals=3)
tensor([[0., 1.]])
"""

import math

import torch

__all__ = ["gaussian_log_prob", "joint_log_prob", "log_prob", "mean", "responsibilities"]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(y; mean, var), elementwise with broadcasting. ``var`` is a variance, not an sd."""
    var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device)
    return -0.5 * ((y - mean) ** 2 / var + torch.log(var) + _LOG_2PI)


def joint_log_prob(log_gates: torch.Tensor, means: torch.Tensor, var: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """log g_e(x_n) + log N(y_n; mu_ne, var_e): shape (N, E).

    log_gates (N, E), means (N, E), var (E,) or (N, E), y (N,).
    """
    return log_gates + gaussian_log_prob(y[:, None], means, var)


def log_prob(log_gates: torch.Tensor, means: torch.Tensor, var: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
    """log p(y_n | x_n) of the mixture: shape (N,). Same arguments as ``joint_log_prob``."""
    return torch.logsumexp(joint_log_prob(log_gates, means, var, y), dim=-1)


def responsibilities(log_gates: torch.Tensor, means: torch.Tensor, var: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """Posterior P(expert e | x_n, y_n): shape (N, E), rows sum to one."""
    return torch.softmax(joint_log_prob(log_gates, means, var, y), dim=-1)


def mean(log_gates: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Mixture mean sum_e g_e(x_n) mu_ne: shape (N,). log_gates (N, E), means (N, E)."""
    return (log_gates.exp() * means).sum(-1)
