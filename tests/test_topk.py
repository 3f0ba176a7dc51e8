"""Sparse routing rules against written-out per-token references of their published definitions,
and the auxiliary losses against their closed forms on hand-made router outputs."""

import math

import pytest
import torch

import moe_utils as mu
from moe_utils import balance
from moe_utils.topk import DeepSeek, ExpertChoice, NoisyTopK, Switch, TopK
from problems import F64

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731


def logits_of(n=25, n_experts=6, seed=0):
    return torch.randn(n, n_experts, generator=GEN(seed), dtype=F64)


# ---------------------------------------------------------------------- published rules, per token
@pytest.mark.parametrize("k", [1, 2, 3])
def test_mixtral_top_k_equals_its_per_token_definition(k):
    logits = logits_of(seed=k)
    routing = TopK(k=k)(logits)
    for n, row in enumerate(logits.tolist()):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        best = sorted(range(len(p)), key=lambda e: -p[e])[:k]
        total = sum(p[e] for e in best)
        assert routing.chosen[n].tolist() == best
        assert routing.weights[n].tolist() == pytest.approx([p[e] / total for e in best])


def test_mixtral_top_k_equals_hugging_face_mixtral_block_routing():
    # a re-statement of MixtralSparseMoeBlock's routing (transformers, modeling_mixtral.py)
    logits = logits_of(seed=9)
    routing_weights = torch.nn.functional.softmax(logits, dim=1, dtype=torch.float)
    routing_weights, selected_experts = torch.topk(routing_weights, 2, dim=-1)
    routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
    routing = TopK(k=2)(logits.float())
    assert torch.equal(routing.chosen, selected_experts)
    torch.testing.assert_close(routing.weights, routing_weights)


def test_renormalised_top_k_of_softmax_is_the_softmax_of_the_top_k_logits():
    logits = logits_of(seed=1)
    mixtral, shazeer = TopK(k=3)(logits), NoisyTopK(k=3, noisy=False)(logits)
    assert torch.equal(mixtral.chosen, shazeer.chosen)
    torch.testing.assert_close(mixtral.weights, shazeer.weights)
    unnormalised = TopK(k=3, normalise=False)(logits)
    torch.testing.assert_close(unnormalised.weights, torch.softmax(logits, -1).gather(1, mixtral.chosen))


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.5])
def test_switch_equals_its_per_token_definition_with_capacity(factor):
    logits = logits_of(n=40, n_experts=4, seed=2) + torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=F64)
    routing = Switch(capacity_factor=factor)(logits)
    capacity = math.ceil(factor * 40 / 4)
    used = [0] * 4
    for n, row in enumerate(logits.tolist()):
        z = sum(math.exp(v) for v in row)
        expert = max(range(4), key=lambda e: row[e])
        keep = used[expert] < capacity             # tokens in order; an expert's overflow is dropped
        used[expert] += keep
        assert routing.chosen[n].tolist() == [expert]
        assert routing.weights[n].item() == pytest.approx(math.exp(row[expert]) / z if keep else 0.0)
        assert routing.aux["kept"][n, 0].item() == keep
    assert routing.aux["capacity"] == capacity


