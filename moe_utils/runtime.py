"""Where code runs and how it is seeded.

>>> import moe_utils as mu
>>> mu.device("cpu")
device(type='cpu')
>>> gen = mu.seed(0)          # seeds torch, numpy and random; returns a torch.Generator
>>> mu.runtime.precise_dtype(mu.device("cpu"))
torch.float64
"""

import os
import random

import numpy as np
import torch

from . import _checks as checks

__all__ = ["device", "precise_dtype", "seed"]


def device(name: str | torch.device = "auto") -> torch.device:
    """The torch device to use: ``"auto"`` picks CUDA, then Apple's MPS, then the CPU.

    The environment variable ``MOE_UTILS_DEVICE`` (e.g. ``cpu``), when set, replaces what
    ``"auto"`` picks: ``make book`` uses it to execute every chapter on the CPU with the
    chapters' default parameters. Any other name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is checked and returned
    as a ``torch.device``; asking for a device that is not available raises ``ValueError``.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {type(name).__name__}")
    if name == "auto" and os.environ.get("MOE_UTILS_DEVICE"):
        return device(os.environ["MOE_UTILS_DEVICE"])
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but MPS is not available here; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; expected 'auto', 'cpu', 'cuda' or 'mps'")
    return dev


def seed(value: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh CPU generator.

    Library code never uses the global generators: it takes a ``seed`` and builds its own
    ``torch.Generator``, so results do not depend on what ran before. Chapters call
    ``seed`` once so that anything else they do (plot jitter, their own sampling) repeats too.
    """
    value = checks.seed(value)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def precise_dtype(dev: torch.device) -> torch.dtype:
    """float64 where ``dev`` has it, float32 on Apple's MPS (which has no float64).

    EM and the exact best-achievable scores like double precision; a chapter asks for
    ``precise_dtype(device)`` so that the same notebook runs on a Mac.
    """
    return torch.float32 if torch.device(dev).type == "mps" else torch.float64
