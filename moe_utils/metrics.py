"""Test metrics: MSE and NLL (nats per sample) for regression; accuracy, NLL and calibration
for classification; interval coverage and the CRPS of a predictive sample.

>>> import torch, moe_utils as mu
>>> y = torch.tensor([0.0, 1.0])
>>> mu.scores(y, torch.tensor([0.0, 0.5]), log_prob=torch.tensor([-1.0, -2.0]))
Scores(mse=0.125, nll=1.5)
"""

from typing import NamedTuple

import torch

from . import _checks as checks
from .mixture import gaussian_log_prob

__all__ = ["ClassScores", "Reliability", "Scores", "class_scores", "coverage", "crps", "point_log_prob", "reliability",
           "scores"]


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


class ClassScores(NamedTuple):
    """Test accuracy and mean NLL (nats per sample); best achievable here: 1.0 and 0.0."""

    accuracy: float
    nll: float


def class_scores(log_probs: torch.Tensor, y: torch.Tensor) -> ClassScores:
    """Accuracy of the argmax and mean NLL: log_probs (N, C), y (N,) labels."""
    log_probs = checks.matrix("log_probs", log_probs)
    y = checks.labels("y", y, log_probs.shape[1], n=log_probs.shape[0], device=log_probs.device)
    accuracy = (log_probs.argmax(-1) == y).double().mean().item()
    return ClassScores(accuracy, -log_probs.gather(1, y[:, None]).mean().item())


class Reliability(NamedTuple):
    """A reliability diagram: per bin of confidence, (B,) each, and the expected calibration error.

    Top-label (the default of ``reliability``): the confidence is max_c p(c | x) and the frequency
    is the accuracy of that top class. One-vs-rest (``positive=c``): the confidence is p(c | x)
    and the frequency is the fraction of samples of class c.
    """

    confidence: torch.Tensor  # mean confidence in the bin (NaN if empty)
    frequency: torch.Tensor   # fraction of the bin's samples the confidence is about that are right (NaN if empty)
    count: torch.Tensor       # samples in the bin
    ece: float                # sum_b (count_b / N) |frequency_b - confidence_b|


def reliability(probs, y, n_bins: int = 15, positive: int | None = None) -> Reliability:
    """The top-label reliability diagram and expected calibration error (ECE) of Guo et al. (2017).

    probs (N, C) holds p(c | x) (rows sum to one), for any number of classes C; a vector (N,) is
    read as p(y = 1 | x) of a binary classifier. y (N,) labels. Each sample's confidence
    max_c p(c | x) falls in one of ``n_bins`` equal bins of [0, 1] (15, as Guo et al.); per bin
    the mean confidence, the accuracy of the top class and the count, and
    ECE = sum_b (N_b / N) |accuracy_b - confidence_b|. A binary classifier's confidences lie in
    [1/2, 1]. ``positive=c`` gives the one-vs-rest diagram of class c instead (``positive=1``:
    the classic binary diagram of p(y = 1 | x) against the fraction of class 1), whose ECE is a
    different number.

    >>> import torch, moe_utils as mu
    >>> rel = mu.metrics.reliability(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]), n_bins=2)
    >>> rel.count.tolist(), rel.frequency.tolist(), round(rel.ece, 3)
    ([0, 2], [nan, 0.5], 0.3)
    """
    probs = _class_probs(probs)
    y = checks.labels("y", y.detach().cpu() if torch.is_tensor(y) else y, probs.shape[1], n=len(probs))
    n_bins = checks.positive_int("n_bins", n_bins)
    if positive is None:
        confidence, top = probs.max(1)
        hit = (top == y).double()
    else:
        if isinstance(positive, bool) or not isinstance(positive, int) or not 0 <= positive < probs.shape[1]:
            raise ValueError(f"positive must be a class in {{0, ..., {probs.shape[1] - 1}}} or None, got {positive!r}")
        confidence, hit = probs[:, positive], (y == positive).double()
    idx = (confidence * n_bins).long().clamp_max(n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    mean_confidence = torch.bincount(idx, confidence, minlength=n_bins) / count
    frequency = torch.bincount(idx, hit, minlength=n_bins) / count
    ece = (count / len(probs) * (frequency - mean_confidence).abs()).nansum().item()
    return Reliability(mean_confidence, frequency, count.long(), ece)


def _class_probs(probs) -> torch.Tensor:
    """probs as (N, C) float64 on the CPU, C >= 2, checked; a vector (N,) is p(y = 1), read as (N, 2)."""
    probs = checks.tensor("probs", probs.detach().cpu() if torch.is_tensor(probs) else probs, dtype=torch.float64)
    if probs.ndim == 1:
        probs = torch.stack([1.0 - probs, probs], 1)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, C) with C >= 2 classes, or (N,), got {tuple(probs.shape)}")
    if ((probs < -1e-6) | (probs > 1 + 1e-6)).any():
        raise ValueError("probs must hold probabilities in [0, 1]")
    if ((probs.sum(1) - 1).abs() > 1e-4).any():
        raise ValueError("each row of probs must sum to one: probs holds p(c | x) over the C classes")
    return probs.clamp(0.0, 1.0)  # float32 rounding


def coverage(y, lo, hi) -> float:
    """The fraction of targets y (N,) inside their intervals [lo, hi] (N,) each: for a central
    80% predictive band, 0.8 if the band is calibrated."""
    y = checks.vector("y", y)
    lo = checks.vector("lo", lo, n=y.shape[0])
    hi = checks.vector("hi", hi, n=y.shape[0])
    if (lo > hi).any():
        raise ValueError("every interval must have lo <= hi")
    return ((y >= lo) & (y <= hi)).double().mean().item()


def crps(samples, y) -> torch.Tensor:
    """The continuous ranked probability score of a predictive sample (S, N) at targets y (N,):
    E|X - y| - E|X - X'| / 2 under the sample's empirical distribution (Gneiting and Raftery,
    2007), per target (N,). A proper score in y's units, lower is better; |x - y| for a point.

    >>> import torch, moe_utils as mu
    >>> mu.metrics.crps(torch.tensor([[0.0], [2.0]]), torch.tensor([0.0]))
    tensor([0.5000])
    """
    samples = checks.tensor("samples", samples)
    y = checks.vector("y", y)
    if samples.ndim != 2 or samples.shape[1] != y.shape[0]:
        raise ValueError(f"samples must have shape (S, {y.shape[0]}) (draws by targets), got {tuple(samples.shape)}")
    s = samples.shape[0]
    to_y = (samples - y).abs().mean(0)
    ranks = 2 * torch.arange(1, s + 1, dtype=samples.dtype, device=samples.device) - s - 1   # E|X - X'| from
    spread = 2 * (ranks[:, None] * samples.sort(0).values).sum(0) / s**2                     # the sorted sample
    return to_y - spread / 2
