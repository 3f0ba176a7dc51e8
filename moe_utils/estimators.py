"""scikit-learn-style estimators: thin façades over a ``MixtureOfExperts`` fitted by ``em.fit``.

- ``MixtureOfLinearExperts``: regression, linear Gaussian experts (chapter 2);
- ``MixtureOfLogisticExperts``: classification, linear softmax experts (chapter 4).

Both build the model, pick starting responsibilities, run EM from ``n_init`` starts (start i uses
``seed + i``), keep the best final objective, and report as scikit-learn's ``GaussianMixture``
does: ``converged_``, ``n_iter_``, ``log_likelihood_history_``, ``log_likelihood_``; the fitted
model itself is ``model_``. Shapes: x (N,) or (N, D); y (N,).

>>> import moe_utils as mu
>>> split = mu.data.roof().split(2000, test_size=0.5, seed=0)
>>> model = mu.MixtureOfLinearExperts(3, seed=0).fit(split.x_train, split.y_train)
>>> model.weights_.shape, model.noise_var_.shape, model.converged_
(torch.Size([3, 1]), torch.Size([3]), True)
>>> model.log_prob(split.x_test, split.y_test).shape
torch.Size([1000])
"""

import time
import warnings

import torch

from . import _checks as checks
from . import em, experts, likelihoods, metrics, routing, runtime
from ._scaling import standardiser
from .moe import MixtureOfExperts

__all__ = ["EMEstimator", "MixtureOfLinearExperts", "MixtureOfLogisticExperts"]


