"""EM for a mixture of linear experts, as pure functions (the estimator lives in ``mole``).

The model (Jordan & Jacobs, 1994): expert e predicts y ~ N(w_e . x + b_e, var_e) and a gate
g(x) picks an expert. With the expert of each sample as a latent variable, EM alternates

    E-step:  r_ne = g_e(x_n) N(y_n; mu_ne, var_e) / sum_e' g_e'(x_n) N(y_n; mu_ne', var_e')
    M-step:  experts by weighted least squares (closed form), var_e = weighted residual variance,
             gate by maximising sum_n sum_e r_ne log g_e(x_n) (plus its log prior).

Every step never decreases the objective: the mean log-likelihood plus the gate's log prior / N.
Shapes: x (N, D), y (N,), resp (N, E), weight (E, D), bias (E,), var (E,).

>>> import torch, moe_utils as mu
>>> split = mu.data.zig_step().split(400, seed=0, dtype=torch.float64)
>>> x, y = split.x_train[:, None], split.y_train
>>> resp = mu.em.init_responsibilities(x, y, 2, "kmeans", seed=0)
>>> gate = mu.gates.SoftmaxGate(1, 2, shift=x.mean(0), scale=x.std(0)).to(x)
>>> for _ in range(20):
...     weight, bias, var = mu.em.m_step_experts(x, y, resp)
...     gate = mu.em.m_step_gate(gate, x, resp)
...     resp, log_lik = mu.em.e_step(gate, weight, bias, var, x, y)
>>> sorted(weight[:, 0].round(decimals=1).tolist())
[1.0, 1.0]
"""

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from . import experts, mixture
from .gates import ConstantGate, standardiser

