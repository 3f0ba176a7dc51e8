"""Synthetic regression data whose best achievable scores are known.

Every data set here is a mixture of E *regimes* (the true experts). Regime e is picked with
probability w_e, then

    x ~ Uniform(lo_e, hi_e),    y = f_e(x) + noise * eps,    eps ~ N(0, 1).

Because the process is known, so is the best any predictor can do (the Bayes predictor):

    true gate    pi_e(x) = w_e U_e(x) / sum_e' w_e' U_e'(x)        (U_e: the uniform density)
    best mean    m(x)    = sum_e pi_e(x) f_e(x)
    best MSE     E_x[ noise^2 + sum_e pi_e(x) (f_e(x) - m(x))^2 ]  (the mean conditional variance)
    best NLL     E_x[ H(y | x) ]                                (entropy of the mixture p(y | x))

Where regimes overlap in x the target is bimodal and the best MSE is far above the noise
floor ``noise**2``. Where two regimes meet at a jump without overlapping, a learner that has
only seen training points knows the jump lies somewhere in the gap (a, b) between the nearest
training inputs on either side; with a flat posterior over its position, the learner's gate in
the gap is pi_left(x) = (b - x) / (b - a). Passing ``x_train`` to ``gate``, ``mean``,
``log_prob`` and the ``best_*`` methods puts that uncertainty in. Population values are
integrated by Gauss-Legendre (in x) and Gauss-Hermite (in y) quadrature, never by fitting.

>>> import moe_utils as mu
>>> roof = mu.data.roof()
>>> round(roof.best_mse(), 4), round(roof.noise ** 2, 4)
(0.0453, 0.0025)
>>> split = roof.split(1000, seed=0)
>>> split.x_train.shape, split.x_test.shape
(torch.Size([800]), torch.Size([200]))
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from . import _checks as checks
from . import mixture, runtime
from .metrics import Scores

__all__ = [
    "DATASETS", "Line", "Regime", "Regimes", "Sine", "Split",
    "linear", "make", "roof", "sin_sign", "train_test_split", "zig", "zig_step",
]

_F64 = torch.float64


@dataclass(frozen=True)
class Line:
    """f(x) = slope * x + intercept."""

    slope: float
    intercept: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.slope * x + self.intercept


@dataclass(frozen=True)
class Sine:
    """f(x) = sin(pi x) + offset."""

    offset: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(math.pi * x) + self.offset


@dataclass(frozen=True)
class Regime:
    """One regime: x ~ Uniform(lo, hi), y = fn(x) + noise; picked with probability ~ weight."""

    lo: float
    hi: float
    fn: Callable[[torch.Tensor], torch.Tensor]
    weight: float = 1.0


class Split(NamedTuple):
    """A train/test split; ``z_*`` are the true regimes of the samples (long)."""

    x_train: torch.Tensor  # (N_train,)
    y_train: torch.Tensor  # (N_train,)
    z_train: torch.Tensor  # (N_train,)
    x_test: torch.Tensor   # (N_test,)
    y_test: torch.Tensor   # (N_test,)
    z_test: torch.Tensor   # (N_test,)


def train_test_split(*arrays: torch.Tensor, test_size: float = 0.2, seed: int = 0) -> list[torch.Tensor]:
    """Shuffle N samples with ``seed`` and cut them: returns [a_train, a_test, b_train, ...].

    Each array is a tensor (N, ...) with the same N; the test part has round(N * test_size) rows.
    """
    if not arrays:
        raise TypeError("train_test_split needs at least one tensor of shape (N, ...)")
    for i, a in enumerate(arrays):
        if not torch.is_tensor(a) or a.ndim == 0:
            shape = tuple(a.shape) if torch.is_tensor(a) else type(a).__name__
            raise TypeError(f"arrays[{i}] must be a tensor of shape (N, ...), got {shape}")
    test_size = checks.finite_float("test_size", test_size, 0.0, 1.0, low_open=True, high_open=True)
    n = checks.same_length(**{f"arrays[{i}]": a for i, a in enumerate(arrays)})
    n_test = round(n * test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size} of {n} samples leaves an empty train or test set")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(checks.seed(seed)))
    order = order.to(arrays[0].device)
    train, test = order[n_test:], order[:n_test]
    return [part for a in arrays for part in (a[train], a[test])]


class Regimes:
    """A regression data set made of regimes, with its exact best achievable scores.

    Shapes: x (N,), y (N,), gates (N, E); E is the number of regimes.
    """

    def __init__(self, name: str, regimes: list[Regime], noise: float):
        self.name = name
        # noise**2 and the Gaussian densities must stay representable in float64
        self.noise = checks.finite_float("noise", noise, 1e-6, 1e6)
        self.regimes = tuple(regimes)
        if not regimes:
            raise ValueError("regimes must not be empty")
        for i, r in enumerate(regimes):
            if not (r.lo < r.hi and r.weight > 0):
                raise ValueError(f"regimes[{i}] needs lo < hi and weight > 0, got {r}")
        reach = min(r.lo for r in regimes)
        for r in sorted(regimes, key=lambda r: r.lo):
            if r.lo > reach:
                raise ValueError(f"regimes must cover one interval; nothing covers ({reach}, {r.lo})")
            reach = max(reach, r.hi)
        total = sum(r.weight for r in regimes)
        self.weights = torch.tensor([r.weight / total for r in regimes], dtype=_F64)
        self.lo = torch.tensor([r.lo for r in regimes], dtype=_F64)
        self.hi = torch.tensor([r.hi for r in regimes], dtype=_F64)

    @property
    def support(self) -> tuple[float, float]:
        """The interval (lo, hi) that x is drawn from."""
        return min(r.lo for r in self.regimes), max(r.hi for r in self.regimes)

    def __repr__(self) -> str:
        return f"Regimes({self.name!r}, E={len(self.regimes)}, noise={self.noise})"

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, seed: int = 0, dtype=torch.float32, device=None):
        """Draw n samples: x (N,), y (N,) of ``dtype`` and the regimes z (N,) (long).

        They are drawn on the CPU in float64 (so every device gets the same numbers), then
        moved to ``device`` (any name ``runtime.device`` takes; default the CPU).
        """
        n = checks.positive_int("n", n)
        gen = torch.Generator().manual_seed(checks.seed(seed))
        device = runtime.device(device) if device is not None else None
        dtype = checks.float_dtype("dtype", dtype, device)
        z = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        x = self.lo[z] + (self.hi[z] - self.lo[z]) * torch.rand(n, generator=gen, dtype=_F64)
        f = self.expert_means(x).gather(1, z[:, None])[:, 0]
        y = f + self.noise * torch.randn(n, generator=gen, dtype=_F64)
        return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device), z.to(device)

    def split(self, n: int, test_size: float = 0.2, seed: int = 0, dtype=torch.float32, device=None) -> Split:
        """Sample n points with ``seed`` and split them into train and test sets."""
        x, y, z = self.sample(n, seed=seed, dtype=dtype, device=device)
        x_tr, x_te, y_tr, y_te, z_tr, z_te = train_test_split(x, y, z, test_size=test_size, seed=seed)
        return Split(x_tr, y_tr, z_tr, x_te, y_te, z_te)

    # ---------------------------------------------------------------- the truth
    # Computed on the CPU in float64 whatever the inputs; results go back to x's device
    # (in float32 on Apple's MPS, which has no float64).
    def density(self, x) -> torch.Tensor:
        """The input density p(x): (N,). (The density of y given x is ``log_prob``.)"""
        x, dev = _cpu("x", x)
        return _back(self._density(x), dev)

    def expert_means(self, x) -> torch.Tensor:
        """f_e(x) for every regime: (N, E), float64."""
        x, dev = _cpu("x", x)
        return _back(self._expert_means(x), dev)

    def gate(self, x, x_train=None) -> torch.Tensor:
        """P(regime e | x): (N, E). The true gate, or the learner's one given ``x_train`` (N_train,).

        x outside the support is clamped to it (the gate is constant beyond the data).
        """
        x, dev = _cpu("x", x)
        return _back(self._gate(x, x_train), dev)

    def mean(self, x, x_train=None) -> torch.Tensor:
        """The best point prediction E[y | x] (given ``x_train``, if passed): (N,), float64."""
        x, dev = _cpu("x", x)
        return _back(self._mean(x, x_train), dev)

    def log_prob(self, x, y, x_train=None) -> torch.Tensor:
        """log p(y | x) of the true (or learner's) conditional density: (N,), float64."""
        x, dev = _cpu("x", x)
        y, _ = _cpu("y", y, n=x.shape[0])
        return _back(self._log_prob(x, y, x_train), dev)

    def _density(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x[:, None] >= self.lo) & (x[:, None] <= self.hi)
        return (inside * self.weights / (self.hi - self.lo)).sum(-1)

    def _expert_means(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([r.fn(x) for r in self.regimes], dim=-1)

    def _gate(self, x: torch.Tensor, x_train=None) -> torch.Tensor:
        x = x.clamp(self.lo.min(), self.hi.max())
        inside = (x[:, None] >= self.lo) & (x[:, None] <= self.hi)
        g = inside * self.weights / (self.hi - self.lo)
        g = g / g.sum(-1, keepdim=True)
        if x_train is not None:
            for (a, b), left, right in self.jump_gaps(x_train):
                in_gap = (x > a) & (x < b)
                p_left = ((b - x) / (b - a))[in_gap]
                g[in_gap] = 0.0
                g[in_gap, left], g[in_gap, right] = p_left, 1.0 - p_left
        return g

    def _mean(self, x: torch.Tensor, x_train=None) -> torch.Tensor:
        return (self._gate(x, x_train) * self._expert_means(x)).sum(-1)

    def _log_prob(self, x: torch.Tensor, y: torch.Tensor, x_train=None) -> torch.Tensor:
        log_g = torch.log(self._gate(x, x_train))
        return mixture.log_prob(log_g, mixture.gaussian_log_prob(y[:, None], self._expert_means(x), self.noise**2))

    # ---------------------------------------------------------------- best achievable
    def best(self, x_test, y_test, x_train=None) -> Scores:
        """Test MSE and NLL of the Bayes predictor on these very test points (N,), (N,).

        This is the fairest bar for a model scored on the same test set: it sees the same
        noise draws. With ``x_train`` (N_train,) it is the Bayes predictor of a learner that
        has seen those training inputs (it does not know where a jump lies inside their gap).
        """
        x, _ = _cpu("x_test", x_test)
        y, _ = _cpu("y_test", y_test, n=x.shape[0])
        m, lp = self._mean(x, x_train), self._log_prob(x, y, x_train)
        return Scores(((y - m) ** 2).mean().item(), (-lp).mean().item())

    def best_mse(self, x_train=None) -> float:
        """Expected test MSE of the Bayes predictor over the whole data distribution."""
        x, w = self._quadrature(x_train)
        g_true, g_pred, f = self._gate(x), self._gate(x, x_train), self._expert_means(x)
        m = (g_pred * f).sum(-1, keepdim=True)
        per_x = (g_true * (self.noise**2 + (f - m) ** 2)).sum(-1)
        return (w * self._density(x) * per_x).sum().item()

    def best_nll(self, x_train=None) -> float:
        """Expected test NLL (nats/sample) of the Bayes predictor over the data distribution."""
        x, w = self._quadrature(x_train)
        g_true, g_pred, f = self._gate(x), self._gate(x, x_train), self._expert_means(x)
        u, wu = np.polynomial.hermite_e.hermegauss(40)
        u, wu = torch.tensor(u, dtype=_F64), torch.tensor(wu / math.sqrt(2 * math.pi), dtype=_F64)
        y = f[:, :, None] + self.noise * u                       # (G, E, U): y ~ N(f_e, noise^2)
        comp = torch.log(g_pred)[:, None, None, :] + mixture.gaussian_log_prob(
            y[..., None], f[:, None, None, :], torch.tensor(self.noise**2, dtype=_F64))
        nll = -(torch.logsumexp(comp, dim=-1) * wu).sum(-1)      # (G, E)
        return (w * self._density(x) * (g_true * nll).sum(-1)).sum().item()

    # ---------------------------------------------------------------- internals
    def jumps(self) -> list[tuple[float, int, int]]:
        """Points c where regime ``left`` alone hands over to regime ``right`` alone, with a jump."""
        found = []
        for left, rl in enumerate(self.regimes):
            for right, rr in enumerate(self.regimes):
                c = rl.hi
                if left == right or abs(rr.lo - c) > 1e-12:
                    continue
                eps = 1e-9 * (1 + abs(c))
                alone_left = self._active(c - eps) == [left]
                alone_right = self._active(c + eps) == [right]
                cx = torch.tensor([c], dtype=_F64)
                if alone_left and alone_right and not torch.isclose(rl.fn(cx), rr.fn(cx)).item():
                    found.append((c, left, right))
        return found

    def _active(self, x: float) -> list[int]:
        return [e for e, r in enumerate(self.regimes) if r.lo <= x <= r.hi]

    def jump_gaps(self, x_train) -> list[tuple[tuple[float, float], int, int]]:
        """For each jump: the gap (a, b) between the nearest training inputs x_train (N_train,)."""
        x_train, _ = _cpu("x_train", x_train)
        gaps = []
        for c, left, right in self.jumps():
            below, above = x_train[x_train < c], x_train[x_train > c]
            a = below.max().item() if below.numel() else self.regimes[left].lo
            b = above.min().item() if above.numel() else self.regimes[right].hi
            gaps.append(((max(a, self.regimes[left].lo), min(b, self.regimes[right].hi)), left, right))
        return gaps

    def _quadrature(self, x_train=None, order: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss-Legendre nodes and weights on every smooth piece of the support: (G,), (G,)."""
        knots = {r.lo for r in self.regimes} | {r.hi for r in self.regimes}
        if x_train is not None:
            knots |= {t for (a, b), _, _ in self.jump_gaps(x_train) for t in (a, b)}
        knots = sorted(knots)
        t, wt = np.polynomial.legendre.leggauss(order)
        xs, ws = [], []
        for t0, t1 in zip(knots[:-1], knots[1:]):
            if t1 - t0 > 1e-12:
                xs.append(0.5 * (t1 - t0) * t + 0.5 * (t1 + t0))
                ws.append(0.5 * (t1 - t0) * wt)
        return torch.tensor(np.concatenate(xs), dtype=_F64), torch.tensor(np.concatenate(ws), dtype=_F64)


def _cpu(name: str, value, n: int | None = None) -> tuple[torch.Tensor, torch.device]:
    """A checked vector (N,) as float64 on the CPU, and the device it came from."""
    t = checks.vector(name, value, n=n)
    return t.to("cpu", _F64), t.device


def _back(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float64 CPU result moved to ``device`` (float32 on MPS, which has no float64)."""
    return t.to(device, torch.float32 if device.type == "mps" else t.dtype)


# -------------------------------------------------------------------- the data sets
def roof(noise: float = 0.05) -> Regimes:
    """Three lines, /‾\\ , on [-2, 2]; neighbours overlap in x on [-0.75, -0.5] and [0.5, 0.75]."""
    return Regimes("roof", [Regime(-2.0, -0.5, Line(1.0, 1.5)), Regime(-0.75, 0.75, Line(0.0, 0.0)),
                            Regime(0.5, 2.0, Line(-1.0, 1.5))], noise)


def zig(overlap: float = 0.5, noise: float = 0.05) -> Regimes:
    """Two parallel lines y = x + 0.5 and y = x - 0.5 on [-2, 2] that overlap in x on
    [-overlap/2, overlap/2]: there the target is bimodal. ``overlap=0`` is the step."""
    overlap = checks.finite_float("overlap", overlap, 0.0, 2.0, high_open=True)
    name = "zig" if overlap > 0 else "zig_step"
    return Regimes(name, [Regime(-2.0, overlap / 2, Line(1.0, 0.5)),
                          Regime(-overlap / 2, 2.0, Line(1.0, -0.5))], noise)


def zig_step(noise: float = 0.05) -> Regimes:
    """The non-overlapping zig: y = x + 0.5 for x < 0, y = x - 0.5 for x > 0 (a jump of 1)."""
    return zig(0.0, noise)


def linear(noise: float = 0.05) -> Regimes:
    """One line, y = x on [-2, 2]: the case where a single linear model is already the best."""
    return Regimes("linear", [Regime(-2.0, 2.0, Line(1.0, 0.0))], noise)


def sin_sign(noise: float = 0.05) -> Regimes:
    """y = sin(pi x) + sign(x) on [-1, 1]: smooth regimes with a jump of 2 at x = 0."""
    return Regimes("sin_sign", [Regime(-1.0, 0.0, Sine(-1.0)), Regime(0.0, 1.0, Sine(1.0))], noise)


DATASETS: dict[str, Callable[..., Regimes]] = {
    "roof": roof, "zig": zig, "zig_step": zig_step, "linear": linear, "sin_sign": sin_sign,
}


def make(name: str, **kwargs) -> Regimes:
    """A data set by name: one of ``DATASETS`` (keyword arguments go to its function)."""
    return DATASETS[checks.choice("data set", name, DATASETS)](**kwargs)
