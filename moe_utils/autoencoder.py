"""Autoencoder experts, and the atlas a mixture of them draws (chapter 6).

A curve in the plane is one-dimensional, so a code of one number per point should hold it. An
autoencoder codes x (D = 2) by an encoder D -> H -> 1 and reconstructs it by a decoder
1 -> H -> D; a mixture of E of them, with a router on the input, is an *atlas*: each point is
coded by a pair (chosen expert, 1-D code), each expert a chart of one piece of the curve.

- ``Autoencoders``: E autoencoders stacked (a family of ``experts.Experts``, built on two
  ``experts.MLP``; the decoders read their own expert's code, inputs (N, E, 1)); reconstructions
  (N, E, D), so that it plugs into ``MixtureOfExperts`` with a Gaussian head on the reconstruction:
  p(x) = sum_e g_e(x) N(x; x_hat_e(x), var I). E = 1 is the plain autoencoder.
- ``mixture``: that model, with a localised router (``routing.Kernel``: a Gaussian bump per
  expert, a chart's domain) started on k-means regions.
- ``atlas``: (chosen expert, code, reconstruction) of every point, the router choosing;
  ``mse``: the mean squared reconstruction distance |x - x_hat|^2 of that atlas.

Training many such models at once (seeds, curves, numbers of experts) lives in ``stack``.

>>> import torch, moe_utils as mu
>>> x = mu.data2d.curve("circle").sample(200, seed=0)[0]
>>> model = mu.autoencoder.mixture(n_experts=3, x=x, seed=0)
>>> model(x).experts.shape                                     # (N, E, D) reconstructions
torch.Size([200, 3, 2])
>>> charts = mu.autoencoder.atlas(model, x)
>>> charts.chosen.shape, charts.code.shape, charts.reconstruction.shape
(torch.Size([200]), torch.Size([200]), torch.Size([200, 2]))
"""

import copy
from typing import NamedTuple

import torch

from . import _checks as checks
from . import em, experts, likelihoods, routing
from ._scaling import standardiser
from .moe import MixtureOfExperts

__all__ = ["Atlas", "Autoencoders", "atlas", "experts_used", "mixture", "mse"]


