"""Bayesian mixtures of experts: parameter groups bound by name, variational inference, bands.

A ``BayesianMoE`` is a router network, stacked experts and one noise level sigma shared by
the experts, with the mixture likelihood (or the blended-mean one, to compare)

    mixture   p(y | x, theta) = sum_e g_e(x) N(y; f_e(x), sigma^2)
    blended   p(y | x, theta) = N(y; sum_e g_e(x) f_e(x), sigma^2)

A ``Posterior`` puts one *group* on every named parameter of the model, chosen by name
patterns (``fnmatch``), never by the order in which parameters are stored:

    "point"       a point estimate theta (MAP): it adds log p(theta) to the objective
    "mean_field"  q = N(m, diag(s^2)), sampled as m + s * eps (the reparameterisation trick)
    "full"        q = N(m, L L^T) over the whole group, sampled as m + L eps (a small group)

each with a Gaussian ``Prior``. ``fit`` maximises the ELBO, E_q[log p(y | x, theta)] - KL(q || p),
with KL in closed form; draws have a leading axis S, so the experts, the router (``torch.vmap``)
and the likelihood are evaluated for all draws at once. ``nuts`` samples the exact posterior of
the same model with pyro's NUTS, as a reference. Shapes: x (N, D), y (N,) or (N, O), draws
{name: (S, ...)}.

>>> import torch, moe_utils as mu
>>> model = mu.bayes.BayesianMoE(mu.routing.Linear(1, 2), mu.experts.Legendre(1, 3, 1, 2))
>>> q = mu.bayes.Posterior(model, {"experts.*": "mean_field", "router.*": "point", "likelihood.*": "mean_field"},
...                        {"*": mu.bayes.Prior(0.0, 3.0)})
>>> draws = q.rsample(4)
>>> draws["experts.weight"].shape, draws["router.weight"].shape             # (S, E, F, O), (S, E, D)
(torch.Size([4, 2, 3, 1]), torch.Size([4, 2, 1]))
>>> model.log_lik(draws, torch.zeros(5, 1), torch.zeros(5)).shape            # (S, N)
torch.Size([4, 5])
"""

import copy
import fnmatch
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from . import _checks as checks
from . import likelihoods, mixture, train

__all__ = ["FAMILIES", "BayesianMoE", "Fixed", "FullRank", "MeanField", "Point", "Posterior", "Prior", "band", "elbo",
           "fit", "gaussian_kl", "log_predictive", "nuts", "predictive_sample"]

LIKELIHOODS = ("mixture", "blended")


class Prior(NamedTuple):
    """A Gaussian prior N(mean, sd^2) on every entry of a parameter."""

    mean: float = 0.0
    sd: float = 1.0


