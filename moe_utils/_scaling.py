"""Input scaling shared by routers and experts (a private leaf module).

Every module that reads x holds a fixed ``shift`` and ``scale`` (buffers, (D,) each) and works
on z = (x - shift) / scale, so that its weights, and a prior on them, mean the same for any
units of x. The default is no scaling (shift 0, scale 1); ``standardiser(x)`` gives the data's
mean and standard deviation, and a Legendre expert maps its bounds onto [-1, 1].
"""

import torch
from torch import nn

from . import _checks as checks

__all__ = ["Scaled", "standardiser"]


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) of x (N, D): its mean and standard deviation per feature, each (D,).

    A feature with no spread (or a single sample) gets scale 1.
    """
    scale = x.std(0) if x.shape[0] > 1 else torch.ones_like(x[0])
    return x.mean(0), torch.where(scale > 0, scale, torch.ones_like(scale))


class Scaled(nn.Module):
    """Base of every module that reads inputs x (..., D): fixed ``shift`` and ``scale`` buffers (D,),
    in torch's default dtype until the module is moved (``.double()``, ``.to(x)``)."""

    def __init__(self, n_inputs: int, shift=None, scale=None):
        super().__init__()
        self.n_inputs = checks.positive_int("n_inputs", n_inputs)
        self.register_buffer("shift", self._buffer("shift", shift, 0.0))
        self.register_buffer("scale", self._buffer("scale", scale, 1.0))
        if (self.scale <= 0).any():
            raise ValueError("scale must be positive for every input feature")

    def _buffer(self, name: str, value, default: float) -> torch.Tensor:
        if value is None:
            return torch.full((self.n_inputs,), default)
        t = checks.tensor(name, value, dtype=torch.get_default_dtype()).detach().clone().reshape(-1)
        if t.numel() == 1:
            t = t.expand(self.n_inputs).clone()
        if t.shape != (self.n_inputs,):
            raise ValueError(f"{name} must have shape ({self.n_inputs},) (one per input), got {tuple(t.shape)}")
        return t

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """z = (x - shift) / scale for x (..., D); raises if the last axis is not D."""
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[-1] != self.n_inputs:
            raise ValueError(f"x must have shape (N, {self.n_inputs}), got {tuple(x.shape)}")
        return (x - self.shift) / self.scale
