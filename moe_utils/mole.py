"""``MixtureOfLinearExperts``: a scikit-learn-style estimator fitted by EM.

It strings together the pure steps of ``em``: initial responsibilities, then E- and M-steps until
the objective (mean log-likelihood plus the gate's log prior / N) improves by less than ``tol``,
from ``n_init`` starts, keeping the best. Shapes: x (N,) or (N, D); y (N,) or (N, 1).

>>> import moe_utils as mu
>>> roof = mu.data.roof()
>>> split = roof.split(2000, test_size=0.5, seed=0)
>>> model = mu.MixtureOfLinearExperts(3, seed=0).fit(split.x_train, split.y_train)
>>> model.weights_.shape, model.noise_var_.shape, model.converged_
(torch.Size([3, 1]), torch.Size([3]), True)
>>> model.log_prob(split.x_test, split.y_test).shape
torch.Size([1000])
"""

import torch

from . import checks, em, experts, gates, mixture
from .gates import standardiser
from .metrics import Scores

__all__ = ["GATES", "MixtureOfLinearExperts"]

GATES = ("softmax", "mlp", "constant")  # the gates EM can fit
INITS = ("kmeans", "kmeans_xy", "random")
SOLVERS = ("closed_form", "gradient")


class MixtureOfLinearExperts(em.EMEstimator):
    """A mixture of E linear experts with Gaussian noise and a gate, fitted by EM.

    Parameters
    ----------
    n_experts : number of experts E (>= 1).
    gate : ``"softmax"`` (linear-softmax, IRLS M-step), ``"mlp"`` (a small tanh network, Gauss-Newton
        steps) or ``"constant"`` (weights that ignore x, Dirichlet(``alpha``) prior). The MLP gate
        starts from the responsibilities of a linear-softmax fit from the same start: fitted
        straight to the k-means regions, a flexible gate locks onto them and EM stalls in poor optima.
        So for ``"mlp"`` every start runs two EMs: a linear-softmax warm start (up to ``max_iter``
        iterations, same ``tol``), then the MLP-gated EM. Only the second is reported in
        ``log_likelihood_history_``, ``n_iter_`` and ``converged_``; ``fit_seconds_`` covers both.
    n_init : number of starts; the one with the best final objective is kept. The default, one,
        is what the k-means start needs: on roof, zig and zig_step it reached the best optimum
        from every seed (chapter 2), and more starts found the same fit at n_init times the cost.
        Use several with ``init="random"``.
    max_iter, tol : stop when the objective per sample improves by less than ``tol``.
    init : starting responsibilities: ``"kmeans"`` (regions in x), ``"kmeans_xy"`` or ``"random"``.
    gate_l2 : precision of the Gaussian prior on the softmax/MLP gate's parameters; it keeps a
        gate finite where the regimes are separable (a jump) instead of an infinitely sharp switch.
    alpha : Dirichlet concentration of the constant gate (>= 1; 1 is a flat prior).
    gate_steps : Newton (softmax) or Gauss-Newton (mlp) iterations per M-step.
    n_hidden : hidden units of the MLP gate.
    min_var : smallest noise variance, as a fraction of var(y) (keeps the likelihood bounded); never
        below N (eps max|y|)^2, the rounding level of the residuals in y's dtype (eps), so that a
        constant y (or N = 1) still fits, with that tiny noise variance.
    expert_solver : ``"closed_form"`` (weighted least squares) or ``"gradient"`` (an inner Adam
        loop of ``gradient_steps`` per M-step: the slow way, for comparison). With ``"gradient"``
        the first M-step of every run is still the closed form (Adam needs a fit to start from);
        the later ones are Adam from the previous fit. They only approach the M-step's optimum, so
        the objective can drop; drops are reported by a ``ConvergenceWarning`` (see ``em.iterate``).
    seed : seeds the starts (start i uses seed + i). device : where to fit (default: x's device).

    Fitted attributes: ``weights_`` (E, D), ``biases_`` (E,), ``noise_var_`` (E,), ``gate_``
    (a ``gates`` module), ``log_likelihood_history_`` (objective per iteration of the kept start),
    ``log_likelihood_`` (its last value), ``converged_``, ``n_iter_``, ``fit_seconds_``, and
    ``restart_log_likelihoods_`` (final objective of every start).
    """

    def __init__(self, n_experts: int, gate: str = "softmax", n_init: int = 1, max_iter: int = 500,
                 tol: float = 1e-6, init: str = "kmeans", gate_l2: float = 1e-2, alpha: float = 1.0,
                 gate_steps: int = 3, min_var: float = 1e-6, expert_solver: str = "closed_form",
                 gradient_steps: int = 200, n_hidden: int = 8, seed: int = 0, device=None):
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.gate = checks.choice("gate", gate, GATES)
        self.n_init = checks.positive_int("n_init", n_init)
        self.max_iter = checks.positive_int("max_iter", max_iter)
        self.tol = checks.finite_float("tol", tol, 0.0)
        self.init = checks.choice("init", init, INITS)
        self.gate_l2 = checks.finite_float("gate_l2", gate_l2, 0.0)
        self.alpha = checks.finite_float("alpha", alpha, 1.0)
        self.gate_steps = checks.positive_int("gate_steps", gate_steps)
        self.min_var = checks.finite_float("min_var", min_var, 0.0)
        self.expert_solver = checks.choice("expert_solver", expert_solver, SOLVERS)
        self.gradient_steps = checks.positive_int("gradient_steps", gradient_steps)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        self.seed = checks.seed(seed)
        self.device = device

    def __repr__(self) -> str:
        return f"MixtureOfLinearExperts(n_experts={self.n_experts}, gate={self.gate!r})"

    # ------------------------------------------------------------------ fitting
    def _fit_once(self, x, y, seed: int) -> em.Run:
        resp = em.init_responsibilities(x, y, self.n_experts, self.init, seed)
        if self.gate == "mlp":  # start from a linear-softmax fit: see the class docstring
            resp = self._em(x, y, resp, "softmax", seed).state[-1]
        return self._em(x, y, resp, self.gate, seed)

    def _em(self, x, y, resp, gate_name: str, seed: int) -> em.Run:
        """EM from starting responsibilities; the state is (gate, weight, bias, var, resp)."""
        eps = torch.finfo(y.dtype).eps
        min_var = max(self.min_var * (y.var().item() if len(y) > 1 else 0.0),
                      len(y) * (eps * y.abs().max().item()) ** 2, torch.finfo(y.dtype).tiny)
        shift, scale = standardiser(x)
        gate = gates.make(gate_name, x.shape[1], self.n_experts, n_hidden=self.n_hidden, shift=shift,
                          scale=scale, generator=torch.Generator().manual_seed(seed)).to(x)

        def step(state):
            gate, weight, bias, var, resp = state
            if self.expert_solver == "closed_form" or weight is None:  # the first M-step: closed form
                weight, bias, var = em.m_step_experts(x, y, resp, min_var)
            else:
                weight, bias, var = em.m_step_experts_gradient(x, y, resp, weight, bias, var,
                                                               self.gradient_steps, min_var=min_var)
            gate = em.m_step_gate(gate, x, resp, self.gate_l2, self.alpha, self.gate_steps)
            resp, log_lik = em.e_step(gate, weight, bias, var, x, y)
            objective = log_lik + em.gate_log_prior(gate, self.gate_l2, self.alpha) / x.shape[0]
            return (gate, weight, bias, var, resp), objective

        return em.iterate(step, (gate, None, None, None, resp), self.max_iter, self.tol, eps)

    def _keep(self, state) -> None:
        self.gate_, self.weights_, self.biases_, self.noise_var_, _ = state

    # ------------------------------------------------------------------ predicting
    def gate_probs(self, x) -> torch.Tensor:
        """g(x): (N, E)."""
        with torch.no_grad():
            return self.gate_(self._fitted_inputs(x)).exp()

    def expert_means(self, x) -> torch.Tensor:
        """Every expert's prediction: (N, E)."""
        return experts.linear_means(self._fitted_inputs(x), self.weights_, self.biases_)

    def predict(self, x) -> torch.Tensor:
        """The mixture mean sum_e g_e(x) mu_e(x): (N,)."""
        x = self._fitted_inputs(x)
        with torch.no_grad():
            return mixture.mean(self.gate_(x), self.expert_means(x))

    def log_prob(self, x, y) -> torch.Tensor:
        """log p(y | x) per sample: (N,)."""
        x, y = self._fitted_inputs(x, y)
        with torch.no_grad():
            return mixture.log_prob(self.gate_(x), self.expert_means(x), self.noise_var_, y)

    def responsibilities(self, x, y) -> torch.Tensor:
        """Posterior P(expert e | x, y): (N, E). Needs y, so it is not a gate for new inputs."""
        x, y = self._fitted_inputs(x, y)
        with torch.no_grad():
            return mixture.responsibilities(self.gate_(x), self.expert_means(x), self.noise_var_, y)

    def score(self, x, y) -> Scores:
        """Test MSE of ``predict`` and mean NLL of ``log_prob``."""
        x, y = self._fitted_inputs(x, y)
        mean, log_p = self.predict(x), self.log_prob(x, y)
        return Scores(((y - mean) ** 2).mean().item(), (-log_p).mean().item())

    # ------------------------------------------------------------------ plumbing
    def _inputs(self, x, y=None):
        """x as (N, D) and y as (N,) on the fitting device; after fit, in the fitted dtype."""
        fitted = getattr(self, "weights_", None)
        x = checks.matrix("x", x, d=None if fitted is None else fitted.shape[1], device=self.device)
        if fitted is not None:
            x = x.to(dtype=fitted.dtype, device=fitted.device)
        if y is None:
            return x
        y = checks.vector("y", y, device=x.device).to(x.dtype)
        checks.same_length(x=x, y=y)
        return x, y
