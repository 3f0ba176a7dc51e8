"""Many independent mixtures of autoencoders, trained as one (chapter 6).

A results table over curves, seeds and numbers of experts needs dozens of small models. Trained
one after another, each training step of each model pays Python's and PyTorch's overhead for a
few hundred tiny operations; stacked, every model's step is one pass over bigger tensors:

- all the experts of all the models sit in one ``autoencoder.Autoencoders`` of T = sum_m E_m
  experts, each reading its own model's data set (per-expert inputs (N, T, D));
- all the routers (localised, ``routing.Kernel``: a Gaussian bump per expert) sit in tensors of
  T kernels; the softmax over each model's experts lays them out (J, E_max), the slots a model
  does not have at -inf, so that they get no weight and no gradient;
- the loss is the sum of the models' losses, each model's gradient is its own, and Adam, which
  works element by element, trains each model exactly as it would alone.

``Stack(models, data)``: model m (built by ``autoencoder.mixture``) reads the data set
``data[m]`` of x (N, B, D) (points first, so that ``train.fit`` draws mini-batches of points);
its loss is ``"competitive"`` (the mixture's negative log-likelihood,
``mixture.competitive_loss``) or ``"cooperative"`` (the squared error of the blend,
``mixture.cooperative_loss``). ``stack(x)`` gives the J losses, ``stack.model(m)`` model m back
as a ``MixtureOfExperts``. Shapes: N points per data set, B data sets, J models (jobs), T experts in all,
E_max the most experts any model has.

>>> import torch, moe_utils as mu
>>> x = torch.stack([mu.data2d.curve(c).sample(100, seed=0)[0] for c in ("circle", "figure8")], 1)
>>> x.shape                                                    # (N, B, D): two data sets
torch.Size([100, 2, 2])
>>> models = [mu.autoencoder.mixture(e, x=x[:, b], seed=0) for b in (0, 1) for e in (1, 2)]
>>> stack = mu.stack.Stack(models, data=[0, 0, 1, 1])
>>> stack(x).shape                                             # one loss per model
torch.Size([4])
>>> history = mu.train.fit(stack, mu.stack.total_loss, x, x, epochs=5, progress=False)
>>> stack.model(3).n_experts
2
"""

import copy
import math

import torch
from torch import nn

from . import _checks as checks
from . import likelihoods, routing
from .autoencoder import Autoencoders
from .moe import MixtureOfExperts

__all__ = ["LOSSES", "Stack", "total_loss"]

LOSSES = ("competitive", "cooperative")


def _check_model(i: int, model, first) -> None:
    """Model i must be what ``autoencoder.mixture`` builds, shaped like the first model."""
    ok = (isinstance(model, MixtureOfExperts) and isinstance(model.experts, Autoencoders)
          and isinstance(model.router, routing.Kernel) and isinstance(model.likelihood, likelihoods.Gaussian)
          and model.likelihood.tied == "all" and type(model.rule) is routing.Softmax
          and model.rule.temperature == 1.0 and torch.equal(model.router.shift, model.experts.shift)
          and torch.equal(model.router.scale, model.experts.scale))
    if not ok:
        raise TypeError(f"models[{i}] must be built by autoencoder.mixture (autoencoder experts, a kernel router "
                        "with the experts' standardisation, a Gaussian head with tied='all', softmax routing)")
    sizes = lambda m: (m.n_inputs, m.experts.n_hidden, m.experts.encoder.activation)  # noqa: E731
    if sizes(model) != sizes(first):
        raise ValueError(f"models[{i}] has (inputs, hidden, activation) {sizes(model)}, "
                         f"but models[0] has {sizes(first)}: a stack holds one architecture")


