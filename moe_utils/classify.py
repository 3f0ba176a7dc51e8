"""Classification with a mixture of experts: the blobs data set, an EM estimator, an nn.Module.

A mixture of logistic (softmax) experts mixes the experts' class probabilities, not their logits:

    p(y | x) = sum_e g_e(x) p_e(y | x),    p_e(y | x) = softmax(V_e x~)_y    (x~ = standardised x)

Expert e is a ``gates.SoftmaxGate`` used as a C-class linear classifier (C = 2: logistic
regression). EM (Jordan & Jacobs, 1994) alternates the E-step r_ne ∝ g_e(x_n) p_e(y_n | x_n) (in
log space) with Newton (IRLS) M-steps: ``em.fit_softmax`` on the soft labels r_ne one_hot(y_n) for
each expert, ``em.m_step_gate`` for the gate. ``MoEClassifier`` is the model for gradient training;
its ``combine="logits"`` is the common shortcut that blends logits instead, and
``init_from_responsibilities`` starts it where EM starts. Shapes: x (N, D),
y (N,) in {0, ..., C-1}, gate (N, E), experts' probabilities (N, E, C), predict_proba (N, C).

>>> import moe_utils as mu
>>> split = mu.classify.blobs_split(600, seed=0)
>>> bool((mu.classify.circle_rule(split.x_train) == split.y_train).all())
True
>>> model = mu.classify.MixtureOfLogisticExperts(2, n_init=1, seed=0)
>>> model.fit(split.x_train, split.y_train).predict_proba(split.x_test).shape
torch.Size([300, 2])
>>> model.score(split.x_test, split.y_test).accuracy > 0.9  # one line per blob: about 94%
True
"""

import copy
import math

import torch
from torch import nn

from . import checks, data, em, gates, metrics, runtime
from .experts import LinearExperts
from .gates import standardiser
from .mole import GATES

__all__ = ["BEST_ACCURACY", "BEST_NLL", "CENTRE", "RADIUS", "MixtureOfLogisticExperts", "MoEClassifier",
           "blobs", "blobs_split", "circle_rule", "e_step", "expert_log_probs", "init_from_responsibilities",
           "m_step_experts", "mse_loss", "nll_loss"]

CENTRE, RADIUS = (0.0, -2.0), math.sqrt(13.0)  # the circle that splits the blobs
BEST_ACCURACY, BEST_NLL = 1.0, 0.0  # labels are a deterministic function of x


