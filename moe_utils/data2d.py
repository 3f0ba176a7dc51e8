"""2-D data sets with known best achievable scores.

- The classification blobs of chapter 4: two Gaussian blobs, N((3, 0), I) and N((-3, 0), I),
  labelled by a circle that passes through both centres, so that each blob is cut along a curved
  line. The labels are a deterministic function of x: the best achievable accuracy is 1 and the
  best NLL 0.

>>> import moe_utils as mu
>>> split = mu.data2d.blobs_split(600, seed=0)
>>> split.x_train.shape, split.y_train.shape
(torch.Size([300, 2]), torch.Size([300]))
>>> bool((mu.data2d.circle_rule(split.x_train) == split.y_train).all())
True
"""

import math

import torch

from . import _checks as checks
from . import data, runtime

__all__ = ["BEST_ACCURACY", "BEST_NLL", "CENTRE", "RADIUS", "blobs", "blobs_split", "circle_rule"]

CENTRE, RADIUS = (0.0, -2.0), math.sqrt(13.0)  # the circle that splits the blobs
BEST_ACCURACY, BEST_NLL = 1.0, 0.0  # labels are a deterministic function of x


def circle_rule(x) -> torch.Tensor:
    """The exact labelling rule: 1 outside the circle |x - CENTRE| > RADIUS, else 0. (N, 2) -> (N,)."""
    x = checks.matrix("x", x, d=2)
    return ((x - x.new_tensor(CENTRE)).norm(dim=1) > RADIUS).long()


def blobs(n: int, seed: int = 0, dtype=torch.float32, device=None):
    """n points: n // 2 from N((3, 0), I), the rest from N((-3, 0), I), labelled by ``circle_rule``.

    Returns x (N, 2) of ``dtype``, y (N,) and the blob z (N,) (0: right, 1: left), both long.
    The circle passes through both centres, so it cuts each blob along a curved line.
    """
    n = checks.positive_int("n", n)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    device = runtime.device(device) if device is not None else None
    dtype = checks.float_dtype("dtype", dtype, device)
    z = (torch.arange(n) >= n // 2).long()
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    x = (centres[z] + torch.randn(n, 2, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    return x, circle_rule(x), z.to(x.device)  # labels of the cast x, so circle_rule(x) == y exactly


def blobs_split(n: int, test_size: float = 0.5, seed: int = 0, dtype=torch.float32, device=None) -> data.Split:
    """``blobs(n, seed)`` shuffled and cut into a ``data.Split``: x (N, 2), y and z (N,)."""
    x, y, z = blobs(n, seed=seed, dtype=dtype, device=device)
    x_tr, x_te, y_tr, y_te, z_tr, z_te = data.train_test_split(x, y, z, test_size=test_size, seed=seed)
    return data.Split(x_tr, y_tr, z_tr, x_te, y_te, z_te)
