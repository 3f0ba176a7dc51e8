"""Stacked experts: one parameter tensor per layer, with a leading expert axis E.

Every family maps inputs x (N, D) to every expert's output (N, E, O) with one ``einsum``:

- ``Linear``: f_e(x) = z W_e + b_e, weight (E, D, O), bias (E, O), on z = (x - shift) / scale;
- ``Legendre``: polynomial chaos, f_e(x) = sum_k c_ek psi_k(z) + b_e over a total-order Legendre
  basis of the inputs mapped onto [-1, 1]; a linear family on those features (chapter 5);
- ``MLP``: one hidden layer, plain (act(z W1 + b1) W2 + b2) or gated (SwiGLU, as in Mixtral:
  (silu(z W_gate) * z W_up) W_down); also per-expert inputs x (N, E, D) (the autoencoder's
  decoders read their own expert's code, chapter 6).

Two things make the leading E axis pay off everywhere in the course:

- ``forward(x, params)`` takes the parameters as a dict, with any extra leading axes, so posterior
  draws (S, E, ...) give (S, N, E, O) in one call (chapter 5), and a slice of the experts gives
  their outputs only (``select``: the experts of one rank, chapter 8);
- families that are linear in their parameters expose ``design(x)`` (N, F) and ``load_linear``,
  so the Gaussian and Categorical M-steps solve them in closed form for every expert at once.

>>> import torch, moe_utils as mu
>>> experts = mu.experts.Linear(n_inputs=2, n_outputs=1, n_experts=3)
>>> x = torch.randn(5, 2)
>>> experts(x).shape                                           # (N, E, O)
torch.Size([5, 3, 1])
>>> draws = {k: v.expand(4, *v.shape) for k, v in experts.params().items()}  # S = 4
>>> experts(x, draws).shape                                    # (S, N, E, O)
torch.Size([4, 5, 3, 1])
>>> experts.select(slice(1, 3))(x).shape                       # the experts 1 and 2 only
torch.Size([5, 2, 1])
"""

import copy
import itertools
import math

import torch
from torch import nn

from . import _checks as checks
from ._scaling import Scaled

__all__ = ["Experts", "Legendre", "Linear", "MLP", "legendre"]

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": nn.functional.gelu, "silu": nn.functional.silu}


class Experts(Scaled):
    """Base of the expert families: E experts whose parameters all have a leading axis E."""

    def __init__(self, n_inputs: int, n_outputs: int, n_experts: int, shift=None, scale=None):
        super().__init__(n_inputs, shift, scale)
        self.n_outputs = checks.positive_int("n_outputs", n_outputs)
        self.n_experts = checks.positive_int("n_experts", n_experts)

    def __len__(self) -> int:
        return self.n_experts

    def params(self) -> dict[str, torch.Tensor]:
        """The parameters as {name: tensor (E, ...)}: the argument ``forward`` takes."""
        return dict(self.named_parameters())

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x (N, D) -> (N, E, O); with ``params`` of shape (S, E, ...) -> (S, N, E, O)."""
        return self.function(self.params() if params is None else params, self.standardise(x))

    def function(self, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def design(self, x: torch.Tensor) -> torch.Tensor | None:
        """The features (N, F) the outputs are linear in, or None (no closed-form M-step)."""
        return None

    def blocks(self, zs) -> list[torch.Tensor]:
        """Expert e on its own block of standardised inputs, for every e: zs[e] (N_e, D) -> (N_e, O).

        The sort-based dispatch of a sparse layer (chapter 7) groups the tokens by expert and calls
        this once on the E contiguous blocks. The stacked weights are cut into experts once
        (``split``), never as ``w[e]`` in a loop: the backward of each ``w[e]`` writes a full-size
        (E, ...) zero gradient, so a loop of them costs E^2.
        """
        zs = self._check_blocks(zs)
        names, tensors = zip(*self.params().items())
        per_expert = [dict(zip(names, values)) for values in zip(*(t.split(1) for t in tensors))]
        return [self.function(p, z)[:, 0] for p, z in zip(per_expert, zs)]

    def _check_blocks(self, zs) -> list[torch.Tensor]:
        zs = list(zs)
        if len(zs) != self.n_experts:
            raise ValueError(f"blocks needs one block per expert ({self.n_experts}), got {len(zs)}")
        for z in zs:
            if not torch.is_tensor(z) or z.ndim != 2 or z.shape[1] != self.n_inputs:
                raise ValueError(f"each block must have shape (N_e, {self.n_inputs}), got "
                                 f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
        return zs

    def select(self, index) -> "Experts":
        """A new module of the same family holding only the experts ``index`` (a slice, a list or
        a tensor of expert indices): the experts one rank holds under expert parallelism."""
        new = copy.deepcopy(self)
        for name, p in list(new.named_parameters()):
            setattr(new, name, nn.Parameter(p.detach()[index].clone(), requires_grad=p.requires_grad))
        new.n_experts = next(new.parameters()).shape[0]
        return new


def _uniform(shape, bound: float, generator) -> torch.Tensor:
    """U(-bound, bound) initial values (PyTorch's nn.Linear default), from ``generator``."""
    return (2 * torch.rand(shape, generator=generator) - 1) * bound


class Linear(Experts):
    """E linear experts: weight (E, F, O), bias (E, O) on the features F of ``design`` (F = D here)."""

    def __init__(self, n_inputs: int, n_outputs: int, n_experts: int, shift=None, scale=None, generator=None):
        super().__init__(n_inputs, n_outputs, n_experts, shift, scale)
        n_features = self.n_features()
        bound = 1 / math.sqrt(max(n_features, 1))
        self.weight = nn.Parameter(_uniform((n_experts, n_features, n_outputs), bound, generator))
        self.bias = nn.Parameter(_uniform((n_experts, n_outputs), bound, generator))

    def n_features(self) -> int:
        return self.n_inputs

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Features (..., F) of standardised inputs z (..., D)."""
        return z

    def function(self, params, z):
        feats = self.features(z)                                              # (N, F)
        out = torch.einsum("nf,...efo->...neo", feats, params["weight"])       # (..., N, E, O)
        return out + params["bias"].unsqueeze(-3)

    def design(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.standardise(x))

    def load_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set weight (E, F, O) and bias (E, O) in place (a closed-form M-step)."""
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)


