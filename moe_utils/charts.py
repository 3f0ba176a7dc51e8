"""A mixture of linear charts: probabilistic PCA with one latent dimension, fitted by EM.

The linear special case of an atlas of autoencoders (chapter 6): each chart e is a line through
a mean m_e with direction u_e; a point is coded by (chart, u_e^T (x - m_e)) and reconstructed by
its orthogonal projection m_e + u_e u_e^T (x - m_e). Its probabilistic form is a mixture of
probabilistic PCA models (Tipping and Bishop, 1999):

    p(x) = sum_e pi_e N(x; m_e, C_e),    C_e = w_e w_e^T + var_e I,    w_e = sqrt(lambda_e - var_e) u_e

Every step of EM is in closed form, as in chapter 2: the E-step gives responsibilities r_ne; the
M-step gives pi_e = mean_n r_ne, m_e the r-weighted mean, and (w_e, var_e) from the eigenvectors
of the r-weighted covariance S_e (its largest eigenvalue lambda_e and eigenvector u_e; var_e the
mean of the other eigenvalues), the maximum-likelihood PPCA of S_e. The log-likelihood never
decreases; ``fit`` runs it through ``em.iterate``, the course's one EM loop. With E = 1 it is PCA.
Charts are chosen by the posterior p(e | x), the mixture's own router. Shapes: x (N, D), D >= 2.

>>> import torch, moe_utils as mu
>>> x = mu.data2d.curve("circle", noise=0.05).sample(400, seed=0, dtype=torch.float64)[0]
>>> charts = mu.charts.LinearCharts(n_experts=8, seed=0).fit(x)
>>> charts.directions_.shape, round(charts.weights_.sum().item(), 6)
(torch.Size([8, 2]), 1.0)
>>> charts.mse(x) < 0.01                                      # 8 chords of a unit circle
True
"""

import math

import torch

from . import _checks as checks
from . import em, mixture
from .autoencoder import Atlas

__all__ = ["LinearCharts"]


