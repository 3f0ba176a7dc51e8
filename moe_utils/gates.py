"""Gates: for each input, a probability over the E experts, returned as log-probabilities.

Every gate is an ``nn.Module`` whose forward maps x (N, D) to log g(x) of shape (N, E), so that
mixtures combine in log space (see ``mixture``). The same modules serve EM (chapter 2, whose
M-steps for them live in ``em``) and gradient training (chapter 3 on).

- ``ConstantGate``: mixing weights that do not depend on x (a plain mixture of regressions).
- ``SoftmaxGate``: a linear-softmax gate, log softmax((x W^T + b) / temperature).
- ``MLPGate``: a one-hidden-layer tanh network followed by a softmax.

Inputs are standardised inside the gate with a fixed ``shift`` and ``scale`` (buffers), so that
its weights, and the Gaussian prior on them, mean the same for any units of x.

>>> import torch, moe_utils as mu
>>> gate = mu.gates.SoftmaxGate(n_inputs=1, n_experts=3)
>>> gate(torch.zeros(5, 1)).exp().sum(-1)
tensor([1., 1., 1., 1., 1.], grad_fn=<SumBackward1>)
"""

import math

import torch
from torch import nn

from . import checks

__all__ = ["ConstantGate", "MLPGate", "SoftmaxGate", "standardiser"]


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
