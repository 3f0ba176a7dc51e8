"""Gates: for each input, a probability over the E experts, returned as log-probabilities.

Every gate is an ``nn.Module`` whose forward maps x (N, D) to log g(x) of shape (N, E), so that
mixtures combine in log space (see ``mixture``). The same modules serve EM (chapter 2, whose
M-steps for them live in ``em``) and gradient training (chapter 3 on).

- ``ConstantGate``: mixing weights that do not depend on x (a plain mixture of regressions).
- ``SoftmaxGate``: a linear-softmax gate, log softmax((x W^T + b) / temperature).
- ``MLPGate``: a one-hidden-layer tanh network followed by a softmax.
- ``GumbelGate``: wraps any of them and, in training, samples its choice with the
  Gumbel-softmax trick (soft, or hard with straight-through gradients); in ``eval()`` it is
  deterministic.

Inputs are standardised inside the gate with a fixed ``shift`` and ``scale`` (buffers), so that
its weights, and the Gaussian prior on them, mean the same for any units of x.

>>> import torch, moe_utils as mu
>>> gate = mu.gates.SoftmaxGate(n_inputs=1, n_experts=3)
>>> gate(torch.zeros(5, 1)).shape
torch.Size([5, 3])
>>> torch.allclose(gate(torch.zeros(5, 1)).exp().sum(-1), torch.ones(5))
True
"""

import math

import torch
from torch import nn

from . import checks

