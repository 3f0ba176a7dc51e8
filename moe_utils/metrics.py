"""Test metrics: mean squared error and negative log-likelihood (in nats per sample).

>>> import torch, moe_utils as mu
>>> y = torch.tensor([0.0, 1.0])
>>> mu.scores(y, torch.tensor([0.0, 0.5]), log_prob=torch.tensor([-1.0, -2.0]))
Scores(mse=0.125, nll=1.5)
"""

from typing import NamedTuple

import torch

from . import checks
from .mixture import gaussian_log_prob

__all__ = ["Scores", "point_log_prob", "scores"]


class Scores(NamedTuple):
    """Test MSE of the predicted mean and test NLL of the predicted density (nats/sample)."""

    mse: float
    nll: float

    def rounded(self, digits: int = 4) -> "Scores":
        return Scores(round(self.mse, digits), round(self.nll, digits))


def scores(y: torch.Tensor, mean: torch.Tensor, log_prob: torch.Tensor) -> Scores:
    """MSE of ``mean`` and mean negative ``log_prob``; all three of shape (N,)."""
    y = checks.vector("y", y)
    mean = checks.vector("mean", mean, n=y.shape[0])
    log_prob = checks.vector("log_prob", log_prob, n=y.shape[0])
    return Scores(((y - mean) ** 2).mean().item(), (-log_prob).mean().item())


def point_log_prob(y: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
    """Per-sample log N(y; mean, var) of a point predictor with one noise variance: (N,).

    This is how a point predictor (a line, a tree, an ensemble) gets a test NLL: its
    training residual variance is the variance of its Gaussian predictive density.
    """
    return gaussian_log_prob(y, mean, torch.as_tensor(float(var), dtype=mean.dtype))