class LinearCharts:
    """A mixture of ``n_experts`` one-dimensional probabilistic PCA models (linear charts).

    ``min_var`` floors each var_e (relative to the data's mean feature variance) so that a chart
    holding a few collinear points cannot make the likelihood infinite. ``init``: starting
    responsibilities, as ``em.init_responsibilities``. After ``fit``: ``weights_`` (E,),
    ``means_`` (E, D), ``directions_`` (E, D) unit vectors, ``loadings_`` w (E, D),
    ``noise_var_`` (E,), ``log_likelihood_history_`` (mean log p(x) per iteration), ``converged_``.
    """

    def __init__(self, n_experts: int, max_iter: int = 300, tol: float = 1e-7, min_var: float = 1e-6,
                 init: str = "kmeans", seed: int = 0):
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.max_iter = checks.positive_int("max_iter", max_iter)
        self.tol = checks.finite_float("tol", tol, 0.0)
        self.min_var = checks.finite_float("min_var", min_var, 0.0)
        self.init = checks.choice("init", init, em.INITS)
        self.seed = checks.seed(seed)

    def fit(self, x, start: torch.Tensor | None = None) -> "LinearCharts":
        """EM from ``init`` responsibilities, or from ``start`` (N, E) if given, until the mean
        log-likelihood gains less than ``tol``."""
        x = checks.matrix("x", x)
        if x.shape[1] < 2:
            raise ValueError(f"x must have at least 2 features (a line in a plane or more), got {x.shape[1]}")
        if x.shape[0] < 2 * self.n_experts:
            raise ValueError(f"x must have at least 2 samples per chart ({2 * self.n_experts}), got {x.shape[0]}")
        self._floor = self.min_var * x.var(0).mean().item()
        self._centre = x.mean(0)
        if start is None:
            start = em.init_responsibilities(x, x, self.n_experts, self.init, seed=self.seed)
        elif start.shape != (x.shape[0], self.n_experts):
            raise ValueError(f"start must have shape (N, {self.n_experts}) for the N rows of x, "
                             f"got {tuple(start.shape)}")
        resp = start.to(x)

        def step(resp):
            self._m_step(x, resp)
            resp, log_p = mixture.e_step(self._log_weights(), self._log_lik(x))
            return resp, log_p.mean().item()

        run = em.iterate(step, resp, self.max_iter, self.tol, torch.finfo(x.dtype).eps)
        self.log_likelihood_history_, self.converged_ = run.history, run.converged
        return self

    def _m_step(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        """Closed form: weights, means, and the PPCA of each chart's weighted covariance."""
        total = resp.sum(0).clamp_min(torch.finfo(x.dtype).tiny)              # (E,)
        self.weights_ = total / total.sum()
        d = x.shape[1]
        z = x - self._centre                                                   # centred once, (N, D)
        moments = resp.T @ torch.cat([z, (z[:, :, None] * z[:, None, :]).flatten(1)], 1) / total[:, None]
        mean = moments[:, :d]                                                  # (E, D)
        cov = moments[:, d:].reshape(-1, d, d) - mean[:, :, None] * mean[:, None, :]  # (E, D, D)
        self.means_ = mean + self._centre
        values, vectors = torch.linalg.eigh(cov)                               # ascending
        self.noise_var_ = values[:, :-1].mean(-1).clamp_min(self._floor)       # (E,)
        self.directions_ = vectors[:, :, -1]                                   # (E, D)
        spread = (values[:, -1] - self.noise_var_).clamp_min(0.0)
        self.loadings_ = self.directions_ * spread.sqrt()[:, None]             # (E, D)

    def _log_weights(self) -> torch.Tensor:
        return torch.log(self.weights_.clamp_min(torch.finfo(self.weights_.dtype).tiny))

    def _log_lik(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x_n; m_e, w_e w_e^T + var_e I): (N, E), by the matrix determinant lemma."""
        d = x.shape[1]
        r = x[:, None, :] - self.means_                                        # (N, E, D)
        var, ww = self.noise_var_, (self.loadings_**2).sum(-1)                 # (E,), (E,)
        along = (r * self.loadings_).sum(-1)                                  # (N, E)
        maha = ((r**2).sum(-1) - along**2 / (var + ww)) / var
        log_det = (d - 1) * torch.log(var) + torch.log(var + ww)
        return -0.5 * (maha + log_det + d * math.log(2 * math.pi))

    def _fitted(self, x) -> torch.Tensor:
        if not hasattr(self, "means_"):
            raise RuntimeError("call fit(x) first")
        return checks.matrix("x", x, d=self.means_.shape[1]).to(self.means_)

    def log_prob(self, x) -> torch.Tensor:
        """log p(x_n) under the mixture: (N,)."""
        x = self._fitted(x)
        return mixture.log_prob(self._log_weights(), self._log_lik(x))

    def responsibilities(self, x) -> torch.Tensor:
        """p(chart e | x_n): (N, E)."""
        x = self._fitted(x)
        return mixture.e_step(self._log_weights(), self._log_lik(x))[0]

    def atlas(self, x) -> Atlas:
        """Each point's most probable chart, its code u_e^T (x - m_e) and its orthogonal projection
        onto that chart's line (the best reconstruction from the code; the posterior mean of the
        PPCA latent would shrink it towards m_e)."""
        x = self._fitted(x)
        chosen = self.responsibilities(x).argmax(-1)                           # (N,)
        u, m = self.directions_[chosen], self.means_[chosen]                   # (N, D) each
        code = ((x - m) * u).sum(-1)
        return Atlas(chosen, code, m + code[:, None] * u)

    def mse(self, x) -> float:
        """The mean over points of |x - x_hat|^2 for the charts ``atlas`` picks."""
        x = self._fitted(x)
        return ((self.atlas(x).reconstruction - x) ** 2).sum(-1).mean().item()