def legendre(t: torch.Tensor, degree: int, normalised: bool = True) -> torch.Tensor:
    """P_0(t), ..., P_degree(t) for t (...,), stacked last: (..., degree + 1).

    By Bonnet's recursion (k + 1) P_{k+1} = (2k + 1) t P_k - k P_{k-1}. ``normalised`` scales
    P_k by sqrt(2k + 1), so that E[psi_k(t)^2] = 1 for t ~ U(-1, 1) (an orthonormal basis).
    """
    polys = [torch.ones_like(t), t]
    for k in range(1, degree):
        polys.append(((2 * k + 1) * t * polys[k] - k * polys[k - 1]) / (k + 1))
    out = torch.stack(polys[:degree + 1], -1)
    if normalised:
        out = out * torch.sqrt(2 * torch.arange(degree + 1, dtype=t.dtype, device=t.device) + 1)
    return out


class Legendre(Linear):
    """Polynomial-chaos experts: a total-order Legendre basis of the inputs, linear on top.

    The inputs' ``bounds`` (lo, hi) (floats, or (D,) each) are mapped onto [-1, 1]. The basis
    psi_alpha(z) = prod_d psi_{alpha_d}(z_d) runs over every multi-index with
    1 <= |alpha| <= ``degree`` (the constant term is the bias): F = C(D + degree, D) - 1 features,
    in ``indices`` (F, D). weight (E, F, O), bias (E, O) (Xiu and Karniadakis, 2002).
    """

    def __init__(self, n_inputs: int, degree: int, n_outputs: int, n_experts: int, bounds=(-1.0, 1.0),
                 normalised: bool = True, generator=None):
        self.degree = checks.positive_int("degree", degree)
        self.normalised = bool(normalised)
        lo, hi = (checks.tensor("bounds", b).reshape(-1) for b in bounds)
        if (lo >= hi).any():
            raise ValueError(f"bounds must have lo < hi for every input, got {tuple(bounds)}")
        indices = [a for total in range(1, self.degree + 1)
                   for a in itertools.product(range(total + 1), repeat=n_inputs) if sum(a) == total]
        self._n_features = len(indices)
        super().__init__(n_inputs, n_outputs, n_experts, shift=(lo + hi) / 2, scale=(hi - lo) / 2,
                         generator=generator)
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))

    def n_features(self) -> int:
        return self._n_features

    def features(self, z):
        polys = legendre(z, self.degree, self.normalised)                      # (N, D, degree + 1)
        picked = polys.gather(-1, self.indices.T.expand(*z.shape[:-1], -1, -1))  # (N, D, F)
        return picked.prod(-2)                                                 # (N, F)