# ---------------------------------------------------------------------- data
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
    dtype = checks.float_dtype("dtype", dtype)
    device = runtime.device(device) if device is not None else None
    z = (torch.arange(n) >= n // 2).long()
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    x = (centres[z] + torch.randn(n, 2, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    return x, circle_rule(x), z.to(x.device)  # labels of the cast x, so circle_rule(x) == y exactly


def blobs_split(n: int, test_size: float = 0.5, seed: int = 0, dtype=torch.float32, device=None) -> data.Split:
    """``blobs(n, seed)`` shuffled and cut into a ``data.Split``: x (N, 2), y and z (N,)."""
    x, y, z = blobs(n, seed=seed, dtype=dtype, device=device)
    x_tr, x_te, y_tr, y_te, z_tr, z_te = data.train_test_split(x, y, z, test_size=test_size, seed=seed)
    return data.Split(x_tr, y_tr, z_tr, x_te, y_te, z_te)


# ---------------------------------------------------------------------- EM steps (pure functions)
def expert_log_probs(experts, x) -> torch.Tensor:
    """log p_e(c | x) of every expert: (N, E, C)."""
    return torch.stack([expert(x) for expert in experts], dim=1)


def e_step(gate, experts, x, y) -> tuple[torch.Tensor, float]:
    """Responsibilities r_ne ∝ g_e(x_n) p_e(y_n | x_n), (N, E), and the mean log-likelihood."""
    with torch.no_grad():
        joint = gate(x) + expert_log_probs(experts, x)[torch.arange(len(y)), :, y]   # (N, E)
        return torch.softmax(joint, -1), torch.logsumexp(joint, -1).mean().item()


def m_step_experts(experts, x, y, resp, l2: float = 1e-2, steps: int = 1) -> nn.ModuleList:
    """New experts (``experts`` unchanged): e raises sum_n r_ne log p_e(y_n | x_n) - l2/2 |V_e|^2.

    A weighted softmax regression each: ``steps`` IRLS steps of ``em.fit_softmax`` on the soft
    labels r_ne one_hot(y_n), (N, C). x (N, D), y (N,), resp (N, E). For C = 2 only
    w_e = v_e1 - v_e0 enters the likelihood and the prior is l2/4 (|w_e|^2 + |v_e0 + v_e1|^2), so
    a Newton step on V_e moves w_e as IRLS on sum_n r_ne log p_e(y_n | x_n) - l2/4 |w_e|^2 would:
    gradient X~^T R_e (y - p_e) - (l2/2) w_e, curvature X~^T R_e S_e X~ + (l2/2) I (chapter 4).
    """
    one_hot = nn.functional.one_hot(y, experts[0].n_experts).to(x.dtype)  # a SoftmaxGate's "experts": C
    new = copy.deepcopy(experts)
    with torch.no_grad():
        for e, expert in enumerate(new):
            em.fit_softmax(expert, x, resp[:, e, None] * one_hot, l2, steps)
    return new


def _log_prior(gate, experts, gate_l2: float, expert_l2: float, alpha: float) -> float:
    return em.gate_log_prior(gate, gate_l2, alpha) + sum(em.gate_log_prior(ex, expert_l2) for ex in experts)


# ---------------------------------------------------------------------- the EM estimator
class MixtureOfLogisticExperts(em.EMEstimator):
    """A mixture of E logistic (C = 2) or softmax (C > 2) experts and a gate, fitted by EM.

    Parameters: ``n_experts`` E >= 1; ``n_classes`` C >= 2; ``gate`` ``"softmax"``, ``"mlp"`` or
    ``"constant"`` (as in ``MixtureOfLinearExperts``); ``n_init`` starts, the best objective is kept;
    ``max_iter``, ``tol`` on the objective per sample; ``init`` ``"kmeans"`` (clusters of x) or
    ``"random"``; ``gate_l2``, ``expert_l2`` Gaussian prior precisions (they keep the weights finite
    where a region is separable); ``alpha`` the constant gate's Dirichlet; ``gate_steps``,
    ``expert_steps`` Newton steps per M-step (one step raises the M-step's objective without solving
    it, a generalised EM step: the likelihood still never decreases, at a fraction of the cost);
    ``n_hidden`` of the MLP gate; ``seed`` (start i uses seed + i); ``device`` (default: x's).

    Fitted: ``gate_``, ``experts_`` (E ``SoftmaxGate`` classifiers), ``log_likelihood_history_``
    (mean log-likelihood + log priors / N, per iteration of the kept start), ``log_likelihood_``,
    ``converged_``, ``n_iter_``, ``fit_seconds_``, ``restart_log_likelihoods_``.
    """

    def __init__(self, n_experts: int, n_classes: int = 2, gate: str = "softmax", n_init: int = 3,
                 max_iter: int = 300, tol: float = 1e-4, init: str = "kmeans", gate_l2: float = 1e-2,
                 expert_l2: float = 1e-2, alpha: float = 1.0, gate_steps: int = 1, expert_steps: int = 1,
                 n_hidden: int = 8, seed: int = 0, device=None):
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.n_classes = checks.positive_int("n_classes", n_classes, minimum=2)
        self.gate = checks.choice("gate", gate, GATES)
        self.n_init = checks.positive_int("n_init", n_init)
        self.max_iter = checks.positive_int("max_iter", max_iter)
        self.tol = checks.finite_float("tol", tol, 0.0)
        self.init = checks.choice("init", init, ("kmeans", "random"))
        self.gate_l2 = checks.finite_float("gate_l2", gate_l2, 0.0)
        self.expert_l2 = checks.finite_float("expert_l2", expert_l2, 0.0)
        self.alpha = checks.finite_float("alpha", alpha, 1.0)
        self.gate_steps = checks.positive_int("gate_steps", gate_steps)
        self.expert_steps = checks.positive_int("expert_steps", expert_steps)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        self.seed, self.device = checks.seed(seed), device

    def __repr__(self) -> str:
        return (f"MixtureOfLogisticExperts(n_experts={self.n_experts}, n_classes={self.n_classes}, "
                f"gate={self.gate!r})")

    def _fit_once(self, x, y, seed: int) -> em.Run:
        resp = em.init_responsibilities(x, y.to(x.dtype), self.n_experts, self.init, seed)
        if self.gate == "mlp":  # start from a linear-softmax fit, as MixtureOfLinearExperts does
            resp = self._em(x, y, resp, "softmax", seed).state[-1]
        return self._em(x, y, resp, self.gate, seed)

    def _em(self, x, y, resp, gate_name: str, seed: int) -> em.Run:
        """EM from starting responsibilities; the state is (gate, experts, resp)."""
        gen = torch.Generator().manual_seed(seed)
        shift, scale = standardiser(x)
        gate = gates.make(gate_name, x.shape[1], self.n_experts, n_hidden=self.n_hidden, generator=gen,
                          shift=shift, scale=scale).to(x)
        experts = nn.ModuleList(gates.make("softmax", x.shape[1], self.n_classes, generator=gen, shift=shift,
                                           scale=scale).to(x) for _ in range(self.n_experts))
        experts = m_step_experts(experts, x, y, resp, self.expert_l2, steps=10)  # a first fit to the start

        def step(state):
            gate, experts, resp = state
            experts = m_step_experts(experts, x, y, resp, self.expert_l2, self.expert_steps)
            gate = em.m_step_gate(gate, x, resp, self.gate_l2, self.alpha, self.gate_steps)
            resp, log_lik = e_step(gate, experts, x, y)
            prior = _log_prior(gate, experts, self.gate_l2, self.expert_l2, self.alpha)
            return (gate, experts, resp), log_lik + prior / x.shape[0]

        return em.iterate(step, (gate, experts, resp), self.max_iter, self.tol)

    def _keep(self, state) -> None:
        self.gate_, self.experts_, _ = state

    # ------------------------------------------------------------------ predicting
    @torch.no_grad()
    def gate_probs(self, x) -> torch.Tensor:
        """g(x): (N, E)."""
        return self.gate_(self._fitted_inputs(x)).exp()

    @torch.no_grad()
    def expert_probs(self, x) -> torch.Tensor:
        """Every expert's class probabilities p_e(c | x): (N, E, C)."""
        return expert_log_probs(self.experts_, self._fitted_inputs(x)).exp()

    @torch.no_grad()
    def predict_log_proba(self, x) -> torch.Tensor:
        """log p(c | x) = logsumexp_e(log g_e(x) + log p_e(c | x)): (N, C)."""
        x = self._fitted_inputs(x)
        log_p = torch.logsumexp(self.gate_(x)[:, :, None] + expert_log_probs(self.experts_, x), dim=1)
        return log_p.clamp_max(0.0)  # a probability is at most 1, whatever float32 rounding says

    def predict_proba(self, x) -> torch.Tensor:
        """p(c | x): (N, C); rows sum to one."""
        return torch.softmax(self.predict_log_proba(x), -1)  # exactly in [0, 1], unlike exp

    def predict(self, x) -> torch.Tensor:
        """The most probable class: (N,) long."""
        return self.predict_log_proba(x).argmax(-1)

    def log_prob(self, x, y) -> torch.Tensor:
        """log p(y_n | x_n): (N,)."""
        x, y = self._fitted_inputs(x, y)
        return self.predict_log_proba(x)[torch.arange(len(y)), y]

    def responsibilities(self, x, y) -> torch.Tensor:
        """Posterior P(expert e | x, y): (N, E). Needs y, so it is not a gate for new inputs."""
        x, y = self._fitted_inputs(x, y)
        return e_step(self.gate_, self.experts_, x, y)[0]

    def score(self, x, y) -> metrics.ClassScores:
        """Accuracy of ``predict`` and mean NLL (nats) of ``predict_log_proba``."""
        x, y = self._fitted_inputs(x, y)
        return metrics.class_scores(self.predict_log_proba(x), y)

    def _inputs(self, x, y=None):
        """x as (N, D) and y as labels (N,) on the fitting device; after fit, in the fitted dtype."""
        fitted = getattr(self, "gate_", None)
        x = checks.matrix("x", x, d=None if fitted is None else fitted.n_inputs, device=self.device)
        if fitted is not None:
            x = x.to(dtype=fitted.shift.dtype, device=fitted.shift.device)
        if y is None:
            return x
        y = checks.labels("y", y, self.n_classes, device=x.device)
        checks.same_length(x=x, y=y)
        return x, y


# ---------------------------------------------------------------------- gradient training
class MoEClassifier(nn.Module):
    """Stacked linear experts (N, D) -> logits (N, E, C) and a gate, as an ``nn.Module``.

    ``combine="probs"``: the mixture, log p(c | x) = logsumexp_e(log g_e + log_softmax(logits_e)_c).
    ``combine="logits"``: the shortcut, log_softmax(sum_e g_e logits_e): one linear classifier whose
    weights vary with x; its experts are not classifiers of their own. The experts see the gate's
    standardised inputs. Forward returns log-probabilities (N, C).
    """

    def __init__(self, experts: nn.Module, gate: nn.Module, combine: str = "probs"):
        super().__init__()
        self.experts, self.gate = experts, gate
        self.combine = checks.choice("combine", combine, ("probs", "logits"))

    @classmethod
    def linear(cls, n_inputs: int, n_classes: int, n_experts: int, gate: str = "softmax",
               combine: str = "probs", n_hidden: int = 16, seed: int = 0, shift=None, scale=None):
        """Linear experts and a ``"softmax"`` or ``"mlp"`` gate, all drawn from ``seed``."""
        gate = checks.choice("gate", gate, ("softmax", "mlp"))
        gen = torch.Generator().manual_seed(checks.seed(seed))
        experts = LinearExperts(n_inputs, checks.positive_int("n_classes", n_classes, minimum=2),
                                n_experts, generator=gen)
        return cls(experts, gates.make(gate, n_inputs, n_experts, n_hidden=n_hidden, generator=gen,
                                       shift=shift, scale=scale), combine)

    def parts(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(log g(x) (N, E), the experts' logits (N, E, C))."""
        x = checks.inputs(x, self.gate.n_inputs)
        return self.gate(x), self.experts(self.gate.features(x))

    def forward(self, x) -> torch.Tensor:
        log_g, logits = self.parts(x)
        if self.combine == "logits":
            return torch.log_softmax(torch.einsum("ne,nec->nc", log_g.exp(), logits), -1)
        return torch.logsumexp(log_g[:, :, None] + torch.log_softmax(logits, -1), dim=1)

    @torch.no_grad()
    def gate_probs(self, x) -> torch.Tensor:
        """g(x): (N, E), for x (N, D) of any dtype or device (as are the next two); NaN/inf raise."""
        return self.parts(self._checked(x))[0].exp()

    @torch.no_grad()
    def expert_probs(self, x) -> torch.Tensor:
        """softmax of every expert's logits: (N, E, C) (for ``"logits"``, not a part of p(y | x))."""
        return torch.softmax(self.parts(self._checked(x))[1], -1)

    @torch.no_grad()
    def predict_proba(self, x) -> torch.Tensor:
        """p(c | x): (N, C)."""
        return torch.softmax(self(self._checked(x)), -1)

    def _checked(self, x) -> torch.Tensor:
        """x (N, D) validated in full (unlike ``forward``, the training hot path), like the parameters."""
        p = next(self.parameters())
        return checks.matrix("x", x, d=self.gate.n_inputs).to(dtype=p.dtype, device=p.device)


def init_from_responsibilities(model: MoEClassifier, x, y, resp, l2: float = 1e-2,
                               steps: int = 10) -> MoEClassifier:
    """Start gradient training where EM starts: one M-step from responsibilities, in place.

    Each linear expert is fitted as a softmax regression to the soft labels r_ne one_hot(y_n)
    (``m_step_experts``, on the gate's standardised inputs, which the experts see), and the gate
    to ``resp`` (``em.fit_softmax``), ``steps`` Newton steps each with prior precision ``l2``.
    x (N, D), y (N,) labels, resp (N, E) (for example ``em.init_responsibilities(x, y, E)``).
    Returns ``model``.
    """
    if not isinstance(model, MoEClassifier) or not isinstance(model.experts, LinearExperts):
        raise TypeError("model must be an MoEClassifier with LinearExperts, got "
                        f"{type(model).__name__}")
    gate = model.gate
    n_classes, n_experts = model.experts.weight.shape[2], gate.n_experts
    p = next(model.parameters())
    x = checks.matrix("x", x, d=gate.n_inputs).to(dtype=p.dtype, device=p.device)
    y = checks.labels("y", y, n_classes, n=x.shape[0], device=p.device)
    resp = checks.matrix("resp", resp, d=n_experts).to(dtype=p.dtype, device=p.device)
    checks.same_length(x=x, resp=resp)
    if (resp < 0).any() or not torch.allclose(resp.sum(-1), torch.ones_like(resp[:, 0])):
        raise ValueError("resp must hold probabilities over the experts (rows >= 0 summing to 1)")
    steps = checks.positive_int("steps", steps)
    l2 = checks.finite_float("l2", l2, 0.0)
    experts = nn.ModuleList(gates.SoftmaxGate(gate.n_inputs, n_classes, shift=gate.shift, scale=gate.scale).to(x)
                            for _ in range(n_experts))
    with torch.no_grad():
        for e, expert in enumerate(experts):  # start each from the model's own expert
            expert.weight.copy_(model.experts.weight[e].T)
            expert.bias.copy_(model.experts.bias[e])
        experts = m_step_experts(experts, x, y, resp, l2, steps)
        model.experts.weight.copy_(torch.stack([ex.weight.T for ex in experts]))    # (E, D, C)
        model.experts.bias.copy_(torch.stack([ex.bias for ex in experts]))          # (E, C)
        em.fit_softmax(gate, x, resp, l2=l2, steps=steps)
    return model


def _loss_labels(log_probs: torch.Tensor, y) -> torch.Tensor:
    """y as long labels (N,) for log_probs (N, C). An integer tensor (N,) only gets its length and
    range checked (cheap in a training loop); anything else goes through ``checks.labels``."""
    if not torch.is_tensor(log_probs):
        raise TypeError(f"log_probs must be a tensor (N, C), got {type(log_probs).__name__}")
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must have shape (N, C), got {tuple(log_probs.shape)}")
    n, n_classes = log_probs.shape
    integer = torch.is_tensor(y) and not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
    if not integer or y.ndim != 1:
        return checks.labels("y", y, n_classes, n=n, device=log_probs.device)
    if y.shape[0] != n:
        raise ValueError(f"y must have {n} entries (one per row of log_probs), got {y.shape[0]}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(f"y must hold class labels in {{0, ..., {n_classes - 1}}}, got {y[bad][0].item()}")
    return y.long()


def nll_loss(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood -mean_n log p(y_n | x_n); log_probs (N, C), y (N,) in {0, ..., C-1}."""
    y = _loss_labels(log_probs, y)
    return -log_probs.gather(1, y[:, None]).mean()


def mse_loss(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The shortcut's loss: mean over samples and classes of (p_c - one_hot(y)_c)^2.

    For C = 2 this equals mean_n (p(1 | x_n) - y_n)^2, an MSE on the sigmoid output.
    log_probs (N, C), y (N,) in {0, ..., C-1}.
    """
    y = _loss_labels(log_probs, y)
    one_hot = nn.functional.one_hot(y, log_probs.shape[1]).to(log_probs.dtype)
    return ((log_probs.exp() - one_hot) ** 2).mean()