@pytest.mark.parametrize("n_groups, top_groups, k", [(1, 1, 2), (4, 2, 3), (2, 1, 2)])
def test_deepseek_v3_equals_its_per_token_definition(n_groups, top_groups, k):
    logits = logits_of(n=20, n_experts=8, seed=3)
    rule = DeepSeek(8, k=k, routed_scale=2.5, n_groups=n_groups, top_groups=top_groups, bias_rate=0.0)
    rule.bias.copy_(torch.randn(8, generator=GEN(4)) * 0.3)
    bias, size = rule.bias.tolist(), 8 // n_groups
    routing = rule(logits)
    for n, row in enumerate(logits.tolist()):
        s = [1 / (1 + math.exp(-v)) for v in row]
        biased = [s[e] + bias[e] for e in range(8)]
        group_score = [sum(sorted(biased[g * size:(g + 1) * size])[-2:]) for g in range(n_groups)]
        open_groups = sorted(range(n_groups), key=lambda g: -group_score[g])[:top_groups]
        allowed = [e for e in range(8) if e // size in open_groups]
        best = sorted(allowed, key=lambda e: -biased[e])[:k]          # the bias only chooses ...
        total = sum(s[e] for e in best)                               # ... the weights are the scores
        assert sorted(routing.chosen[n].tolist()) == sorted(best)
        got = dict(zip(routing.chosen[n].tolist(), routing.weights[n].tolist()))
        assert [got[e] for e in best] == pytest.approx([2.5 * s[e] / total for e in best])


def test_deepseek_bias_balances_the_load_outside_the_gradient():
    logits = logits_of(n=400, n_experts=8, seed=5) + torch.linspace(2, -2, 8, dtype=F64)  # skewed
    logits.requires_grad_()
    rule = DeepSeek(8, k=2, bias_rate=0.01).double()
    before = balance.cv_squared(rule(logits).aux["load"]).item()
    for _ in range(300):
        routing = rule(logits)
    after = balance.cv_squared(routing.aux["load"]).item()
    assert after < 0.1 * before
    assert rule.bias[0] < 0 < rule.bias[-1]            # the popular expert is pushed down
    assert not rule.bias.requires_grad and "bias" not in dict(rule.named_parameters())
    rule.eval()
    frozen = rule.bias.clone()
    rule(logits)
    assert torch.equal(rule.bias, frozen)              # no update outside training


def test_expert_choice_gives_each_expert_exactly_its_capacity():
    logits = logits_of(n=30, n_experts=5, seed=6)
    routing = ExpertChoice(capacity_factor=1.5)(logits)
    c, kept = routing.aux["capacity"], routing.aux["kept"]
    assert c == math.ceil(1.5 * 30 / 5)
    assert kept.sum(0).tolist() == [c] * 5
    probs = torch.softmax(logits, -1)
    for e in range(5):  # expert e's picks are its c largest probabilities over tokens
        best = sorted(range(30), key=lambda n: -probs[n, e].item())[:c]
        assert sorted(torch.where(kept[:, e])[0].tolist()) == sorted(best)
    torch.testing.assert_close(routing.weights, probs * kept)
    torch.testing.assert_close(routing.aux["experts_per_token"].double().mean(), torch.tensor(c * 5 / 30, dtype=F64))
    assert float(routing.aux["dropped"]) == pytest.approx((kept.sum(1) == 0).double().mean().item())
    torch.testing.assert_close(routing.aux["load"], torch.full((5,), 0.2, dtype=F64))


def test_noisy_top_k_is_noisy_in_training_only_and_trains_its_noise_through_the_smooth_load():
    logits = torch.randn(50, 8, generator=GEN(7), dtype=F64, requires_grad=True)  # E = 4: clean | noise scale
    rule = NoisyTopK(k=2, load_weight=1.0, importance_weight=1.0, generator=GEN(8))
    first, second = rule(logits), rule(logits)
    assert not torch.equal(first.weights, second.weights)
    mu.mixture.aux_loss(first).backward()
    assert logits.grad[:, 4:].abs().sum() > 0           # the noise scales get a gradient
    rule.eval()
    clean = rule(logits)
    assert torch.equal(clean.chosen, logits[:, :4].topk(2, -1).indices)
    torch.testing.assert_close(clean.weights, torch.softmax(logits[:, :4].topk(2, -1).values, -1))


# ---------------------------------------------------------------------- auxiliary losses, closed forms
def test_switch_balance_closed_forms():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=F64)
    chosen = probs.argmax(-1, keepdim=True)
    # f = (3/4, 1/4), P = (0.65, 0.35): 2 (3/4 0.65 + 1/4 0.35) = 1.15
    assert balance.switch_balance(probs, chosen).item() == pytest.approx(1.15)
    uniform = torch.full((6, 3), 1 / 3, dtype=F64)
    assert balance.switch_balance(uniform, torch.tensor([[0], [1], [2]] * 2)).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0]] * 5, dtype=F64)
    assert balance.switch_balance(collapsed, torch.zeros(5, 1, dtype=torch.long)).item() == pytest.approx(3.0)


def test_switch_balance_is_hugging_faces_mixtral_loss_over_k():
    logits = logits_of(n=40, n_experts=6, seed=10)
    # a re-statement of transformers' load_balancing_loss_func for one layer, no attention mask
    routing_weights = torch.nn.functional.softmax(logits, dim=-1)
    _, selected_experts = torch.topk(routing_weights, 2, dim=-1)
    expert_mask = torch.nn.functional.one_hot(selected_experts, 6)
    tokens_per_expert = torch.mean(expert_mask.double(), dim=0)
    router_prob_per_expert = torch.mean(routing_weights, dim=0)
    hf = torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0)) * 6
    routing = TopK(k=2, balance_weight=1.0)(logits)
    torch.testing.assert_close(2 * routing.aux["balance_loss"], hf)


