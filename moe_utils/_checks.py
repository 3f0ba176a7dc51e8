"""Input validation (a private leaf module): clear errors that name the argument.

Every public function of ``moe_utils`` checks its inputs with these helpers, so that bad
input fails at the call with a message such as ``x must have shape (N,) or (N, D), got
(3, 2, 1)`` instead of deep inside an einsum.
"""

import math
from collections.abc import Iterable

import numpy as np
import torch

__all__ = [
    "choice",
    "finite_float",
    "float_dtype",
    "inputs",
    "labels",
    "matrix",
    "positive_int",
    "same_length",
    "seed",
    "tensor",
    "vector",
]


def tensor(name: str, value, dtype=None, device=None) -> torch.Tensor:
    """``value`` (tensor, array or sequence of numbers) as a tensor; NaN/inf raise.

    Floating dtype follows the input (float32 and float64 stay as they are); integers and
    booleans become ``dtype`` or torch's default float dtype. ``device`` (a ``torch.device`` or a
    name such as ``"cpu"``; resolve ``"auto"`` with ``runtime.device`` first) defaults to the
    input's own device. Apple's MPS has no float64: float64 becomes float32 there.
    """
    if isinstance(value, str) or value is None:
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__}")
    try:
        t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor or an array of numbers ({err})") from None
    if t.dtype.is_complex:
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.dtype.is_floating_point:
        t = t.to(torch.get_default_dtype())
    if device is not None:
        device = torch.device(device)
        t = t.to(device, torch.float32 if device.type == "mps" and t.dtype == torch.float64 else t.dtype)
    if t.numel() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def vector(name: str, value, n: int | None = None, **kw) -> torch.Tensor:
    """A 1-D tensor of shape (N,); a column (N, 1) is accepted and flattened."""
    t = tensor(name, value, **kw)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) or (N, 1), got {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries (one per sample), got {t.shape[0]}")
    return t


def matrix(name: str, value, d: int | None = None, **kw) -> torch.Tensor:
    """A 2-D tensor of shape (N, D); a vector (N,) is read as N samples of one feature."""
    t = tensor(name, value, **kw)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, D), got {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise ValueError(f"{name} must have {d} feature(s) per sample (shape (N, {d})), got {tuple(t.shape)}")
    return t


def inputs(x, d: int) -> torch.Tensor:
    """A model's input batch: a tensor (N, d), or (N,) when d = 1. No copy and no NaN scan, so
    that it is cheap in a training loop; autograd and the tensor's device are kept."""
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    x = x[:, None] if x.ndim == 1 and d == 1 else x
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (N, {d})" + (" or (N,)" if d == 1 else "") + f", got {tuple(x.shape)}")
    return x


def same_length(**arrays: torch.Tensor) -> int:
    """The common first dimension N of the named tensors; raises if they disagree."""
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"inputs must have the same number of samples: {listed}")
    return next(iter(lengths.values()))


def labels(name: str, value, n_classes: int, n: int | None = None, device=None) -> torch.Tensor:
    """Class labels as a long tensor (N,); each must be an integer in {0, ..., n_classes - 1}."""
    t = vector(name, value, n=n, device=device)
    if not ((t == t.round()) & (t >= 0) & (t < n_classes)).all():
        bad = t[(t != t.round()) | (t < 0) | (t >= n_classes)][0].item()
        raise ValueError(f"{name} must hold class labels in {{0, ..., {n_classes - 1}}}, got {bad:g}")
    return t.long()


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; bools, floats and strings raise ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def seed(value) -> int:
    """A random seed: an int in [0, 2**32 - 1], which torch, NumPy and ``random`` all take."""
    value = positive_int("seed", value, minimum=0)
    if value >= 2**32:
        raise ValueError(f"seed must be < 2**32, got {value}")
    return value


def float_dtype(name: str, value, device: torch.device | None = None) -> torch.dtype:
    """A floating torch dtype such as ``torch.float32``; strings and integer dtypes raise.
    On Apple's MPS ``device``, which has no float64, float64 becomes float32."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{name} must be a floating torch dtype such as torch.float32, got {value!r}")
    if device is not None and torch.device(device).type == "mps" and value == torch.float64:
        return torch.float32
    return value


def finite_float(name: str, value, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the given range (closed unless ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lb, rb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {value}")
    return value


def choice(name: str, value, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise an error listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value