class Stack(nn.Module):
    """J independent autoencoder mixtures in one set of tensors; ``forward(x)`` -> losses (J,)."""

    def __init__(self, models: list[MixtureOfExperts], data: list[int], losses: str | list[str] = "competitive"):
        super().__init__()
        if not isinstance(models, (list, tuple)) or not models:
            raise TypeError("models must be a non-empty list of autoencoder mixtures")
        for i, model in enumerate(models):
            _check_model(i, model, models[0])
        n = len(models)
        data = [checks.positive_int(f"data[{i}]", d, minimum=0) for i, d in enumerate(data)]
        losses = [losses] * n if isinstance(losses, str) else list(losses)
        if len(data) != n or len(losses) != n:
            raise ValueError(f"data and losses need one entry per model ({n}), got {len(data)} and {len(losses)}")
        losses = [checks.choice("losses", kind, LOSSES) for kind in losses]
        self.templates = [copy.deepcopy(m) for m in models]  # a plain list on purpose: not trained, not moved
        sizes = [m.n_experts for m in models]
        first, d, e_max = models[0], models[0].n_inputs, max(sizes)
        self.n_models, self.n_inputs, self.sizes = n, d, sizes
        self.offsets = [sum(sizes[:m]) for m in range(n)]
        self.experts = Autoencoders(d, first.experts.n_hidden, sum(sizes), first.experts.encoder.activation)
        self.log_weight = nn.Parameter(torch.zeros(sum(sizes)))              # the routers' kernels: (T,)
        self.mean = nn.Parameter(torch.zeros(sum(sizes), d))                  # (T, D)
        self.log_scale = nn.Parameter(torch.zeros(sum(sizes), d))             # (T, D)
        self.log_var = nn.Parameter(torch.cat([m.likelihood.log_var.detach().reshape(1) for m in models]))
        slots = torch.full((n, e_max), sum(sizes), dtype=torch.long)  # the last slot is an empty expert
        for m, (start, size) in enumerate(zip(self.offsets, sizes)):
            slots[m, :size] = torch.arange(start, start + size)
        self.register_buffer("slots", slots)                                  # (J, E_max) -> expert
        self.register_buffer("place", (slots < sum(sizes)).flatten().nonzero()[:, 0])  # (T,) expert -> slot
        self.register_buffer("owner", torch.repeat_interleave(torch.arange(n), torch.tensor(sizes)))  # (T,)
        self.register_buffer("data", torch.tensor(data))                     # (J,)
        self.register_buffer("cooperative", torch.tensor([k == "cooperative" for k in losses]))
        self.register_buffer("shift", torch.stack([m.experts.shift for m in models]))  # (J, D)
        self.register_buffer("scale", torch.stack([m.experts.scale for m in models]))  # (J, D)
        self.to(first.likelihood.log_var)  # the models' dtype and device
        self._load(models)

    def _load(self, models) -> None:
        """Copy every model's parameters into the stacked tensors."""
        with torch.no_grad():
            for name, p in self.experts.named_parameters():
                p.copy_(torch.cat([dict(m.experts.named_parameters())[name] for m in models]))
            for name in ("log_weight", "mean", "log_scale"):
                getattr(self, name).copy_(torch.cat([getattr(m.router, name) for m in models]))

    def _pad(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Per-expert values (..., T) laid out per model, (..., J, E_max), the empty slots ``fill``."""
        return torch.cat([values, values.new_full(values.shape[:-1] + (1,), fill)], -1)[..., self.slots]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each model's loss on its data set of x (N, B, D): (J,)."""
        if not torch.is_tensor(x) or x.ndim != 3 or x.shape[2] != self.n_inputs:
            raise ValueError(f"x must have shape (N, B, {self.n_inputs}) (B data sets), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if x.shape[1] <= int(self.data.max()):
            raise ValueError(f"model data sets go up to {int(self.data.max())} but x holds {x.shape[1]}")
        target = x[:, self.data]                                              # (N, J, D)
        shift, scale = self.shift[self.owner], self.scale[self.owner]         # (T, D) each
        z = (x[:, self.data[self.owner]] - shift) / scale                     # (N, T, D), each expert's data
        codes = self.experts.encoder.function(self.experts.encoder.params(), z)  # (N, T, 1)
        recon = self.experts.decoder.function(self.experts.decoder.params(), codes)  # (N, T, D), standardised
        sq = (((recon - z) * scale) ** 2).sum(-1)                             # (N, T), in the units of x
        log_n = -0.5 * (((z - self.mean) * torch.exp(-self.log_scale)) ** 2 + 2 * self.log_scale).sum(-1)
        log_prior = torch.log_softmax(self._pad(self.log_weight, -math.inf), -1)  # (J, E_max)
        log_gates = torch.log_softmax(self._pad(log_n, -math.inf) + log_prior, -1)  # (N, J, E_max)
        log_var = self.log_var[:, None]                                       # (J, 1)
        log_lik = -0.5 * (self._pad(sq, 0.0) / log_var.exp() + self.n_inputs * (math.log(2 * math.pi) + log_var))
        competitive = -torch.logsumexp(log_gates + log_lik, -1).mean(0)      # (J,)
        if not self.cooperative.any():
            return competitive
        weights = log_gates.exp().flatten(1)[:, self.place]                   # (N, T)
        out = recon * scale + shift                                           # (N, T, D), in the units of x
        blend = target.new_zeros(target.shape).index_add(1, self.owner, weights[..., None] * out)  # (N, J, D)
        cooperative = ((blend - target) ** 2).mean((0, 2))                    # (J,)
        return torch.where(self.cooperative, cooperative, competitive)

    def model(self, m: int) -> MixtureOfExperts:
        """Model m as a ``MixtureOfExperts`` of its own (a copy), on the stack's device and dtype."""
        m = checks.positive_int("m", m, minimum=0)
        if m >= self.n_models:
            raise ValueError(f"m must be below the number of models, {self.n_models}, got {m}")
        size, start = self.sizes[m], self.offsets[m]
        out = copy.deepcopy(self.templates[m]).to(self.log_var)
        with torch.no_grad():
            for name, p in out.experts.named_parameters():
                p.copy_(dict(self.experts.named_parameters())[name][start:start + size])
            for name in ("log_weight", "mean", "log_scale"):
                getattr(out.router, name).copy_(getattr(self, name)[start:start + size])
            out.likelihood.log_var.fill_(self.log_var[m].item())
        return out.eval()


def total_loss(stack: Stack, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The sum of the stacked models' losses: the loss ``train.fit(stack, total_loss, x, x)`` takes,
    x (N, B, D) (an autoencoder's target is its input, so ``y`` is ignored)."""
    return stack(x).sum()