def test_cv_squared_importance_and_z_loss_closed_forms():
    assert balance.cv_squared(torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(0.0)
    assert balance.cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0])).item() == pytest.approx(3.0)   # E - 1
    assert balance.cv_squared(torch.tensor([1.0, 3.0])).item() == pytest.approx(0.25)
    weights = torch.tensor([[0.7, 0.3], [0.6, 0.4], [1.0, 0.0]], dtype=F64)
    chosen = torch.tensor([[0, 2], [2, 1], [1, 0]])
    torch.testing.assert_close(balance.importance(weights, chosen, 4), torch.tensor([0.7, 1.4, 0.9, 0.0], dtype=F64))
    assert balance.z_loss(torch.zeros(7, 5)).item() == pytest.approx(math.log(5) ** 2)
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=F64)       # log Z = log 4, 1 + log 2
    assert balance.z_loss(logits).item() == pytest.approx((math.log(4) ** 2 + (1 + math.log(2)) ** 2) / 2)


def test_smooth_load_closed_form():
    # two experts, k = 1: expert 0 leads (noisy 1 > -1); with fresh noise of sd 1 it stays ahead of
    # the other's noisy logit -1 with probability Phi(1); expert 1 beats 1 with probability Phi(-1)
    clean, noisy, sd = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    torch.testing.assert_close(balance.smooth_load(clean, noisy, sd, 1), torch.tensor([phi(1), phi(-1)]))
    with pytest.raises(ValueError, match="k < E"):
        balance.smooth_load(clean, noisy, sd, 2)


def test_aux_losses_are_returned_weighted_and_summed_by_aux_loss():
    logits = logits_of(seed=11)
    plain = TopK(k=2)(logits)
    assert not [k for k in plain.aux if k.endswith("_loss")] and mu.mixture.aux_loss(plain) == 0
    assert {"load", "z", "dropped"} <= set(plain.aux) and "balance" not in plain.aux
    weighted = TopK(k=2, balance_weight=0.1, z_weight=0.01, importance_weight=0.5)(logits)
    probs = torch.softmax(logits, -1)
    want = (0.1 * balance.switch_balance(probs, plain.chosen) + 0.01 * balance.z_loss(logits)
            + 0.5 * balance.cv_squared(balance.importance(plain.weights, plain.chosen, 6)))
    torch.testing.assert_close(mu.mixture.aux_loss(weighted), want)
    torch.testing.assert_close(weighted.aux["balance_loss"], 0.1 * weighted.aux["balance"])
    torch.testing.assert_close(plain.aux["load"].sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(plain.aux["z"], balance.z_loss(logits))


def test_a_sparse_routing_combines_with_the_core_mixture_functions():
    logits, out = logits_of(seed=12), torch.randn(25, 6, 3, generator=GEN(13), dtype=F64)
    routing = TopK(k=2)(logits)
    want = (routing.weights[:, :, None] * out.gather(1, routing.chosen[:, :, None].expand(-1, -1, 3))).sum(1)
    torch.testing.assert_close(mu.mixture.combine(routing, out), want)


# ---------------------------------------------------------------------- bad input
def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="k must be >= 1"):
        TopK(k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        TopK(k=1.5)
    with pytest.raises(ValueError, match=r"k must be <= the number of experts 3, got k = 4"):
        TopK(k=4)(torch.zeros(5, 3))
    for factor in [0.0, -1.0]:
        with pytest.raises(ValueError, match="capacity_factor"):
            Switch(capacity_factor=factor)
        with pytest.raises(ValueError, match="capacity_factor"):
            ExpertChoice(capacity_factor=factor)
    with pytest.raises(ValueError, match=r"logits must have shape \(N, E\)"):
        TopK(k=1)(torch.zeros(5))
    with pytest.raises(ValueError, match="2 per expert"):
        NoisyTopK(k=1)(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        TopK(k=1)(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="logits"):
        TopK(k=1)([[0.0, 1.0]])
    with pytest.raises(ValueError, match="balance_weight"):
        TopK(k=1, balance_weight=-1.0)
    with pytest.raises(ValueError, match="n_groups"):
        DeepSeek(6, k=2, n_groups=4)
    with pytest.raises(ValueError, match="k must be <="):
        DeepSeek(8, k=3, n_groups=4, top_groups=1)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        DeepSeek(8, k=2)(torch.zeros(3, 6))