def _part(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``params`` under ``prefix`` ("encoder." or "decoder."), prefix removed."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class Autoencoders(experts.Experts):
    """E autoencoders, stacked: encoder D -> H -> 1, decoder 1 -> H -> D (``experts.MLP`` each).

    The encoder reads standardised inputs z = (x - shift) / scale, (N, D) shared by every expert
    or (N, E, D) one row per expert; the decoder's output is mapped back, x_hat = shift + scale *
    dec(code), so reconstructions (N, E, D) are in the units of x. Parameters are named
    ``encoder.w1``, ..., ``decoder.b2``, each with a leading E axis (and any leading S axes in
    ``forward(x, params)``).
    """

    def __init__(self, n_inputs: int = 2, n_hidden: int = 8, n_experts: int = 1, activation: str = "relu",
                 shift=None, scale=None, generator=None):
        super().__init__(n_inputs, n_inputs, n_experts, shift, scale)
        self.n_hidden = checks.positive_int("n_hidden", n_hidden)
        self.encoder = experts.MLP(n_inputs, n_hidden, 1, n_experts, activation, generator=generator)
        self.decoder = experts.MLP(1, n_hidden, n_inputs, n_experts, activation, generator=generator)

    def function(self, params, z):
        return self.decode_function(params, self.encoder.function(_part(params, "encoder."), z))

    def decode_function(self, params, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructions (..., N, E, D) of codes (..., N, E, 1), in the units of x."""
        return self.decoder.function(_part(params, "decoder."), codes) * self.scale + self.shift

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's code of x (N, D): (N, E)."""
        return self.encoder.function(_part(self.params(), "encoder."), self.standardise(x))[..., 0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Every expert's reconstruction of its own code, codes (N, E) -> (N, E, D)."""
        if codes.ndim != 2 or codes.shape[1] != self.n_experts:
            raise ValueError(f"codes must have shape (N, {self.n_experts}), got {tuple(codes.shape)}")
        return self.decode_function(self.params(), codes[..., None])

    def select(self, index) -> "Autoencoders":
        new = copy.deepcopy(self)
        new.encoder, new.decoder = self.encoder.select(index), self.decoder.select(index)
        new.n_experts = new.encoder.n_experts
        return new


def mixture(n_experts: int, x: torch.Tensor | None = None, n_hidden: int = 8, activation: str = "relu",
            router: str = "kernel", router_hidden: int = 8, var: float | None = None, seed: int = 0,
            start: torch.Tensor | None = None) -> MixtureOfExperts:
    """A mixture of ``n_experts`` autoencoders (``Autoencoders``, ``n_hidden`` units) with a router on
    the input and a Gaussian head with one variance for all, N(x; x_hat_e, var I).

    ``router``: ``"kernel"`` (localised Gaussian bumps, ``routing.Kernel``; its M-step is closed
    form) or ``"mlp"`` (``router_hidden`` tanh units; its M-step takes Gauss-Newton steps).
    ``x`` (N, D), if given, sets the inputs' standardisation, the starting variance (the mean
    variance of its features, unless ``var`` is given), the model's dtype and device, and the
    router's start: one M-step of the router to k-means clusters of x (``em.init_responsibilities``
    with ``seed``), or to the responsibilities ``start`` (N, E) if given, so that each expert
    starts on a region of its own. Every parameter is drawn from ``seed``. E = 1 is a plain
    autoencoder.
    """
    n_experts = checks.positive_int("n_experts", n_experts)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    n_inputs, shift, scale = 2, None, None
    if x is not None:
        x = checks.matrix("x", x)
        n_inputs, (shift, scale) = x.shape[1], standardiser(x)
        var = x.var(0).mean().item() if var is None else var
    aes = Autoencoders(n_inputs, n_hidden, n_experts, activation, shift=shift, scale=scale, generator=gen)
    router = checks.choice("router", router, ("kernel", "mlp"))
    kwargs = {"n_hidden": router_hidden} if router == "mlp" else {}
    net = routing.make(router, n_inputs, n_experts, x=x, generator=gen, **kwargs)
    head = likelihoods.Gaussian(n_experts, n_inputs, var=1.0 if var is None else var, tied="all")
    model = MixtureOfExperts(net, aes, head)
    if x is not None:
        model = model.to(x)
    if start is not None and (x is None or start.shape != (x.shape[0], n_experts)):
        raise ValueError(f"start must have shape (N, {n_experts}) for the N rows of x, got {tuple(start.shape)}")
    if x is not None and n_experts > 1:
        net.m_step(x, em.init_responsibilities(x, x, n_experts, "kmeans", seed=seed) if start is None else start.to(x))
    return model


class Atlas(NamedTuple):
    """How a mixture of autoencoders codes N points: the router's chart and that chart's code."""

    chosen: torch.Tensor          # (N,) long: the expert (chart) the router picks
    code: torch.Tensor            # (N,) that expert's 1-D code
    reconstruction: torch.Tensor  # (N, D) that expert's reconstruction


def atlas(model: MixtureOfExperts, x: torch.Tensor) -> Atlas:
    """Code each point x (N, D) by the router's most probable expert: ``Atlas``. Only that
    expert's reconstruction is used (no blend), as an atlas reads a point off one chart."""
    x = checks.inputs(x, model.n_inputs)
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    with torch.no_grad():
        out = model(x)
        chosen = out.routing.log_probs.argmax(-1)                             # (N,)
        codes = model.experts.encode(x)                                       # (N, E)
        rows = torch.arange(x.shape[0], device=x.device)
        return Atlas(chosen, codes[rows, chosen], out.experts[rows, chosen])


def mse(model: MixtureOfExperts, x: torch.Tensor) -> float:
    """The atlas's reconstruction error, the mean over points of |x - x_hat|^2 (a squared distance,
    summed over the D coordinates; ``data2d.Curve.best_mse`` is its best achievable value)."""
    return ((atlas(model, x).reconstruction - x) ** 2).sum(-1).mean().item()


def experts_used(chosen: torch.Tensor, n_experts: int, share: float = 0.01) -> int:
    """How many of ``n_experts`` the router picks for at least ``share`` of the points; chosen (N,)."""
    counts = torch.bincount(chosen.reshape(-1), minlength=checks.positive_int("n_experts", n_experts))
    return int((counts >= share * chosen.numel()).sum())
