"""Routing rules and the Routing tuple: softmax, Gumbel, the mixture likelihood of a routing."""

import math

import pytest
import torch

import moe_utils as mu
from moe_utils.routing import Gumbel, Routing, Softmax
from problems import F64, ROUTERS

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731


def test_softmax_rule_and_its_temperature():
    logits = torch.randn(20, 4, generator=GEN(), dtype=F64)
    routing = Softmax()(logits)
    torch.testing.assert_close(routing.log_probs, torch.log_softmax(logits, -1))
    torch.testing.assert_close(routing.weights, routing.log_probs.exp())
    assert routing.chosen is None and dict(routing.aux) == {} and not routing.sampled
    cold = Softmax(temperature=1e-5)(logits)  # T -> 0 is the argmax
    torch.testing.assert_close(cold.weights, torch.nn.functional.one_hot(logits.argmax(-1), 4).to(F64))
    with pytest.raises(TypeError):
        routing.aux["x_loss"] = 1.0  # nothing is stored globally: the default aux dict is read-only


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_samples_in_training_is_deterministic_in_eval_and_passes_gradients(hard):
    logits = torch.randn(50, 3, generator=GEN(), dtype=F64, requires_grad=True)
    rule = Gumbel(tau=0.5, hard=hard, generator=GEN(1))
    first, second = rule(logits), rule(logits)
    assert not torch.equal(first.weights, second.weights)
    if hard:
        assert first.sampled and set(first.weights.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(first.weights.sum(-1), torch.ones(50, dtype=F64))
    (first.weights * torch.arange(3.0, dtype=F64)).sum().backward()
    assert logits.grad.abs().sum() > 0
    rule.eval()
    torch.testing.assert_close(rule(logits).log_probs, torch.log_softmax(logits, -1))
    rule.eval_rule = "argmax"
    torch.testing.assert_close(rule(logits).weights, torch.nn.functional.one_hot(logits.argmax(-1), 3).to(F64))


def test_gumbel_max_samples_the_softmax():
    rule = Gumbel(tau=1e-3, hard=True, generator=GEN(2))
    logits = torch.tensor([1.0, 0.0, -1.0], dtype=F64).expand(40_000, 3)
    frequency = rule(logits).weights.mean(0)
    torch.testing.assert_close(frequency, torch.softmax(logits[0], -1), atol=0.01, rtol=0)


def test_routing_log_prob_dense_sampled_and_chosen():
    log_lik = torch.randn(6, 3, generator=GEN(3), dtype=F64) * 30
    logits = torch.randn(6, 3, generator=GEN(4), dtype=F64)
    dense = Softmax()(logits)
    torch.testing.assert_close(mu.mixture.routing_log_prob(dense, log_lik),
                               torch.logsumexp(torch.log_softmax(logits, -1) + log_lik, -1))
    # a one-hot routing is exact however far the other experts are (no clamping of log 0)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).to(F64)
    exact = log_lik.gather(1, torch.tensor([0, 1, 2, 0, 1, 2])[:, None])[:, 0]
    torch.testing.assert_close(mu.mixture.routing_log_prob(Routing(one_hot.log(), one_hot), log_lik), exact)
    torch.testing.assert_close(mu.mixture.routing_log_prob(Routing(logits, one_hot, sampled=True), log_lik), exact)
    # chosen experts with renormalised weights equal the dense mixture over those experts
    chosen = torch.tensor([[0, 2]] * 6)
    weights = torch.softmax(logits[:, [0, 2]], -1)
    dense_pair = torch.zeros(6, 3, dtype=F64).scatter(1, chosen, weights)
    torch.testing.assert_close(mu.mixture.routing_log_prob(Routing(logits, weights, chosen), log_lik),
                               torch.logsumexp(dense_pair.log() + log_lik, -1))
    torch.testing.assert_close(mu.mixture.combine(Routing(logits, weights, chosen), log_lik[:, :, None])[:, 0],
                               (dense_pair * log_lik).sum(-1))


def test_straight_through_passes_capped_gradients_to_unchosen_experts():
    log_lik = torch.tensor([[0.0, 5.0, 100.0]], dtype=F64)
    soft = torch.tensor([[0.6, 0.3, 0.1]], dtype=F64, requires_grad=True)
    hard = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    weights = hard - soft.detach() + soft
    value = mu.mixture.routing_log_prob(Routing(soft.log(), weights, sampled=True), log_lik)
    assert value.item() == 0.0  # log p_z(y): the chosen expert's
    value.backward()
    torch.testing.assert_close(soft.grad, torch.tensor([[1.0, math.exp(5.0), math.exp(mu.mixture.ST_CAP)]], dtype=F64))


@pytest.mark.parametrize("name", ROUTERS)
def test_routers_by_name_standardise_their_inputs(name):
    x = torch.randn(30, 2, generator=GEN(5), dtype=F64) * 5 + 10
    r = mu.routing.make(name, 2, 3, x=x).double()
    assert r(x).shape == (30, 3)
    torch.testing.assert_close(r.standardise(x).mean(0), torch.zeros(2, dtype=F64))
    assert r.log_prior().ndim == 0


@pytest.mark.parametrize("call, error, words", [
    (lambda: mu.routing.make("tree", 1, 2), ValueError, "unknown router 'tree'"),
    (lambda: mu.routing.Linear(1, 0), ValueError, "n_experts must be >= 1"),
    (lambda: mu.routing.Constant(1, 2, alpha=0.5), ValueError, "alpha must be in"),
    (lambda: mu.routing.Linear(2, 3)(torch.zeros(4, 1)), ValueError, r"x must have shape \(N, 2\)"),
    (lambda: Softmax(temperature=0.0), ValueError, "temperature must be in"),
    (lambda: Gumbel(tau=-1.0), ValueError, "tau must be in"),
    (lambda: Gumbel(eval_rule="sample"), ValueError, "unknown eval_rule 'sample'"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