def _randn(shape, like: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise of ``like``'s dtype and device, from ``generator`` (a CPU one)."""
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def gaussian_kl(loc, sd, prior_mean, prior_sd) -> torch.Tensor:
    """KL(N(loc, sd^2) || N(prior_mean, prior_sd^2)), summed over entries (closed form; a scalar):
    sum log(prior_sd / sd) + (sd^2 + (loc - prior_mean)^2) / (2 prior_sd^2) - 1/2."""
    return (torch.log(prior_sd / sd) + (sd**2 + (loc - prior_mean) ** 2) / (2 * prior_sd**2) - 0.5).sum()


class Group(nn.Module):
    """Base of the groups: the parameters ``names`` (sorted) of a model, flattened into one
    vector of P entries, each with a Gaussian prior; q's location ``loc`` (P,)."""

    def __init__(self, params: dict[str, torch.Tensor], priors: dict[str, Prior], init_sd: float = 1e-2):
        super().__init__()
        self.names = sorted(params)
        self.shapes = [tuple(params[k].shape) for k in self.names]
        self.sizes = [params[k].numel() for k in self.names]
        flat = torch.cat([params[k].detach().reshape(-1) for k in self.names])
        self.register_buffer("prior_mean", torch.cat([torch.full((n,), float(priors[k].mean)) for k, n in
                                                      zip(self.names, self.sizes)]).to(flat))
        self.register_buffer("prior_sd", torch.cat([torch.full((n,), float(priors[k].sd)) for k, n in
                                                    zip(self.names, self.sizes)]).to(flat))
        self.loc = nn.Parameter(flat.clone())
        self.init_sd = init_sd

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., P) -> {name: (..., *shape)}."""
        parts = flat.split(self.sizes, -1)
        return {k: v.reshape(*flat.shape[:-1], *shape) for k, v, shape in zip(self.names, parts, self.shapes)}

    def flatten(self, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: (S, *shape)} -> (S, P)."""
        return torch.cat([draws[k].reshape(draws[k].shape[0], -1) for k in self.names], -1)

    def log_prior(self, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(theta) of this group's entries of draws {name: (S, ...)}: (S,)."""
        return mixture.gaussian_log_prob(self.flatten(draws), self.prior_mean, self.prior_sd**2).sum(-1)

    def sample_flat(self, n: int, generator=None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rsample(self, n: int, generator=None) -> dict[str, torch.Tensor]:
        """n reparameterised draws {name: (n, *shape)}."""
        return self.unflatten(self.sample_flat(n, generator))

    def sd(self) -> dict[str, torch.Tensor]:
        """q's marginal standard deviations {name: shape}."""
        return self.unflatten(self.flat_sd().detach())


class Fixed(Group):
    """A known constant: never trained, no prior term (a known noise level, a frozen router)."""

    def __init__(self, params, priors, init_sd=1e-2):
        super().__init__(params, priors, init_sd)
        self.loc.requires_grad_(False)

    def sample_flat(self, n, generator=None):
        return self.loc.expand(n, -1)

    def penalty(self) -> torch.Tensor:
        return self.loc.new_zeros(())

    def flat_sd(self):
        return torch.zeros_like(self.loc)


class Point(Fixed):
    """A point estimate (MAP): draws repeat ``loc``; its penalty is -log p(loc)."""

    def __init__(self, params, priors, init_sd=1e-2):
        super().__init__(params, priors, init_sd)
        self.loc.requires_grad_(True)

    def penalty(self) -> torch.Tensor:
        return -mixture.gaussian_log_prob(self.loc, self.prior_mean, self.prior_sd**2).sum()


class MeanField(Group):
    """q = N(loc, diag(sd^2)), sd = exp(log_sd): independent Gaussians, one per entry."""

    def __init__(self, params, priors, init_sd=1e-2):
        super().__init__(params, priors, init_sd)
        self.log_sd = nn.Parameter(torch.full_like(self.loc, math.log(init_sd)))

    def flat_sd(self):
        return self.log_sd.exp()

    def sample_flat(self, n, generator=None):
        return self.loc + self.flat_sd() * _randn((n, self.loc.numel()), self.loc, generator)

    def penalty(self) -> torch.Tensor:
        return gaussian_kl(self.loc, self.flat_sd(), self.prior_mean, self.prior_sd)


class FullRank(Group):
    """q = N(loc, L L^T) over the whole group: L lower triangular with a positive diagonal."""

    def __init__(self, params, priors, init_sd=1e-2):
        super().__init__(params, priors, init_sd)
        self.raw_tril = nn.Parameter(torch.diag(torch.full_like(self.loc, math.log(init_sd))))

    def tril(self) -> torch.Tensor:
        return torch.tril(self.raw_tril, -1) + torch.diag(self.raw_tril.diagonal().exp())

    def flat_sd(self):
        return self.tril().pow(2).sum(-1).sqrt()

    def sample_flat(self, n, generator=None):
        return self.loc + _randn((n, self.loc.numel()), self.loc, generator) @ self.tril().T

    def penalty(self) -> torch.Tensor:
        """KL(N(m, L L^T) || N(mu, diag(s^2))) = sum log(s / L_ii) + (|L / s|_F^2 + |(m - mu) / s|^2 - P) / 2."""
        tril, s = self.tril(), self.prior_sd
        return (torch.log(s) - torch.log(tril.diagonal())).sum() \
            + 0.5 * ((tril / s[:, None]).pow(2).sum() + ((self.loc - self.prior_mean) / s).pow(2).sum() - s.numel())


FAMILIES = {"fixed": Fixed, "point": Point, "mean_field": MeanField, "full": FullRank}


def _patterns(arg: str, patterns, names: list[str], kind) -> dict[str, str]:
    """{name: pattern}: the one pattern of ``patterns`` that matches each name; every pattern used."""
    if not isinstance(patterns, dict) or not patterns:
        raise TypeError(f"{arg} must be a non-empty dict {{name pattern: value}}, got {patterns!r}")
    for pattern, value in patterns.items():
        if not isinstance(value, kind):
            raise TypeError(f"{arg}[{pattern!r}] must be a {kind.__name__}, got {value!r}")
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"{arg} pattern {pattern!r} matches no parameter of the model: {names}")
    found = {}
    for name in names:
        hits = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
        if len(hits) != 1:
            raise ValueError(f"{arg} must have exactly one pattern matching parameter {name!r}, "
                             f"got {hits or 'none'} among {list(patterns)}")
        found[name] = hits[0]
    return found


class Posterior(nn.Module):
    """q(theta) over the named parameters of ``model``: groups bound by name, never by order.

    ``families`` {pattern: "fixed" | "point" | "mean_field" | "full"}: each pattern (``fnmatch``:
    "experts.*", "router.weight", "*") makes one group of the parameters it matches (a "full"
    group is one Gaussian over all of them); ``priors`` {pattern: Prior}. Every parameter name must
    match exactly one pattern of each, and every pattern some name. Groups start at the model's
    current values, with sd ``init_sd``.
    """

    def __init__(self, model: nn.Module, families: dict, priors: dict, init_sd: float = 1e-2):
        super().__init__()
        params = dict(model.named_parameters())
        names = sorted(params)
        members = _patterns("families", families, names, str)
        prior_of = {k: priors[p] for k, p in _patterns("priors", priors, names, Prior).items()}
        for name, prior in prior_of.items():
            checks.finite_float(f"prior sd of {name}", prior.sd, 0.0, low_open=True)
            checks.finite_float(f"prior mean of {name}", prior.mean)
        init_sd = checks.finite_float("init_sd", init_sd, 0.0, low_open=True)
        self.names, self.groups = names, nn.ModuleList()
        for pattern in sorted(families, key=lambda p: min(k for k in names if members[k] == p)):
            cls = FAMILIES[checks.choice("family", families[pattern], FAMILIES)]
            mine = {k: params[k] for k in names if members[k] == pattern}
            self.groups.append(cls(mine, prior_of, init_sd))

    def rsample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """n reparameterised draws {name: (n, *shape)}; groups draw in a fixed (name) order."""
        n = checks.positive_int("n", n)
        return {k: v for group in self.groups for k, v in group.rsample(n, generator).items()}

    def penalty(self) -> torch.Tensor:
        """KL(q || p) of the Gaussian groups plus -log p(theta) of the point groups (a scalar)."""
        return sum(group.penalty() for group in self.groups)

    def log_prior(self, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(theta) of draws {name: (S, ...)}, every group: (S,)."""
        return sum(group.log_prior(draws) for group in self.groups)

    def mean(self) -> dict[str, torch.Tensor]:
        """q's means {name: shape}."""
        return {k: v for group in self.groups for k, v in group.unflatten(group.loc.detach()).items()}

    def sd(self) -> dict[str, torch.Tensor]:
        """q's marginal standard deviations {name: shape} (0 for fixed and point groups)."""
        return {k: v for group in self.groups for k, v in group.sd().items()}


class BayesianMoE(nn.Module):
    """A router network (logits), stacked experts, and one Gaussian noise level sigma shared by
    the experts: ``likelihood`` is a ``likelihoods.Gaussian`` with one variance, log_var (1, O).

    Its parameters are named "router.*", "experts.*" and "likelihood.log_var" (= log sigma^2).
    """

    def __init__(self, router: nn.Module, experts: nn.Module, noise_sd: float = 0.1):
        super().__init__()
        if router.n_experts != experts.n_experts or router.n_inputs != experts.n_inputs:
            raise ValueError(f"router ({router.n_inputs} inputs, {router.n_experts} experts) and experts "
                             f"({experts.n_inputs} inputs, {experts.n_experts} experts) must agree")
        noise_sd = checks.finite_float("noise_sd", noise_sd, 0.0, low_open=True)
        self.router, self.experts = router, experts
        self.likelihood = likelihoods.Gaussian(1, experts.n_outputs, var=noise_sd**2)
        self.n_inputs, self.n_experts = experts.n_inputs, experts.n_experts

    @classmethod
    def from_moe(cls, moe: nn.Module) -> "BayesianMoE":
        """A copy of the router and experts of a fitted ``MixtureOfExperts`` (say, by EM) with a
        Gaussian head, and one noise level: the root mean of its experts' noise variances."""
        noise_sd = moe.likelihood.var.mean().sqrt().item()
        return cls(copy.deepcopy(moe.router), copy.deepcopy(moe.experts), noise_sd).to(moe.likelihood.log_var)

    def point(self) -> dict[str, torch.Tensor]:
        """The current parameters as one draw {name: (1, ...)}."""
        return {name: p.detach()[None] for name, p in self.named_parameters()}

    def forward(self, x: torch.Tensor, draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """log g(x) (S, N, E) and every expert's output (S, N, E, O) under each draw."""
        x = checks.inputs(x, self.n_inputs)
        part = lambda prefix: {k[len(prefix):]: v for k, v in draws.items() if k.startswith(prefix)}  # noqa: E731
        out = self.experts(x, part("experts."))
        router = part("router.")
        if out.shape[0] == 1:                                                   # one draw (NUTS): no vmap
            logits = functional_call(self.router, {k: v[0] for k, v in router.items()}, (x,))[None]
        else:
            logits = torch.vmap(lambda p: functional_call(self.router, p, (x,)))(router)
        return torch.log_softmax(logits, -1), out

    def log_lik(self, draws: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                likelihood: str = "mixture", forward=None) -> torch.Tensor:
        """log p(y_n | x_n, theta_s): (S, N), with the ``"mixture"`` or the ``"blended"`` likelihood.
        ``forward``: ``self(x, draws)`` if already computed."""
        likelihood = checks.choice("likelihood", likelihood, LIKELIHOODS)
        y = self.likelihood.targets(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
        log_gates, out = self(x, draws) if forward is None else forward
        log_var = draws["likelihood.log_var"][:, None]                           # (S, 1, 1, O)
        if likelihood == "blended":
            blend = torch.einsum("sne,sneo->sno", log_gates.exp(), out)
            return mixture.gaussian_log_prob(y, blend, log_var[:, 0].exp()).sum(-1)
        per_expert = mixture.gaussian_log_prob(y[:, None, :], out, log_var.exp()).sum(-1)  # (S, N, E)
        return mixture.log_prob(log_gates, per_expert)


def elbo(model: BayesianMoE, posterior: Posterior, x, y, n_draws: int = 16, likelihood: str = "mixture",
         generator=None) -> torch.Tensor:
    """E_q[sum_n log p(y_n | x_n, theta)] - KL(q || p), by n_draws reparameterised draws (nats)."""
    draws = posterior.rsample(n_draws, generator)
    return model.log_lik(draws, x, y, likelihood).sum(-1).mean() - posterior.penalty()


def fit(model: BayesianMoE, posterior: Posterior, x, y, steps: int = 1500, n_draws: int = 16, lr: float = 0.02,
        likelihood: str = "mixture", seed: int = 0, progress: bool = True) -> train.History:
    """Maximise the ELBO over q's parameters with Adam (lr decayed tenfold); returns the History
    (loss = -ELBO / N, and the per-sample ``kl`` logged)."""
    x = checks.matrix("x", x, d=model.n_inputs)
    n, gen = x.shape[0], torch.Generator().manual_seed(checks.seed(seed))
    n_draws = checks.positive_int("n_draws", n_draws)

    def loss(q, x, y):
        kl = q.penalty()
        fit_term = model.log_lik(q.rsample(n_draws, gen), x, y, likelihood).sum(-1).mean()
        return (kl - fit_term) / n, {"kl": kl.detach() / n}

    return train.fit(posterior, loss, x, y, epochs=steps, lr=lr, lr_end=lr / 10, seed=seed, progress=progress,
                     desc="ELBO")


def predictive_sample(model: BayesianMoE, draws: dict, x, likelihood: str = "mixture", generator=None,
                      forward=None) -> torch.Tensor:
    """One y per draw and input, noise included: (S, N, O). Mixture: pick an expert z ~ g(x), then
    y = f_z(x) + sigma eps; blended: y = sum_e g_e f_e + sigma eps. ``forward``: ``model(x, draws)``."""
    likelihood = checks.choice("likelihood", likelihood, LIKELIHOODS)
    with torch.no_grad():
        log_gates, out = model(x, draws) if forward is None else forward
        gates = log_gates.exp()
        if likelihood == "blended":
            mean = torch.einsum("sne,sneo->sno", gates, out)
        else:
            u = torch.rand(gates.shape[:-1] + (1,), generator=generator, dtype=gates.dtype).to(gates.device)
            z = (gates.cumsum(-1) < u).sum(-1).clamp_max(gates.shape[-1] - 1)  # inverse CDF: (S, N)
            mean = out.gather(-2, z[..., None, None].expand(*z.shape, 1, out.shape[-1]))[..., 0, :]
        sd = (0.5 * draws["likelihood.log_var"]).exp()                          # (S, 1, O)
        return mean + sd * _randn(mean.shape, mean, generator)


def log_predictive(model: BayesianMoE, draws: dict, x, y, likelihood: str = "mixture", forward=None) -> torch.Tensor:
    """log p(y_n | x_n, data) ~ log mean_s p(y_n | x_n, theta_s): (N,), the test log score."""
    with torch.no_grad():
        lik = model.log_lik(draws, x, y, likelihood, forward)
    return torch.logsumexp(lik, 0) - math.log(lik.shape[0])


def band(samples: torch.Tensor, level: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """The central ``level`` band of samples (S, ...): its (1 - level)/2 and (1 + level)/2 quantiles."""
    level = checks.finite_float("level", level, 0.0, 1.0, low_open=True, high_open=True)
    if not torch.is_tensor(samples) or samples.ndim < 1 or samples.shape[0] < 2:
        raise ValueError("samples must be a tensor (S, ...) with S >= 2 draws")
    flat = samples.reshape(samples.shape[0], -1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=flat.dtype, device=flat.device)
    step = max(1, 2**24 // flat.shape[0])                                       # torch.quantile's size limit
    out = torch.cat([torch.quantile(flat[:, i:i + step], q, dim=0) for i in range(0, flat.shape[1], step)], 1)
    return out[0].reshape(samples.shape[1:]), out[1].reshape(samples.shape[1:])


def nuts(model: BayesianMoE, posterior: Posterior, x, y, n_samples: int = 500, warmup: int = 500,
         likelihood: str = "mixture", seed: int = 0, max_tree_depth: int = 8, target_accept: float = 0.95,
         progress: bool = False):
    """The exact posterior of the same model: pyro's NUTS (Hoffman and Gelman, 2014) on
    -log p(y | x, theta) - log p(theta) with ``posterior``'s priors, every group random but the
    fixed ones, started at ``posterior``'s means. Returns draws {name: (n_samples, ...)} and pyro's diagnostics
    (``divergences``, ``acceptance rate``). Needs pyro-ppl (the ``chapters`` extra)."""
    import pyro
    from pyro.infer import MCMC, NUTS

    x = checks.matrix("x", x, d=model.n_inputs)
    fixed = {k: v for group in posterior.groups if type(group) is Fixed for k, v in group.rsample(1).items()}
    free = [k for k in posterior.names if k not in fixed]

    def potential(params):
        draws = {**fixed, **{k: params[k][None] for k in free}}
        return -(model.log_lik(draws, x, y, likelihood).sum() + posterior.log_prior(draws).sum())

    pyro.set_rng_seed(checks.seed(seed))
    target_accept = checks.finite_float("target_accept", target_accept, 0.0, 1.0, low_open=True, high_open=True)
    kernel = NUTS(potential_fn=potential, adapt_step_size=True, adapt_mass_matrix=True, full_mass=True,
                  target_accept_prob=target_accept,
                  max_tree_depth=checks.positive_int("max_tree_depth", max_tree_depth))
    mcmc = MCMC(kernel, num_samples=checks.positive_int("n_samples", n_samples),
                warmup_steps=checks.positive_int("warmup", warmup, minimum=0),
                initial_params={k: v for k, v in posterior.mean().items() if k in free}, disable_progbar=not progress)
    mcmc.run()
    diagnostics, draws = mcmc.diagnostics(), mcmc.get_samples()
    draws.update({k: v.expand(n_samples, *v.shape[1:]) for k, v in fixed.items()})
    return {k: draws[k] for k in posterior.names}, {k: diagnostics[k] for k in ("divergences", "acceptance rate")}
