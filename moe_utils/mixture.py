"""Mixtures in log space: densities, the E-step, the mixture likelihood, the blend, the losses.

A mixture of E experts gives, for each sample n,

    p(y_n | x_n) = sum_e g_e(x_n) p_e(y_n | x_n)

Gates are passed as log-probabilities ``log_gates`` (N, E), the experts' likelihoods as
``log_lik`` (N, E), and everything is combined with ``logsumexp``, so nothing underflows even
when an expert is 40 standard deviations away.

>>> import torch, moe_utils as mu
>>> log_gates = torch.log(torch.tensor([[0.5, 0.5]]))
>>> log_lik = mu.mixture.gaussian_log_prob(torch.tensor([[0.9]]), torch.tensor([[0.0, 1.0]]), 0.01)
>>> resp, log_p = mu.mixture.e_step(log_gates, log_lik)
>>> resp.round(decimals=3)
tensor([[0., 1.]])
>>> mu.mixture.mean(log_gates.exp(), torch.tensor([[0.0, 1.0]]))
tensor([0.5000])
"""

import math

import torch

__all__ = ["aux_loss", "combine", "competitive_loss", "cooperative_loss", "e_step", "gaussian_log_prob", "log_prob",
           "mean", "routing_log_prob"]

_LOG_2PI = math.log(2 * math.pi)
ST_CAP = 20.0  # largest log-ratio a straight-through sample passes to an unchosen expert


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, var) -> torch.Tensor:
    """log N(y; mean, var), elementwise with broadcasting. ``var`` is a variance, not an sd."""
    var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device)
    return -0.5 * ((y - mean) ** 2 / var + torch.log(var) + _LOG_2PI)


def log_prob(log_gates: torch.Tensor, log_lik: torch.Tensor) -> torch.Tensor:
    """log sum_e g_e p_e: log_gates (N, E), log_lik (N, E) -> (N,)."""
    return torch.logsumexp(log_gates + log_lik, dim=-1)


def e_step(log_gates: torch.Tensor, log_lik: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The E-step: responsibilities r_ne = g_ne p_ne / sum_e' g_ne' p_ne' (N, E), rows summing to
    one, and the mixture's log-likelihood per sample (N,). log_gates (N, E), log_lik (N, E)."""
    joint = log_gates + log_lik
    return torch.softmax(joint, dim=-1), torch.logsumexp(joint, dim=-1)


def mean(weights: torch.Tensor, expert_out: torch.Tensor) -> torch.Tensor:
    """The blend sum_e w_ne f_ne: weights (N, E), expert_out (N, E) -> (N,) or (N, E, O) -> (N, O)."""
    if expert_out.ndim == weights.ndim:
        return (weights * expert_out).sum(-1)
    return torch.einsum("ne,ne...->n...", weights, expert_out)


def combine(routing, expert_out: torch.Tensor) -> torch.Tensor:
    """sum_e w_e f_e(x) for a ``routing.Routing``: expert_out (N, E, O) -> (N, O); over the
    ``chosen`` experts (N, K) when the routing chose some."""
    if routing.chosen is None:
        return mean(routing.weights, expert_out)
    picked = expert_out.gather(1, routing.chosen[:, :, None].expand(-1, -1, expert_out.shape[2]))  # (N, K, O)
    return mean(routing.weights, picked)


def routing_log_prob(routing, log_lik: torch.Tensor) -> torch.Tensor:
    """log sum_e w_e p_e(y | x) for a ``routing.Routing``; log_lik (N, E, ...) -> (N, ...).

    Dense routings mix the router's probabilities in log space (exact however small a gate).
    A routing that chose experts (``chosen`` (N, K)) mixes its K renormalised weights. A
    straight-through sample (``sampled``) is one-hot in value, log p_z(y), but must pass gradients
    to weights that are exactly 0, which log space cannot; it is computed as
    top + log sum_e w_e exp(l_e - top), top detached, so that expert e's weight gets the gradient
    exp(l_e - top), how much better e explains y than the chosen expert, capped at e^ST_CAP lest
    one badly routed sample overflow the optimiser.
    """
    extra = (None,) * (log_lik.ndim - 2)
    if routing.chosen is not None:
        picked = log_lik.gather(1, routing.chosen.reshape(routing.chosen.shape + (1,) * len(extra))
                                .expand(routing.chosen.shape + log_lik.shape[2:]))
        return torch.logsumexp(torch.log(routing.weights)[(...,) + extra] + picked, dim=1)
    if not routing.sampled:
        return torch.logsumexp(routing.log_probs[(...,) + extra] + log_lik, dim=1)
    w = routing.weights[(...,) + extra]
    with torch.no_grad():
        top = torch.logsumexp(torch.log(w) + log_lik, dim=1, keepdim=True)
        cap = torch.where(w > 0, math.inf, ST_CAP)
    total = (w * torch.exp(torch.minimum(log_lik - top, cap))).sum(1)
    return torch.log(total) + top[:, 0]


def aux_loss(routing) -> torch.Tensor | float:
    """The sum of a routing's auxiliary losses: the entries of ``routing.aux`` named ``*_loss``
    (other entries are diagnostics, such as the per-expert load)."""
    return sum(v for k, v in routing.aux.items() if k.endswith("_loss"))


def competitive_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mixture's negative log-likelihood, -mean_n log p(y_n | x_n) (nats), plus the routing's
    auxiliary losses. Each sample's gradient goes mostly to the experts that explain it: they
    compete, and specialise (Jacobs et al., 1991). ``model`` is a ``moe.MixtureOfExperts``."""
    out = model(x)
    return -model.log_prob(x, y, out).mean() + aux_loss(out.routing)


def cooperative_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The squared error of the blended prediction sum_e w_e f_e(x), mean over samples and
    outputs, plus the routing's auxiliary losses. The experts are trained as one sum, so each
    one's error can be cancelled by another's: they cooperate. For a classifier the blend is
    softmax(sum_e w_e logits_e) and the target one_hot(y): a squared error on a sigmoid."""
    out = model(x)
    blend = model.blend(out)
    return ((blend - model.likelihood.targets(y).to(blend.dtype)) ** 2).mean() + aux_loss(out.routing)
