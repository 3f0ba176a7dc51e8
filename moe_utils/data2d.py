"""2-D data sets with known best achievable scores.

- The classification blobs of chapter 4: two Gaussian blobs, N((3, 0), I) and N((-3, 0), I),
  labelled by a circle that passes through both centres, so that each blob is cut along a curved
  line. The labels are a deterministic function of x: the best achievable accuracy is 1 and the
  best NLL 0.
- The curves of chapter 6 (``curve``): a circle, a three-turn spiral and a figure-8 (a real
  lemniscate), noisy points on them with their true 1-D parameter, and the best achievable
  reconstruction error of a 1-D code (the mean squared distance to the curve), by quadrature.

>>> import moe_utils as mu
>>> split = mu.data2d.blobs_split(600, seed=0)
>>> split.x_train.shape, split.y_train.shape
(torch.Size([300, 2]), torch.Size([300]))
>>> bool((mu.data2d.circle_rule(split.x_train) == split.y_train).all())
True
>>> circle = mu.data2d.curve("circle", noise=0.0)
>>> round(circle.length, 6), circle.best_mse()
(6.283185, 0.0)
"""

import math
from typing import NamedTuple

import numpy as np
import torch

from . import _checks as checks
from . import data, runtime

__all__ = ["BEST_ACCURACY", "BEST_NLL", "CENTRE", "CURVES", "Curve", "CurveSplit", "RADIUS", "blobs", "blobs_split",
           "circle_rule", "curve"]

_F64 = torch.float64

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


# ---------------------------------------------------------------------- curves (chapter 6)
class CurveSplit(NamedTuple):
    """A train/test split of noisy points on a curve, with the true parameter of each point."""

    x_train: torch.Tensor  # (N_train, 2) noisy points c(t) + noise * eps
    t_train: torch.Tensor  # (N_train,) the parameter t each was drawn at
    x_test: torch.Tensor   # (N_test, 2)
    t_test: torch.Tensor   # (N_test,)


def _circle(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(t), torch.sin(t)], -1)


def _spiral(t: torch.Tensor) -> torch.Tensor:
    return (t / (6 * math.pi))[..., None] * _circle(t)


def _figure8(t: torch.Tensor) -> torch.Tensor:
    s, c = torch.sin(t), torch.cos(t)
    return torch.stack([c, s * c], -1) / (1 + s**2)[..., None]


_CURVES = {  # name: (c(t), lo, hi, closed)
    "circle": (_circle, 0.0, 2 * math.pi, True),
    "spiral": (_spiral, 0.0, 6 * math.pi, False),
    "figure8": (_figure8, 0.0, 2 * math.pi, True),
}
CURVES = tuple(_CURVES)


