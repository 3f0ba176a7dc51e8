import torch
from torch.distributions import Categorical, MixtureSameFamily, Normal

import moe_utils as mu


def random_mixture(n=50, e=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    log_gates = torch.log_softmax(torch.randn(n, e, generator=gen, dtype=torch.float64), -1)
    means = torch.randn(n, e, generator=gen, dtype=torch.float64)
    var = torch.rand(e, generator=gen, dtype=torch.float64) + 0.1
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    return log_gates, means, var, y


def test_log_prob_matches_torch_distributions():
    log_gates, means, var, y = random_mixture()
    reference = MixtureSameFamily(Categorical(logits=log_gates), Normal(means, var.sqrt())).log_prob(y)
    log_lik = mu.mixture.gaussian_log_prob(y[:, None], means, var)
    torch.testing.assert_close(mu.mixture.log_prob(log_gates, log_lik), reference)


def test_responsibilities_are_the_posterior_and_sum_to_one():
    log_gates, means, var, y = random_mixture()
    r = mu.mixture.e_step(log_gates, mu.mixture.gaussian_log_prob(y[:, None], means, var))[0]
    torch.testing.assert_close(r.sum(-1), torch.ones(len(y), dtype=torch.float64))
    joint = log_gates.exp() * Normal(means, var.sqrt()).log_prob(y[:, None]).exp()
    torch.testing.assert_close(r, joint / joint.sum(-1, keepdim=True))


def test_nothing_underflows_far_from_every_expert():
    log_gates = torch.log(torch.tensor([[0.5, 0.5]]))
    means, var = torch.tensor([[0.0, 1.0]]), torch.tensor([1e-4, 1e-4])
    y = torch.tensor([50.0])  # ~5000 standard deviations away: the densities underflow to 0
    log_lik = mu.mixture.gaussian_log_prob(y[:, None], means, var)
    assert torch.isfinite(mu.mixture.log_prob(log_gates, log_lik)).all()
    torch.testing.assert_close(mu.mixture.e_step(log_gates, log_lik)[0], torch.tensor([[0.0, 1.0]]))


def test_mean_is_the_gate_weighted_average():
    log_gates, means, _, _ = random_mixture()
    torch.testing.assert_close(mu.mixture.mean(log_gates.exp(), means), (log_gates.exp() * means).sum(-1))
    torch.testing.assert_close(mu.mixture.mean(log_gates.exp(), means[:, :, None])[:, 0], (log_gates.exp() * means).sum(-1))


def test_scores_and_point_log_prob():
    y, mean = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5])
    assert mu.scores(y, mean, torch.tensor([-1.0, -2.0])) == mu.Scores(0.125, 1.5)
    torch.testing.assert_close(mu.metrics.point_log_prob(y, mean, 0.25), Normal(mean, 0.5).log_prob(y))
