"""EM for any ``MixtureOfExperts``: pure steps, starts, and one fitting loop.

With the expert of each sample as a latent variable (Jordan and Jacobs, 1994), EM alternates

    E-step:  r_ne = g_e(x_n) p_e(y_n | x_n) / sum_e' g_e'(x_n) p_e'(y_n | x_n)      (``e_step``)
    M-step:  each part raises its share of sum_n sum_e r_ne [log g_e(x_n) + log p_e(y_n | x_n)]
             plus its log prior                                                     (``m_step``)

The M-step asks each part to do its own: the likelihood head solves the experts (weighted least
squares for Gaussian experts, IRLS for Categorical ones, when the experts are linear in their
parameters; gradient steps otherwise) and the router solves itself (closed form, or Gauss-Newton
with derivatives from autograd). No step ever asks what kind of router or expert it has.

The objective, the mean log-likelihood per sample plus the log prior / N (plus log p(x) for a
router that models its inputs), never decreases: ``fit`` records it, stops when it gains less
than ``tol``, and warns when it did not converge or when it dropped by more than round-off.

>>> import torch, moe_utils as mu
>>> split = mu.data.zig_step().split(400, seed=0, dtype=torch.float64)
>>> x, y = split.x_train[:, None], split.y_train
>>> model = mu.MixtureOfExperts.linear(1, 1, 2, x=x).double()
>>> run = mu.em.fit(model, x, y, mu.em.init_responsibilities(x, y, 2, "kmeans"))
>>> sorted(model.experts.weight[:, 0, 0].div(model.experts.scale).round(decimals=1).tolist())  # slopes
[1.0, 1.0]
"""

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import _checks as checks
from . import mixture
from ._scaling import standardiser

__all__ = ["ConvergenceWarning", "INITS", "Run", "e_step", "fit", "init_responsibilities", "iterate", "kmeans",
           "m_step"]

INITS = ("kmeans", "kmeans_xy", "random")


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective stopped improving by ``tol``, or its
    objective decreased by more than round-off (a step that is not an exact or generalised EM
    step, such as an inexact inner solver)."""


def e_step(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Responsibilities (N, E) and the EM objective per sample (a float), in eval mode."""
    model.eval()
    with torch.no_grad():
        out = model(x)
        resp, log_p = mixture.e_step(out.routing.log_probs, model.log_lik(out, y))
        log_p = log_p + model.router.input_log_prob(x)
        return resp, (log_p.mean() + model.log_prior() / x.shape[0]).item()


def m_step(model, x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor, *, router_steps: int = 3,
           expert_steps: int | None = None, gradient_steps: int = 0, lr: float = 0.01, line_search: bool = False):
    """One M-step in place, from responsibilities resp (N, E); returns ``model``.

    The likelihood head fits the experts (``expert_steps`` Newton steps for a Categorical head,
    default its own) and its noise; the router fits itself (``router_steps`` Newton steps for a
    linear router, Gauss-Newton for other networks, where it has no closed form). Experts without
    a closed form (an MLP), or any experts when ``gradient_steps`` > 0, take that many Adam steps
    (learning rate ``lr``) on the expected complete-data log-likelihood instead: the slow way,
    which only approaches the M-step's optimum.
    Adam's steps may overshoot and lower that objective; with ``line_search`` they are kept only
    if it did not fall, else undone and retried at half the learning rate (up to 8 times, then the experts
    stay as they were), so that the M-step never lowers it: a generalised EM step.
    This is also how gradient training starts where EM starts: one M-step from k-means clusters.
    """
    closed_form = gradient_steps <= 0
    if closed_form and model.experts.design(x) is None:
        raise ValueError("these experts have no closed-form M-step: pass gradient_steps > 0")
    if not closed_form:
        _gradient_m_step(model, x, y, resp, gradient_steps, lr, line_search)
    model.likelihood.m_step(model.experts, x, y, resp, steps=expert_steps, solve_experts=closed_form)
    model.router.m_step(x, resp, temperature=model.rule.temperature, steps=router_steps)
    return model