__all__ = ["ConvergenceWarning", "EMEstimator", "Run", "e_step", "fit_softmax", "gate_log_prior",
           "init_responsibilities", "iterate", "kmeans", "m_step_experts", "m_step_experts_gradient",
           "m_step_gate"]


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective stopped improving by ``tol``, or its
    objective decreased by more than round-off (a step that is not an exact or generalised EM
    step, such as an inexact inner solver)."""


def e_step(gate, weight, bias, var, x, y) -> tuple[torch.Tensor, float]:
    """Responsibilities (N, E) and the mean log-likelihood per sample (a float)."""
    joint = mixture.joint_log_prob(gate(x), experts.linear_means(x, weight, bias), var, y)
    return torch.softmax(joint, dim=-1).detach(), torch.logsumexp(joint, dim=-1).mean().item()


def m_step_experts(x, y, resp, min_var: float = 0.0, ridge: float = 0.0):
    """Closed-form M-step of the experts: weighted least squares and weighted residual variance.

    Returns weight (E, D), bias (E,), var (E,); every var_e >= ``min_var``. ``ridge``: see
    ``experts.fit_linear`` (0: exact; degenerate experts get the minimum-norm fit).
    """
    weight, bias = experts.fit_linear(x, y, resp, ridge)
    var = experts.noise_variance(y, experts.linear_means(x, weight, bias), resp, min_var)
    return weight, bias, var


def m_step_experts_gradient(x, y, resp, weight, bias, var, steps: int = 200, lr: float = 0.01,
                            min_var: float = 0.0):
    """The same M-step done the slow way: Adam on the expected complete-data NLL.

    This is the common mistake the closed form avoids: an inner gradient loop that costs
    ``steps`` passes over the data per EM iteration and only approaches the exact solution.
    """
    weight, bias = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    log_var = torch.log(var.detach().clamp_min(max(min_var, 1e-12))).requires_grad_()
    opt = torch.optim.Adam([weight, bias, log_var], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        log_p = mixture.gaussian_log_prob(y[:, None], experts.linear_means(x, weight, bias), log_var.exp())
        (-(resp * log_p).sum() / len(y)).backward()
        opt.step()
    return weight.detach(), bias.detach(), log_var.detach().exp().clamp_min(min_var)


def gate_log_prior(gate, l2: float = 1e-3, alpha: float = 1.0) -> float:
    """log p(gate) up to a constant: Dirichlet(alpha) on constant weights, N(0, 1/l2) otherwise."""
    if isinstance(gate, ConstantGate):
        return (alpha - 1.0) * torch.log_softmax(gate.logit, -1).sum().item()
    return -0.5 * l2 * sum((p**2).sum().item() for p in gate.parameters())


def m_step_gate(gate, x, resp, l2: float = 1e-3, alpha: float = 1.0, steps: int = 10):
    """A new gate that increases sum_n sum_e r_ne log g_e(x_n) + log p(gate); ``gate`` is unchanged.

    ``ConstantGate``: closed form (the MAP estimate under a Dirichlet(alpha) prior, alpha >= 1).
    Any other gate: up to ``steps`` Gauss-Newton steps with a backtracking line search. For the
    linear-softmax gate the Gauss-Newton matrix is the exact Hessian, so this is Newton's method
    (IRLS); for the MLP gate it is its positive semi-definite Gauss-Newton approximation.
    """
    new = copy.deepcopy(gate)
    with torch.no_grad():
        if isinstance(new, ConstantGate):
            counts = resp.sum(0) + (alpha - 1.0)
            new.logit.copy_(torch.log(counts / counts.sum()) * new.temperature)
        else:
            fit_softmax(new, x, resp, l2, steps)
    return new


def _gate_objective(gate, x, resp, l2: float) -> torch.Tensor:
    """Mean expected complete-data log-likelihood of the gate plus its log prior / N."""
    penalty = sum((p**2).sum() for p in gate.parameters())
    return ((resp * gate(x)).sum() - 0.5 * l2 * penalty) / x.shape[0]


def fit_softmax(module, x, targets, l2: float = 1e-3, steps: int = 10) -> None:
    """Maximise sum_n sum_c t_nc log softmax(f(x_n))_c - l2/2 |theta|^2 in place, by Gauss-Newton.

    ``module`` maps x (N, D) to log-probabilities (N, C) and provides ``jacobian(x)``, the
    derivative of its logits with respect to its parameters, (N, C, P) (every gate does).
    ``targets`` (N, C) are soft labels whose rows may sum to any weight w_n >= 0, so the same
    routine fits a gate to responsibilities (w_n = 1) and a classifier to weighted labels.
    With p = softmax(f(x) / t) (t the temperature), the gradient is J^T (T - w p) / t - l2 theta
    and the curvature sum_n w_n J_n^T (diag p_n - p_n p_n^T) J_n / t^2 + l2 I: the exact Hessian
    for a linear-softmax module (Newton's method, IRLS), a Gauss-Newton approximation otherwise.
    Each step is kept only after a backtracking line search finds an increase.
    """
    t = module.temperature
    weight = targets.sum(-1)                                                     # (N,)
    for _ in range(steps):
        theta = parameters_to_vector(module.parameters())
        before = _gate_objective(module, x, targets, l2)
        jac, p = module.jacobian(x) / t, module(x).exp()                         # (N, C, P), (N, C)
        grad = torch.einsum("nc,ncp->p", targets - weight[:, None] * p, jac) - l2 * theta
        pj = torch.einsum("nc,ncp->np", p, jac)                                  # (N, P)
        weighted = (weight[:, None] * p)[:, :, None] * jac                       # (N, C, P)
        curv = (weighted.flatten(0, 1).T @ jac.flatten(0, 1) - (weight[:, None] * pj).T @ pj).double()
        eye = torch.eye(len(theta), dtype=curv.dtype, device=x.device)
        damping = l2 + 1e-9 * curv.diagonal().max().item()  # keeps the solve well posed
        step = torch.linalg.solve(curv + damping * eye, grad.double()).to(theta.dtype)
        for scale in 0.5 ** torch.arange(30):
            vector_to_parameters(theta + scale * step, module.parameters())
            if _gate_objective(module, x, targets, l2) >= before:
                break
        else:  # no step helps: at the optimum, to rounding
            vector_to_parameters(theta, module.parameters())
            return
        if grad.abs().max() < 1e-10 * x.shape[0]:
            return


def init_responsibilities(x, y, n_experts: int, method: str = "kmeans", seed: int = 0) -> torch.Tensor:
    """Starting responsibilities (N, E).

    ``"kmeans"``: k-means in x, the regions a gate could draw; ``"kmeans_xy"``: k-means on
    standardised (x, y); both start from k-means++ and give one-hot clusters softened to 0.9/0.1,
    so that no expert starts empty. ``"random"``: Dirichlet(1) rows.
    """
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    if method == "random":
        resp = -torch.log(torch.rand(n, n_experts, generator=gen, dtype=torch.float64))  # Exp(1)
        return (resp / resp.sum(-1, keepdim=True)).to(x)
    points = x if method == "kmeans" else torch.cat([x, y[:, None]], dim=1)
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

    state: tuple
    history: list[float]
    converged: bool


ROUND_OFF = 1000  # a drop of the objective up to ROUND_OFF * eps * max(1, |objective|) is rounding


def iterate(step: Callable[[tuple], tuple[tuple, float]], state: tuple, max_iter: int, tol: float,
            eps: float = torch.finfo(torch.float32).eps) -> Run:
    """Apply ``step(state) -> (state, objective)`` until the objective gains less than ``tol``.

    An EM step never decreases the objective, so a drop larger than round-off (``ROUND_OFF * eps``
    times max(1, |objective|); ``eps`` is the machine epsilon of the dtype the objective is
    computed in, float32's by default) is not convergence: the iterations go on, and the drops
    are reported in one ``ConvergenceWarning`` at the end. A NaN or infinite objective raises.
    """
    history, drops = [], []
    converged = False
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
            elif gain < tol:
                converged = True
                break
    if drops:
        drop, at, round_off = max(drops)
        warnings.warn(f"the EM objective decreased at {len(drops)} of {len(history)} iterations (the largest "
                      f"drop, {drop:.3g} at iteration {at}, is beyond round-off {round_off:.1g}): some step is "
                      "not an EM step (an inexact M-step?); drops are not counted as convergence",
                      ConvergenceWarning, stacklevel=2)
    return Run(state, history, converged)


class EMEstimator:
    """What every EM estimator of the course shares: ``n_init`` starts, keep the best, report.

    A subclass sets ``n_experts``, ``n_init``, ``max_iter``, ``tol`` and ``seed``, and defines
    ``_inputs(x, y)`` (checked tensors), ``_fit_once(x, y, seed) -> Run`` and
    ``_keep(state)`` (stores the fitted parameters of the best run's final state).
    """

    def fit(self, x, y):
        """Fit by EM from ``n_init`` starts (start i uses ``seed + i``); keep the best. Returns self."""
        self._forget()
        x, y = self._inputs(x, y)
        if x.shape[0] < self.n_experts:
            raise ValueError(f"x has {x.shape[0]} samples, fewer than n_experts={self.n_experts}")
        start = time.perf_counter()
        runs = [self._fit_once(x, y, self.seed + i) for i in range(self.n_init)]
        best = max(runs, key=lambda run: run.history[-1])
        self._keep(best.state)
        self.log_likelihood_history_, self.log_likelihood_ = best.history, best.history[-1]
        self.converged_, self.n_iter_ = best.converged, len(best.history)
        self.restart_log_likelihoods_ = [run.history[-1] for run in runs]
        self.fit_seconds_ = time.perf_counter() - start
        if not self.converged_:
            warnings.warn(f"EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); "
                          "raise max_iter or tol", ConvergenceWarning, stacklevel=2)
        return self

    def _forget(self) -> None:
        """Drop fitted attributes, so that a refit may change the number of features."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)

    def _fitted_inputs(self, x, y=None):
        if not hasattr(self, "log_likelihood_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        return self._inputs(x, y)