class Curve:
    """A plane curve c(t), t in [lo, hi], and noisy points x = c(t) + noise * eps on it.

    - ``circle``: c(t) = (cos t, sin t), t in [0, 2 pi): closed;
    - ``spiral``: c(t) = t / (6 pi) (cos t, sin t), t in [0, 6 pi]: three turns whose radius grows
      with the angle (the reference's spiral, scaled into the unit disc): open;
    - ``figure8``: the lemniscate of Bernoulli, c(t) = (cos t, sin t cos t) / (1 + sin^2 t),
      t in [0, 2 pi): closed, and it crosses itself at the origin (t = pi/2 and 3 pi/2).

    t is drawn uniformly on [lo, hi] and eps ~ N(0, I). The best achievable reconstruction error
    of a 1-D code, ``best_mse``, is the mean squared distance from a point to the curve: 0
    without noise, about noise^2 with it (the component of the noise across the curve; the
    component along it only moves the code). Shapes: t (N,), points x (N, 2).
    """

    def __init__(self, name: str, noise: float = 0.05):
        self.name = checks.choice("curve", name, CURVES)
        self.fn, self.lo, self.hi, self.closed = _CURVES[name]
        self.noise = checks.finite_float("noise", noise, 0.0, 1e3)

    def __repr__(self) -> str:
        return f"Curve({self.name!r}, noise={self.noise})"

    def points(self, t) -> torch.Tensor:
        """c(t): (N,) -> (N, 2), computed in float64 on the CPU, returned like t."""
        t64, dev = _cpu64("t", t)
        return self.fn(t64).to(dtype=_like(t), device=dev)

    def velocity(self, t) -> torch.Tensor:
        """c'(t) (N, 2), by automatic differentiation of c."""
        t64, dev = _cpu64("t", t)
        return self._velocity(t64).to(dtype=_like(t), device=dev)

    def _velocity(self, t: torch.Tensor) -> torch.Tensor:
        return self._derivatives(t, second=False)[0]

    def _derivatives(self, t: torch.Tensor, second: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """c'(t) and c''(t) (each (N, 2), the second None unless ``second``), by autograd."""
        with torch.enable_grad():
            t = t.detach().requires_grad_()
            c = self.fn(t)
            v = [torch.autograd.grad(c[..., i].sum(), t, retain_graph=True, create_graph=second)[0] for i in range(2)]
            a = [torch.autograd.grad(vi.sum(), t, retain_graph=True)[0] for vi in v] if second else None
        return torch.stack(v, -1).detach(), None if a is None else torch.stack(a, -1)

    def arc_length(self, t) -> torch.Tensor:
        """The length of the curve from lo to t, int |c'(u)| du by Gauss-Legendre (64 nodes): (N,)."""
        t64, dev = _cpu64("t", t)
        nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(64))
        u = self.lo + (t64[:, None] - self.lo) * (nodes + 1) / 2               # (N, 64)
        speed = self._velocity(u.reshape(-1)).norm(dim=-1).reshape(u.shape)
        return ((t64 - self.lo) / 2 * (speed @ weights)).to(dtype=_like(t), device=dev)

    @property
    def length(self) -> float:
        """The length of the whole curve."""
        return self.arc_length(torch.tensor([self.hi], dtype=_F64)).item()

    def sample(self, n: int, seed: int = 0, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """n noisy points x (N, 2) and their parameters t (N,), drawn on the CPU in float64 from
        ``seed`` and returned in ``dtype`` on ``device``."""
        n = checks.positive_int("n", n)
        gen = torch.Generator().manual_seed(checks.seed(seed))
        device = runtime.device(device) if device is not None else None
        dtype = checks.float_dtype("dtype", dtype, device)
        t = self.lo + (self.hi - self.lo) * torch.rand(n, generator=gen, dtype=_F64)
        x = self.fn(t) + self.noise * torch.randn(n, 2, generator=gen, dtype=_F64)
        return x.to(dtype=dtype, device=device), t.to(dtype=dtype, device=device)

    def split(self, n: int, test_size: float = 0.5, seed: int = 0, dtype=torch.float32, device=None) -> CurveSplit:
        """``sample(n, seed)`` shuffled and cut into a ``CurveSplit``."""
        x, t = self.sample(n, seed=seed, dtype=dtype, device=device)
        x_tr, x_te, t_tr, t_te = data.train_test_split(x, t, test_size=test_size, seed=seed)
        return CurveSplit(x_tr, t_tr, x_te, t_te)

    def project(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest point of the curve to each x (N, 2): its parameter t (N,) and the squared
        distance (N,). A table of 512 points finds the branch; Newton steps refine t."""
        x64, dev = _cpu64("x", checks.matrix("x", x, d=2))
        table = torch.linspace(self.lo, self.hi, 512, dtype=_F64)
        points = self.fn(table)                                                # (G, 2)
        coarse, x32 = points.float(), x64.float()  # single precision is plenty to pick the branch
        near = torch.cat([((coarse**2).sum(1) - 2 * chunk @ coarse.T).argmin(1) for chunk in x32.split(4096)])
        t = table[near]
        dist2 = ((points[near] - x64) ** 2).sum(-1)
        for _ in range(10):  # Newton on |c(t) - x|^2 / 2, a step kept only where it brings c(t) closer
            c, (v, a) = self.fn(t), self._derivatives(t)
            r = c - x64
            slope, curvature = (r * v).sum(-1), (v * v).sum(-1) + (r * a).sum(-1)
            curvature = torch.where(curvature > 0, curvature, (v * v).sum(-1)).clamp_min(1e-300)  # else Gauss-Newton
            step = t - slope / curvature
            step = self.lo + torch.remainder(step - self.lo, self.hi - self.lo) if self.closed \
                else step.clamp(self.lo, self.hi)
            new = ((self.fn(step) - x64) ** 2).sum(-1)
            t, dist2 = torch.where(new < dist2, step, t), torch.minimum(new, dist2)
        return t.to(dtype=_like(x), device=dev), dist2.to(dtype=_like(x), device=dev)

    def best_mse(self, order: int = 64) -> float:
        """E |x - nearest point of the curve|^2 over t ~ U(lo, hi) and the noise: Gauss-Legendre
        in t (``order`` nodes) times a 10 x 10 Gauss-Hermite rule in the noise. It is what an atlas
        that codes each point by its projection onto the true curve scores; about noise^2."""
        if self.noise == 0:
            return 0.0
        t_nodes, t_weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(order))
        t = self.lo + (self.hi - self.lo) * (t_nodes + 1) / 2                  # (T,)
        h, h_weights = (torch.from_numpy(a) for a in np.polynomial.hermite_e.hermegauss(10))
        eps = torch.stack(torch.meshgrid(h, h, indexing="ij"), -1).reshape(-1, 2)  # (G, 2)
        w_eps = (h_weights[:, None] * h_weights[None, :]).reshape(-1) / (2 * math.pi)
        x = self.fn(t)[:, None, :] + self.noise * eps                          # (T, G, 2)
        dist2 = self.project(x.reshape(-1, 2))[1].reshape(len(t), len(eps))
        return (t_weights / 2 * (dist2 @ w_eps)).sum().item()


def curve(name: str, noise: float = 0.05) -> Curve:
    """The curve ``name`` (one of ``CURVES``) with noise sd ``noise``."""
    return Curve(name, noise)


def _cpu64(name: str, value) -> tuple[torch.Tensor, torch.device]:
    """``value`` as a float64 CPU tensor, and the device it came from."""
    t = checks.tensor(name, value)
    return t.to("cpu", _F64), t.device


def _like(value) -> torch.dtype:
    """The floating dtype to return results in: the input's, or float32 for other inputs."""
    return value.dtype if torch.is_tensor(value) and value.is_floating_point() else torch.get_default_dtype()