__all__ = ["GATES", "ConstantGate", "GumbelGate", "MLPGate", "SoftmaxGate", "make", "standardiser"]


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) of x (N, D): its mean and standard deviation per feature, each (D,)."""
    scale = x.std(0) if x.shape[0] > 1 else torch.ones_like(x[0])
    return x.mean(0), torch.where(scale > 0, scale, torch.ones_like(scale))


class _Gate(nn.Module):
    """Shared plumbing: input standardisation and a temperature."""

    def __init__(self, n_inputs: int, n_experts: int, temperature: float = 1.0, shift=None, scale=None):
        super().__init__()
        self.n_inputs = checks.positive_int("n_inputs", n_inputs)
        self.n_experts = checks.positive_int("n_experts", n_experts)
        self.temperature = temperature
        self.register_buffer("shift", torch.zeros(n_inputs) if shift is None else torch.as_tensor(shift).clone())
        self.register_buffer("scale", torch.ones(n_inputs) if scale is None else torch.as_tensor(scale).clone())

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = checks.finite_float("temperature", value, 0.0, low_open=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised inputs: (x - shift) / scale, (N, D)."""
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"x must have shape (N, {self.n_inputs}), got {tuple(x.shape)}")
        return (x - self.shift) / self.scale

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """d logits / d parameters: (N, E, P), parameters in ``parameters_to_vector`` order."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log g(x): (N, E)."""
        return torch.log_softmax(self.logits(x) / self.temperature, dim=-1)

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log g(x), the mixing weights a mixture multiplies its experts by), both (N, E)."""
        log_g = self(x)
        return log_g, log_g.exp()


class ConstantGate(_Gate):
    """g_e(x) = softmax(logits)_e for every x: mixing weights that ignore the input."""

    def __init__(self, n_inputs: int, n_experts: int, temperature: float = 1.0, **kwargs):
        super().__init__(n_inputs, n_experts, temperature, **kwargs)
        self.logit = nn.Parameter(torch.zeros(n_experts))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(self.features(x).shape[0], -1)

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.n_experts, dtype=x.dtype, device=x.device)
        return eye.expand(x.shape[0], -1, -1)


class SoftmaxGate(_Gate):
    """A linear-softmax gate: logits = standardised(x) W^T + b, with W (E, D), b (E,)."""

    def __init__(self, n_inputs: int, n_experts: int, temperature: float = 1.0, generator=None, **kwargs):
        super().__init__(n_inputs, n_experts, temperature, **kwargs)
        self.weight = nn.Parameter(0.1 * torch.randn(n_experts, n_inputs, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_experts))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.weight.T + self.bias

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)                                                     # (N, D)
        eye = torch.eye(self.n_experts, dtype=x.dtype, device=x.device)
        d_weight = torch.einsum("nd,ef->nefd", feats, eye).flatten(2)                # (N, E, E*D)
        return torch.cat([d_weight, eye.expand(x.shape[0], -1, -1)], dim=2)         # (N, E, E*D+E)


class MLPGate(_Gate):
    """A small neural gate: logits = tanh(standardised(x) W1^T + b1) W2^T + b2, H hidden units."""

    def __init__(self, n_inputs: int, n_experts: int, n_hidden: int = 16, temperature: float = 1.0,
                 generator=None, **kwargs):
        super().__init__(n_inputs, n_experts, temperature, **kwargs)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        b1, b2 = 1 / math.sqrt(n_inputs), 1 / math.sqrt(n_hidden)
        self.w1 = nn.Parameter((2 * torch.rand(n_hidden, n_inputs, generator=generator) - 1) * b1)
        self.b1 = nn.Parameter((2 * torch.rand(n_hidden, generator=generator) - 1) * b1)
        self.w2 = nn.Parameter((2 * torch.rand(n_experts, n_hidden, generator=generator) - 1) * b2)
        self.b2 = nn.Parameter(torch.zeros(n_experts))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.features(x) @ self.w1.T + self.b1)    # (N, H)
        return hidden @ self.w2.T + self.b2

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)                                        # (N, D)
        hidden = torch.tanh(feats @ self.w1.T + self.b1)                # (N, H)
        d_b1 = self.w2 * (1 - hidden**2)[:, None, :]                    # (N, E, H)
        d_w1 = d_b1[..., None] * feats[:, None, None, :]                # (N, E, H, D)
        eye = torch.eye(self.n_experts, dtype=x.dtype, device=x.device)
        d_w2 = eye[None, :, :, None] * hidden[:, None, None, :]         # (N, E, E, H)
        return torch.cat([d_w1.flatten(2), d_b1, d_w2.flatten(2), eye.expand(x.shape[0], -1, -1)], dim=2)


class GumbelGate(nn.Module):
    """Gumbel-softmax gating around a ``base`` gate (Jang et al., 2017; Maddison et al., 2017).

    In training, with Gumbel noise G_e = -log(-log U_e), U_e ~ U(0, 1):

        soft sample  w = softmax((logits + G) / tau)
        hard sample  w = one_hot(argmax(logits + G)), with the gradient of the soft sample
                     (straight-through: w_hard - w_soft.detach() + w_soft)

    where logits are the base gate's logits divided by its temperature, so that the samples
    are draws from the base gate's distribution softmax(logits). In ``eval()`` mode it never
    samples: ``eval_mode="argmax"`` picks the most probable expert (one-hot), ``"softmax"``
    returns that distribution itself, the mean of the hard samples.
    ``tau`` > 0 can be changed between epochs (annealing). ``forward`` returns log-probabilities
    (N, E) of the soft weights; ``mix`` returns them with the weights a mixture should use.
    """

    def __init__(self, base: _Gate, tau: float = 1.0, hard: bool = False, eval_mode: str = "argmax",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base, self.hard, self.generator = base, bool(hard), generator
        self.tau = tau
        self.eval_mode = checks.choice("eval_mode", eval_mode, ("argmax", "softmax"))
        self.n_experts, self.n_inputs = base.n_experts, base.n_inputs

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = checks.finite_float("tau", value, 0.0, low_open=True)

    @property
    def temperature(self) -> float:
        """The base gate's temperature (it scales the logits that are sampled from)."""
        return self.base.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.base.temperature = value

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        tiny = torch.finfo(like.dtype).tiny
        exponential = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)  # Exp(1), never 0
        return -torch.log(exponential).to(like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log-probabilities of the soft sample (training) or of the deterministic gate (eval)."""
        logits = self.base.logits(x) / self.base.temperature
        if not self.training:
            if self.eval_mode == "softmax":
                return torch.log_softmax(logits, dim=-1)
            return torch.log(self._one_hot(logits))
        return torch.log_softmax((logits + self._noise(logits)) / self.tau, dim=-1)

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities, mixing weights) from one draw of the noise, both (N, E)."""
        log_soft = self(x)
        soft = log_soft.exp()
        if not (self.training and self.hard):
            return log_soft, soft
        return log_soft, self._one_hot(soft) - soft.detach() + soft  # straight-through

    @staticmethod
    def _one_hot(scores: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).to(scores.dtype)


GATES = ("constant", "softmax", "mlp", "gumbel", "gumbel_mlp")


def make(name: str, n_inputs: int, n_experts: int, *, n_hidden: int = 8, temperature: float = 1.0,
         tau: float = 1.0, hard: bool = False, eval_mode: str = "argmax", generator=None,
         shift=None, scale=None) -> nn.Module:
    """A gate by name: ``"constant"``, ``"softmax"``, ``"mlp"`` (``n_hidden`` units), or a
    ``GumbelGate`` around a linear-softmax (``"gumbel"``) or MLP (``"gumbel_mlp"``) gate.

    ``generator`` draws the initial weights (and the Gumbel noise); ``shift`` and ``scale``
    standardise the inputs (see ``standardiser``).
    """
    name = checks.choice("gate", name, GATES)
    kwargs = {"temperature": temperature, "shift": shift, "scale": scale}
    if name == "constant":
        return ConstantGate(n_inputs, n_experts, **kwargs)
    if name.endswith("mlp"):
        base = MLPGate(n_inputs, n_experts, n_hidden=n_hidden, generator=generator, **kwargs)
    else:
        base = SoftmaxGate(n_inputs, n_experts, generator=generator, **kwargs)
    if name.startswith("gumbel"):
        return GumbelGate(base, tau=tau, hard=hard, eval_mode=eval_mode, generator=generator)
    return base