class MLP(Experts):
    """E one-hidden-layer networks, stacked.

    Plain: act(z W1 + b1) W2 + b2 with w1 (E, D, H), b1 (E, H), w2 (E, H, O), b2 (E, O).
    Gated (``gated=True``, SwiGLU): (silu(z W_gate) * (z W_up)) W_down with w_gate, w_up (E, D, H)
    and w_down (E, H, O) (O = D inside a transformer block), no biases, as in Mixtral and DeepSeek.
    Inputs are x (N, D), shared by every expert, or x (N, E, D), one row per expert; ``blocks``
    runs expert e on its own rows only (a sparse layer's dispatch), one matrix product per layer.

    >>> import torch, moe_utils as mu
    >>> ffn = mu.experts.MLP(n_inputs=4, n_hidden=8, n_outputs=4, n_experts=3, gated=True)
    >>> ffn.w_gate.shape, ffn.w_up.shape, ffn.w_down.shape           # (E, D, H), (E, D, H), (E, H, O)
    (torch.Size([3, 4, 8]), torch.Size([3, 4, 8]), torch.Size([3, 8, 4]))
    >>> [y.shape[0] for y in ffn.blocks([torch.randn(n, 4) for n in (2, 0, 5)])]
    [2, 0, 5]
    >>> z = torch.randn(7, 4)                                          # the same blocks, grouped
    >>> torch.allclose(ffn.grouped(z, torch.tensor([2, 0, 5])), torch.cat(ffn.blocks(z.split([2, 0, 5]))))
    True
    """

    def __init__(self, n_inputs: int, n_hidden: int, n_outputs: int, n_experts: int, activation: str = "tanh",
                 gated: bool = False, shift=None, scale=None, generator=None):
        super().__init__(n_inputs, n_outputs, n_experts, shift, scale)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        self.activation = checks.choice("activation", activation, ACTIVATIONS)
        self.gated = bool(gated)
        b1, b2 = 1 / math.sqrt(n_inputs), 1 / math.sqrt(n_hidden)
        e, d, h, o = n_experts, n_inputs, n_hidden, n_outputs
        if self.gated:
            self.w_gate = nn.Parameter(_uniform((e, d, h), b1, generator))
            self.w_up = nn.Parameter(_uniform((e, d, h), b1, generator))
            self.w_down = nn.Parameter(_uniform((e, h, o), b2, generator))
        else:
            self.w1 = nn.Parameter(_uniform((e, d, h), b1, generator))
            self.b1 = nn.Parameter(_uniform((e, h), b1, generator))
            self.w2 = nn.Parameter(_uniform((e, h, o), b2, generator))
            self.b2 = nn.Parameter(_uniform((e, o), b2, generator))

    def function(self, params, z):
        spec = "...ned,...edh->...neh" if z.ndim >= 3 else "nd,...edh->...neh"
        if self.gated:
            hidden = nn.functional.silu(torch.einsum(spec, z, params["w_gate"])) \
                * torch.einsum(spec, z, params["w_up"])                       # (..., N, E, H)
            return torch.einsum("...neh,...eho->...neo", hidden, params["w_down"])
        act = ACTIVATIONS[self.activation]
        hidden = act(torch.einsum(spec, z, params["w1"]) + params["b1"].unsqueeze(-3))  # (..., N, E, H)
        return torch.einsum("...neh,...eho->...neo", hidden, params["w2"]) + params["b2"].unsqueeze(-3)

    def blocks(self, zs) -> list[torch.Tensor]:
        """Expert e on its block zs[e] (N_e, D) -> (N_e, O), for every e: plain matrix products
        with the weights cut once (``unbind``); see ``Experts.blocks``."""
        zs = self._check_blocks(zs)
        if self.gated:
            silu = nn.functional.silu
            return [(silu(z @ g) * (z @ u)) @ d
                    for z, g, u, d in zip(zs, self.w_gate.unbind(), self.w_up.unbind(), self.w_down.unbind())]
        act = ACTIVATIONS[self.activation]
        layers = zip(self.w1.unbind(), self.b1.unbind(), self.w2.unbind(), self.b2.unbind())
        return [torch.addmm(b2, act(torch.addmm(b1, z, w1)), w2) for z, (w1, b1, w2, b2) in zip(zs, layers)]

    def grouped(self, z: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Expert e on its contiguous rows of z (M, D), ``counts`` (E,) rows each, with one
        ``torch.nn.functional.grouped_mm`` per layer (megablocks' grouped GEMM): (M, O), the same
        as ``torch.cat(self.blocks(z.split(counts)))``. Its backward writes each weight's gradient
        (E, ...) at once, where ``blocks`` stacks E pieces. Needs what this torch's grouped_mm takes
        (``groupable``): float32 on the CPU (bfloat16 on recent CUDA GPUs), rows of 16-byte multiples.
        """
        if not self.groupable(z):
            sizes = (self.n_inputs, self.n_hidden, self.n_outputs)
            raise ValueError(f"grouped needs float32 inputs on the CPU with D, H and O multiples of 4, got "
                             f"{z.dtype} on {z.device.type} with D, H, O = {sizes}")
        offs = counts.cumsum(0).to(torch.int32)

        def mm(a, w):
            return nn.functional.grouped_mm(a, w, offs=offs)
        if self.gated:
            return mm(nn.functional.silu(mm(z, self.w_gate)) * mm(z, self.w_up), self.w_down)
        expert = torch.arange(self.n_experts, device=z.device).repeat_interleave(counts, output_size=z.shape[0])
        hidden = ACTIVATIONS[self.activation](mm(z, self.w1) + self.b1.index_select(0, expert))
        return mm(hidden, self.w2) + self.b2.index_select(0, expert)

    def groupable(self, z: torch.Tensor) -> bool:
        """Whether ``grouped`` runs on inputs like z: float32 on the CPU, D, H, O multiples of 4."""
        sizes = (self.n_inputs, self.n_hidden, self.n_outputs)
        return (hasattr(nn.functional, "grouped_mm") and z.device.type == "cpu" and z.dtype == torch.float32
                and next(self.parameters()).dtype == torch.float32 and all(n % 4 == 0 for n in sizes))
