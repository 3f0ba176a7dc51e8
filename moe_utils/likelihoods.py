"""Likelihood heads: how an expert's output explains a target, and their M-steps.

- ``Gaussian``: y | expert e ~ N(f_e(x), diag(var_e)), a learned noise variance per expert and
  output, ``log_var`` (E, O); or tied (``tied="outputs"``: var_e I, log_var (E, 1); ``tied="all"``:
  one var I for every expert, log_var (1, 1)). Its M-step is weighted least squares for experts that
  are linear in their parameters, and the weighted residual variance for the noise.
- ``Categorical``: y | expert e ~ Categorical(softmax(f_e(x))), the experts' outputs being
  logits (E, C). Its M-step is IRLS, batched over experts, with a Gaussian prior ``l2``.

Both share one interface: ``log_lik(expert_out, y)`` (N, E) for the E-step and the mixture
likelihood, ``predict`` and ``blend`` for a routing, ``m_step`` and ``log_prior`` for EM.
Expert outputs may carry leading posterior-sample axes: (S, N, E, O) -> (S, N, E).

>>> import torch, moe_utils as mu
>>> head = mu.likelihoods.Gaussian(n_experts=2, var=0.01)
>>> head.log_lik(torch.tensor([[[0.0], [1.0]]]), torch.tensor([0.9])).shape   # (N, E)
torch.Size([1, 2])
"""

import math

import torch
from torch import nn

from . import _checks as checks
from . import mixture, solvers

__all__ = ["TIES", "Categorical", "Gaussian"]


TIES = ("none", "outputs", "all")