class EMEstimator:
    """What both estimators share: the model's parts, the EM starts, restarts and reports.

    Parameters common to both: ``n_experts`` E >= 1; ``router`` ``"linear"`` (linear-softmax,
    Newton/IRLS M-step), ``"mlp"`` (a small tanh network, Gauss-Newton steps, started from a
    linear-router fit: fitted straight to k-means regions a flexible router locks onto them and EM
    stalls in poor optima), ``"constant"`` (weights that ignore x, Dirichlet(``alpha``) prior) or
    ``"kernel"`` (a localised gate with a closed-form M-step); ``n_init`` starts; ``max_iter``,
    ``tol`` on the objective per sample; ``init`` (``em.INITS``); ``router_l2`` the precision of the
    router's Gaussian prior; ``router_steps`` Newton steps per M-step; ``n_hidden`` of the MLP router;
    ``seed``; ``device`` (default: x's). For ``"mlp"`` every start runs two EMs; only the second is
    in ``log_likelihood_history_``, ``n_iter_`` and ``converged_``, ``fit_seconds_`` covers both.
    """

    inits = em.INITS

    def __init__(self, n_experts: int, router: str = "linear", n_init: int = 1, max_iter: int = 500,
                 tol: float = 1e-6, init: str = "kmeans", router_l2: float = 1e-2, alpha: float = 1.0,
                 router_steps: int = 3, n_hidden: int = 8, seed: int = 0, device=None):
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.router = checks.choice("router", router, routing.ROUTERS)
        self.n_init = checks.positive_int("n_init", n_init)
        self.max_iter = checks.positive_int("max_iter", max_iter)
        self.tol = checks.finite_float("tol", tol, 0.0)
        self.init = checks.choice("init", init, self.inits)
        self.router_l2 = checks.finite_float("router_l2", router_l2, 0.0)
        self.alpha = checks.finite_float("alpha", alpha, 1.0)
        self.router_steps = checks.positive_int("router_steps", router_steps)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        self.seed = checks.seed(seed)
        self.device = None if device is None else runtime.device(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_experts={self.n_experts}, router={self.router!r})"

    # ------------------------------------------------------------------ fitting
    def fit(self, x, y):
        """Fit by EM from ``n_init`` starts; keep the best. Returns self."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)  # a refit may change the number of features
        x, y = self._inputs(x, y)
        if x.shape[0] < self.n_experts:
            raise ValueError(f"x has {x.shape[0]} samples, fewer than n_experts={self.n_experts}")
        start = time.perf_counter()
        fits = [self._fit_start(x, y, self.seed + i) for i in range(self.n_init)]
        self.model_, best = max(fits, key=lambda fit: fit[1].history[-1])
        self.log_likelihood_history_, self.log_likelihood_ = best.history, best.history[-1]
        self.converged_, self.n_iter_ = best.converged, len(best.history)
        self.restart_log_likelihoods_ = [run.history[-1] for _, run in fits]
        self.fit_seconds_ = time.perf_counter() - start
        if not self.converged_:
            warnings.warn(f"EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); "
                          "raise max_iter or tol", em.ConvergenceWarning, stacklevel=2)
        return self

    def _fit_start(self, x, y, seed: int):
        resp = em.init_responsibilities(x, y.to(x.dtype), self.n_experts, self.init, seed)
        if self.router == "mlp":  # warm start from a linear router: see the class docstring
            resp = self._run(self._model(x, y, "linear", seed), x, y, resp)[1].state
        return self._run(self._model(x, y, self.router, seed), x, y, resp)

    def _run(self, model, x, y, resp):
        return model, em.fit(model, x, y, resp, self.max_iter, self.tol, router_steps=self.router_steps)

    def _model(self, x, y, router_name: str, seed: int) -> MixtureOfExperts:
        gen = torch.Generator().manual_seed(seed)
        shift, scale = standardiser(x)
        extra = {"n_hidden": self.n_hidden} if router_name == "mlp" else {"alpha": self.alpha} \
            if router_name == "constant" else {}
        net = routing.make(router_name, x.shape[1], self.n_experts, shift=shift, scale=scale, generator=gen,
                           l2=self.router_l2, **extra)
        parts = experts.Linear(x.shape[1], self._n_outputs(), self.n_experts, shift=shift, scale=scale,
                               generator=gen)
        return MixtureOfExperts(net, parts, self._likelihood(x, y)).to(x)

    # ------------------------------------------------------------------ predicting
    def gate_probs(self, x) -> torch.Tensor:
        """g(x): (N, E)."""
        x = self._fitted_inputs(x)
        with torch.no_grad():
            return self.model_(x).routing.log_probs.exp()

    def responsibilities(self, x, y) -> torch.Tensor:
        """Posterior P(expert e | x, y): (N, E). Needs y, so it is not a gate for new inputs."""
        x, y = self._fitted_inputs(x, y)
        with torch.no_grad():
            return self.model_.responsibilities(x, y)

    def log_prob(self, x, y) -> torch.Tensor:
        """log p(y_n | x_n): (N,)."""
        x, y = self._fitted_inputs(x, y)
        with torch.no_grad():
            return self.model_.log_prob(x, y)

    def _fitted_inputs(self, x, y=None):
        if not hasattr(self, "model_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        return self._inputs(x, y)

    def _inputs(self, x, y=None):
        """x as (N, D) on the fitting device (after fit, in the fitted dtype), y as ``_targets``."""
        model = getattr(self, "model_", None)
        x = checks.matrix("x", x, d=None if model is None else model.n_inputs, device=self.device)
        if model is not None:
            p = model.experts.weight
            x = x.to(dtype=p.dtype, device=p.device)
        if y is None:
            return x
        y = self._targets(y, x)
        checks.same_length(x=x, y=y)
        return x, y


class MixtureOfLinearExperts(EMEstimator):
    """A mixture of E linear experts with Gaussian noise and a router, fitted by EM.

    Besides ``EMEstimator``'s parameters: ``min_var`` the smallest noise variance, as a fraction of
    var(y) (it keeps the likelihood bounded: PRML 9.2.1), never below N (eps max|y|)^2, the rounding
    level of the residuals; ``expert_solver`` ``"closed_form"`` (weighted least squares) or
    ``"gradient"`` (``gradient_steps`` Adam steps per M-step: the slow way, for comparison; the
    first M-step of a start is still the closed form, since Adam needs a fit to start from).

    Fitted: ``model_`` and the reports of ``EMEstimator``; ``weights_`` (E, D), ``biases_`` (E,) and
    ``noise_var_`` (E,) in the units of x and y.
    """

    def __init__(self, n_experts: int, router: str = "linear", n_init: int = 1, max_iter: int = 500,
                 tol: float = 1e-6, init: str = "kmeans", router_l2: float = 1e-2, alpha: float = 1.0,
                 router_steps: int = 3, n_hidden: int = 8, min_var: float = 1e-6, expert_solver: str = "closed_form",
                 gradient_steps: int = 200, seed: int = 0, device=None):
        super().__init__(n_experts, router, n_init, max_iter, tol, init, router_l2, alpha, router_steps, n_hidden,
                         seed, device)
        self.min_var = checks.finite_float("min_var", min_var, 0.0)
        self.expert_solver = checks.choice("expert_solver", expert_solver, ("closed_form", "gradient"))
        self.gradient_steps = checks.positive_int("gradient_steps", gradient_steps)

    def _n_outputs(self) -> int:
        return 1

    def _targets(self, y, x) -> torch.Tensor:
        return checks.vector("y", y, device=x.device).to(x.dtype)

    def _likelihood(self, x, y):
        eps = torch.finfo(y.dtype).eps
        floor = max(self.min_var * (y.var().item() if len(y) > 1 else 0.0),
                    len(y) * (eps * y.abs().max().item()) ** 2, torch.finfo(y.dtype).tiny)
        return likelihoods.Gaussian(self.n_experts, 1, min_var=floor)

    def _run(self, model, x, y, resp):
        if self.expert_solver == "closed_form":
            return super()._run(model, x, y, resp)
        em.m_step(model, x, y, resp, router_steps=self.router_steps)  # Adam needs a fit to start from
        return model, em.fit(model, x, y, resp, self.max_iter, self.tol, router_steps=self.router_steps,
                             gradient_steps=self.gradient_steps)

    @property
    def weights_(self) -> torch.Tensor:
        """Slopes (E, D) in the units of x."""
        return self.model_.experts.weight[:, :, 0].detach() / self.model_.experts.scale

    @property
    def biases_(self) -> torch.Tensor:
        """Intercepts (E,) in the units of x and y."""
        return self.model_.experts.bias[:, 0].detach() - self.weights_ @ self.model_.experts.shift

    @property
    def noise_var_(self) -> torch.Tensor:
        """Noise variances (E,)."""
        return self.model_.likelihood.var[:, 0].detach()

    def expert_means(self, x) -> torch.Tensor:
        """Every expert's prediction: (N, E)."""
        x = self._fitted_inputs(x)
        with torch.no_grad():
            return self.model_.experts(x)[:, :, 0]

    def predict(self, x) -> torch.Tensor:
        """The mixture mean sum_e g_e(x) mu_e(x): (N,)."""
        x = self._fitted_inputs(x)
        with torch.no_grad():
            return self.model_.predict(x)[:, 0]

    def score(self, x, y) -> metrics.Scores:
        """Test MSE of ``predict`` and mean NLL of ``log_prob``."""
        x, y = self._fitted_inputs(x, y)
        return metrics.scores(y, self.predict(x), self.log_prob(x, y))