def _gradient_m_step(model, x, y, resp, steps: int, lr: float, line_search: bool = False) -> None:
    """Adam on -(1/N) sum_n sum_e r_ne log p_e(y_n | x_n) - log prior / N, the experts only; with
    ``line_search``, retried at half the learning rate until that objective does not rise."""
    def objective():
        q = (resp * model.likelihood.log_lik(model.experts(x), y)).sum() + model.likelihood.log_prior(model.experts)
        return -q / x.shape[0]

    params = list(model.experts.parameters())
    with torch.no_grad():
        start, before = [p.detach().clone() for p in params], objective().item() if line_search else None
    for _ in range(8 if line_search else 1):
        opt = torch.optim.Adam(params, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                objective().backward()
                opt.step()
        if not line_search:
            return
        with torch.no_grad():
            if objective().item() <= before:
                return
            for p, p0 in zip(params, start):
                p.copy_(p0)
        lr = lr / 2


def init_responsibilities(x: torch.Tensor, y: torch.Tensor, n_experts: int, method: str = "kmeans",
                          seed: int = 0) -> torch.Tensor:
    """Starting responsibilities (N, E) for x (N, D) and y (N,) or (N, O).

    ``"kmeans"``: k-means in x, the regions a router could draw; ``"kmeans_xy"``: k-means on
    standardised (x, y); both start from k-means++ and give one-hot clusters softened to 0.9/0.1,
    so that no expert starts empty. ``"random"``: Dirichlet(1) rows.
    """
    n_experts = checks.positive_int("n_experts", n_experts)
    method = checks.choice("init", method, INITS)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    n = x.shape[0]
    if method == "random":
        resp = -torch.log(torch.rand(n, n_experts, generator=gen, dtype=torch.float64))  # Exp(1)
        return (resp / resp.sum(-1, keepdim=True)).to(x)
    points = x if method == "kmeans" else torch.cat([x, y.reshape(n, -1).to(x)], dim=1)
    label = kmeans(points, n_experts, gen)
    soft = 0.1 / (n_experts - 1) if n_experts > 1 else 0.0
    resp = torch.full((n, n_experts), soft, dtype=torch.float64)
    resp[torch.arange(n), label] = 1.0 - soft * (n_experts - 1)
    return resp.to(x)


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, steps: int = 20) -> torch.Tensor:
    """Cluster labels (N,) of points (N, F) after standardising: k-means++ starts, Lloyd steps."""
    points = points.to("cpu", torch.float64)
    shift, scale = standardiser(points)
    points = (points - shift) / scale
    centres = points[torch.randint(points.shape[0], (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: far points are more likely to start a cluster
        d2 = torch.cdist(points, centres).min(1).values ** 2
        if d2.sum() <= 0:  # every point sits on a centre already (say, constant x): pick uniformly
            d2 = torch.ones_like(d2)
        centres = torch.cat([centres, points[torch.multinomial(d2 / d2.sum(), 1, generator=generator)]])
    for _ in range(steps):
        label = torch.cdist(points, centres).argmin(1)
        for c in range(k):
            if (label == c).any():
                centres[c] = points[label == c].mean(0)
    return torch.cdist(points, centres).argmin(1)


class Run(NamedTuple):
    """One EM run: its final state, its objective per iteration, and whether it converged."""

    state: object
    history: list[float]
    converged: bool


ROUND_OFF = 1000  # a drop of the objective up to ROUND_OFF * eps * max(1, |objective|) is rounding


def iterate(step: Callable[[object], tuple[object, float]], state, max_iter: int, tol: float,
            eps: float = torch.finfo(torch.float32).eps) -> Run:
    """Apply ``step(state) -> (state, objective)`` until the objective gains at most ``tol``.

    An EM step never decreases the objective, so a drop larger than round-off (``ROUND_OFF * eps``
    times max(1, |objective|); ``eps`` is the machine epsilon of the dtype the objective is
    computed in) is not convergence: the iterations go on, and the drops are reported in one
    ``ConvergenceWarning`` at the end. A NaN or infinite objective raises.
    """
    history, drops, converged = [], [], False
    for _ in range(max_iter):
        state, objective = step(state)
        if not math.isfinite(objective):
            raise FloatingPointError(f"the EM objective became {objective} at iteration {len(history) + 1}")
        history.append(objective)
        if len(history) > 1:
            gain = history[-1] - history[-2]
            round_off = ROUND_OFF * eps * max(1.0, abs(history[-1]), abs(history[-2]))
            if gain < -round_off:
                drops.append((-gain, len(history), round_off))
            elif gain <= tol:  # tol = 0: stop when the objective no longer moves
                converged = True
                break
    if drops:
        drop, at, round_off = max(drops)
        warnings.warn(f"the EM objective decreased at {len(drops)} of {len(history)} iterations (the largest "
                      f"drop, {drop:.3g} at iteration {at}, is beyond round-off {round_off:.1g}): some step is "
                      "not an EM step (an inexact M-step?); drops are not counted as convergence",
                      ConvergenceWarning, stacklevel=2)
    return Run(state, history, converged)


def fit(model, x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor, max_iter: int = 500, tol: float = 1e-6,
        **m_step_kwargs) -> Run:
    """EM on ``model`` in place, from starting responsibilities resp (N, E): M-step, E-step, ...

    Returns a ``Run`` whose state is the last responsibilities and whose history is the objective
    after every iteration. ``m_step_kwargs`` go to ``m_step``. x (N, D), y (N,) or (N, O).
    """
    max_iter = checks.positive_int("max_iter", max_iter)
    tol = checks.finite_float("tol", tol, 0.0)

    def step(resp):
        m_step(model, x, y, resp, **m_step_kwargs)
        return e_step(model, x, y)

    return iterate(step, resp, max_iter, tol, torch.finfo(x.dtype).eps)