class Gaussian(nn.Module):
    """Gaussian experts: log_var (E, O), each variance at least ``min_var`` after an M-step.

    ``tied`` shares the variance: ``"none"`` (the default) one per expert and output, (E, O);
    ``"outputs"`` one per expert for all its outputs, var_e I, (E, 1) (an isotropic expert: an
    autoencoder's error is a distance, whatever the axes); ``"all"`` one for every expert and
    output, var I, (1, 1). ``var`` broadcasts to (E, O) wherever it is used.
    """

    def __init__(self, n_experts: int, n_outputs: int = 1, var: float = 1.0, min_var: float = 0.0,
                 tied: str = "none"):
        super().__init__()
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.n_outputs = checks.positive_int("n_outputs", n_outputs)
        var = checks.finite_float("var", var, 0.0, low_open=True)
        self.min_var = checks.finite_float("min_var", min_var, 0.0)
        self.tied = checks.choice("tied", tied, TIES)
        shape = {"none": (n_experts, n_outputs), "outputs": (n_experts, 1), "all": (1, 1)}[self.tied]
        self.log_var = nn.Parameter(torch.full(shape, math.log(var)))

    @property
    def var(self) -> torch.Tensor:
        """The noise variances: (E, O), or (E, 1) or (1, 1) when tied (they broadcast to (E, O))."""
        return self.log_var.exp()

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """y as (N, O); a vector (N,) is read as one output."""
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[1] != self.n_outputs:
            raise ValueError(f"y must have shape (N, {self.n_outputs})" + (" or (N,)" if self.n_outputs == 1 else "")
                             + f", got {tuple(y.shape)}")
        return y

    def log_lik(self, expert_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log N(y_n; f_ne, var_e), summed over outputs: (..., N, E, O), (N, O) -> (..., N, E)."""
        y = self.targets(y)
        return mixture.gaussian_log_prob(y[:, None, :], expert_out, self.var).sum(-1)

    def predict(self, routing, expert_out: torch.Tensor) -> torch.Tensor:
        """The mixture's mean sum_e w_e f_e(x): (N, O)."""
        return mixture.combine(routing, expert_out)

    def blend(self, routing, expert_out: torch.Tensor) -> torch.Tensor:
        """The blended prediction the cooperative loss scores: the mean, (N, O)."""
        return mixture.combine(routing, expert_out)

    def log_prior(self, experts) -> torch.Tensor:
        return self.log_var.new_zeros(())

    def m_step(self, experts, x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor, steps: int | None = None,
               solve_experts: bool = True) -> None:
        """The closed-form M-step in place: weighted least squares for the experts (which must have
        a ``design``; skipped if not ``solve_experts``), then every expert's weighted residual
        variance (averaged over what ``tied`` shares). x (N, D), y (N, O) or (N,), resp (N, E);
        ``steps`` is unused (no iterations)."""
        y = self.targets(y)
        with torch.no_grad():
            if solve_experts:
                experts.load_linear(*solvers.weighted_least_squares(experts.design(x), y, resp))
            var = solvers.weighted_variance(y, experts(x), resp)                  # (E, O)
            if self.tied == "outputs":
                var = var.mean(-1, keepdim=True)
            elif self.tied == "all":  # the pooled variance: each expert weighted by its share
                share = resp.sum(0) / resp.sum()
                var = (share[:, None] * var).sum(0, keepdim=True).mean(-1, keepdim=True)
            self.log_var.copy_(var.clamp_min(self.min_var).log())


class Categorical(nn.Module):
    """Categorical experts over C classes; expert outputs are logits. ``l2``: precision of the
    Gaussian prior on linear experts' weights; ``steps``: Newton steps per M-step."""

    def __init__(self, n_experts: int, n_classes: int, l2: float = 1e-2, steps: int = 1):
        super().__init__()
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.n_classes = checks.positive_int("n_classes", n_classes, minimum=2)
        self.l2 = checks.finite_float("l2", l2, 0.0)
        self.steps = checks.positive_int("steps", steps)

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """y as long labels (N,). An integer tensor only gets its range checked (cheap in a
        training loop); anything else goes through the full label check."""
        if torch.is_tensor(y) and y.ndim == 1 and not (y.dtype.is_floating_point or y.dtype == torch.bool):
            if ((y < 0) | (y >= self.n_classes)).any():
                raise ValueError(f"y must hold class labels in {{0, ..., {self.n_classes - 1}}}")
            return y.long()
        return checks.labels("y", y, self.n_classes)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """one_hot(y): (N, C)."""
        return nn.functional.one_hot(self.labels(y), self.n_classes)

    def log_lik(self, expert_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log softmax(f_ne)_{y_n}: logits (..., N, E, C), labels (N,) -> (..., N, E)."""
        y = self.labels(y)
        if y.shape[0] != expert_out.shape[-3]:
            raise ValueError(f"y must have {expert_out.shape[-3]} labels (one per sample), got {y.shape[0]}")
        index = y.to(expert_out.device)[:, None, None].expand(*expert_out.shape[:-1], 1)
        return torch.log_softmax(expert_out, -1).gather(-1, index)[..., 0]

    def predict(self, routing, expert_out: torch.Tensor) -> torch.Tensor:
        """log p(c | x) = log sum_e w_e softmax(f_e(x))_c: (N, C), a mixture (linear opinion pool)."""
        return mixture.routing_log_prob(routing, torch.log_softmax(expert_out, -1)).clamp_max(0.0)

    def blend(self, routing, expert_out: torch.Tensor) -> torch.Tensor:
        """softmax(sum_e w_e f_e(x)): (N, C), the blended-logits shortcut (a logarithmic opinion
        pool, a product of experts), which the cooperative loss scores against one_hot(y)."""
        return torch.softmax(mixture.combine(routing, expert_out), -1)

    def log_prior(self, experts) -> torch.Tensor:
        return -0.5 * self.l2 * sum(p.pow(2).sum() for p in experts.parameters())

    def m_step(self, experts, x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor, steps: int | None = None,
               solve_experts: bool = True) -> None:
        """``steps`` (default ``self.steps``) batched IRLS steps in place for experts with a ``design``
        (a generalised EM step: the objective does not decrease); nothing if not ``solve_experts``."""
        if not solve_experts:
            return
        design = experts.design(x)
        soft_labels = resp[:, :, None] * self.targets(y).to(resp)[:, None, :]  # (N, E, C)
        with torch.no_grad():
            experts.load_linear(*solvers.softmax_regression(design, soft_labels, experts.weight, experts.bias,
                                                            self.l2, self.steps if steps is None else steps))