class MixtureOfLogisticExperts(EMEstimator):
    """A mixture of E logistic (C = 2) or softmax (C > 2) experts and a router, fitted by EM.

    Besides ``EMEstimator``'s parameters: ``n_classes`` C >= 2; ``expert_l2`` the precision of the
    experts' Gaussian prior (it keeps them finite where a region is separable); ``expert_steps``
    Newton (IRLS) steps per M-step: one step raises the M-step's objective without solving it, a
    generalised EM step, at a fraction of the cost. The defaults differ from regression's: three
    starts, ``tol=1e-4``, one router step. ``init`` is ``"kmeans"`` or ``"random"``.
    """

    inits = ("kmeans", "random")

    def __init__(self, n_experts: int, n_classes: int = 2, router: str = "linear", n_init: int = 3,
                 max_iter: int = 300, tol: float = 1e-4, init: str = "kmeans", router_l2: float = 1e-2,
                 expert_l2: float = 1e-2, alpha: float = 1.0, router_steps: int = 1, expert_steps: int = 1,
                 n_hidden: int = 8, seed: int = 0, device=None):
        super().__init__(n_experts, router, n_init, max_iter, tol, init, router_l2, alpha, router_steps, n_hidden,
                         seed, device)
        self.n_classes = checks.positive_int("n_classes", n_classes, minimum=2)
        self.expert_l2 = checks.finite_float("expert_l2", expert_l2, 0.0)
        self.expert_steps = checks.positive_int("expert_steps", expert_steps)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, n_classes={self.n_classes})"

    def _n_outputs(self) -> int:
        return self.n_classes

    def _targets(self, y, x) -> torch.Tensor:
        return checks.labels("y", y, self.n_classes, device=x.device)

    def _likelihood(self, x, y):
        return likelihoods.Categorical(self.n_experts, self.n_classes, l2=self.expert_l2, steps=self.expert_steps)

    def _run(self, model, x, y, resp):
        em.m_step(model, x, y, resp, router_steps=self.router_steps, expert_steps=10)  # a first fit to the start
        return super()._run(model, x, y, resp)

    def expert_probs(self, x) -> torch.Tensor:
        """Every expert's class probabilities p_e(c | x): (N, E, C)."""
        x = self._fitted_inputs(x)
        with torch.no_grad():
            return torch.softmax(self.model_.experts(x), -1)

    def predict_log_proba(self, x) -> torch.Tensor:
        """log p(c | x) = logsumexp_e(log g_e(x) + log p_e(c | x)): (N, C)."""
        x = self._fitted_inputs(x)
        with torch.no_grad():
            return self.model_.predict(x)

    def predict_proba(self, x) -> torch.Tensor:
        """p(c | x): (N, C); rows sum to one."""
        return torch.softmax(self.predict_log_proba(x), -1)  # exactly in [0, 1], unlike exp

    def predict(self, x) -> torch.Tensor:
        """The most probable class: (N,) long."""
        return self.predict_log_proba(x).argmax(-1)

    def score(self, x, y) -> metrics.ClassScores:
        """Accuracy of ``predict`` and mean NLL (nats) of ``predict_log_proba``."""
        x, y = self._fitted_inputs(x, y)
        return metrics.class_scores(self.predict_log_proba(x), y)
