"""Dispatch and the sparse layer: E = 1 is a dense FFN, k = E the dense soft MoE, and the dense
reference, capacity-padded, sort-based and masked-loop dispatches agree, forward and backward."""

import pytest
import torch

import moe_utils as mu
from moe_utils import dispatch
from moe_utils.topk import Switch, TopK
from problems import F64

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731
DISPATCHES = {"dense": dispatch.dense, "sort": dispatch.sort_based, "loop": dispatch.masked_loop,
              "padded": lambda *a, kept=None: dispatch.padded(*a, capacity=a[1].shape[0], kept=kept)}


def experts_of(gated, n_experts, d=5, h=7, seed=0):
    return mu.experts.MLP(d, h, d, n_experts, activation="gelu", gated=gated, generator=GEN(seed)).double()


def gradients(fn, *tensors):
    """Value and gradients of a fixed random projection of fn() with respect to tensors."""
    out = fn()
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("how", ["sort", "padded", "dense", "loop"])
def test_one_expert_is_a_dense_ffn_in_output_and_gradients(gated, how):
    # megablocks' test: a sparse layer with E = 1 (k = 1) is the dense feed-forward layer
    layer = mu.SparseMoE(5, 7, 1, rule=TopK(k=1), gated=gated, dispatch=how, generator=GEN()).double()
    x = torch.randn(12, 5, generator=GEN(1), dtype=F64, requires_grad=True)
    e = layer.experts
    if gated:
        ffn = lambda: (torch.nn.functional.silu(x @ e.w_gate[0]) * (x @ e.w_up[0])) @ e.w_down[0]  # noqa: E731
    else:
        ffn = lambda: torch.nn.functional.gelu(x @ e.w1[0] + e.b1[0]) @ e.w2[0] + e.b2[0]  # noqa: E731
    params = [x, *e.parameters()]
    want, want_grads = gradients(ffn, *params)
    got, got_grads = gradients(lambda: layer(x).out, *params)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("how", ["sort", "padded", "dense", "loop"])
def test_k_equal_to_e_is_the_dense_soft_moe(how):
    layer = mu.SparseMoE(5, 7, 4, rule=TopK(k=4), dispatch=how, generator=GEN()).double()
    x = torch.randn(20, 5, generator=GEN(2), dtype=F64, requires_grad=True)
    params = [x, *layer.parameters()]

    def soft():  # every expert weighted by the router's softmax
        return mu.mixture.mean(torch.softmax(layer.router(x), -1), layer.experts(x))

    want, want_grads = gradients(soft, *params)
    got, got_grads = gradients(lambda: layer(x).out, *params)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def routed_case(n, n_experts, k, seed, skewed=False):
    gen = GEN(seed)
    logits = torch.randn(n, n_experts, generator=gen, dtype=F64)
    if skewed:  # expert 0 popular, the last expert never chosen
        logits[:, 0] += 2.0
        logits[:, -1] -= 100.0
    weights, chosen = torch.softmax(logits, -1).topk(k, -1)
    x = torch.randn(n, 5, generator=gen, dtype=F64, requires_grad=True)
    return x, chosen, weights.requires_grad_()


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("n_experts, k, skewed", [(4, 1, False), (4, 2, True), (8, 3, True), (3, 3, False)])
def test_sort_padded_loop_and_dense_agree_forward_and_backward(gated, n_experts, k, skewed):
    experts = experts_of(gated, n_experts)
    x, chosen, weights = routed_case(33, n_experts, k, seed=n_experts + k, skewed=skewed)
    params = [x, weights, *experts.parameters()]
    want, want_grads = gradients(lambda: dispatch.dense(experts, x, chosen, weights), *params)
    for name, fn in DISPATCHES.items():
        got, got_grads = gradients(lambda: fn(experts, x, chosen, weights), *params)
        torch.testing.assert_close(got, want, msg=name)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, msg=name)


def test_with_dropped_assignments_every_dispatch_drops_the_same():
    experts = experts_of(True, 4)
    x, chosen, weights = routed_case(40, 4, 2, seed=3, skewed=True)
    c = 9
    kept = dispatch.positions(chosen, 4) < c
    assert not kept.all()
    params = [x, weights, *experts.parameters()]
    want, want_grads = gradients(lambda: dispatch.dense(experts, x, chosen, weights, kept=kept), *params)
    runs = {name: (lambda fn=fn: fn(experts, x, chosen, weights, kept=kept)) for name, fn in DISPATCHES.items()}
    runs["padded, dropping itself"] = lambda: dispatch.padded(experts, x, chosen, weights, capacity=c)
    for name, run in runs.items():
        got, got_grads = gradients(run, *params)
        torch.testing.assert_close(got, want, msg=name)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, msg=name)


def test_positions_follow_gshard_priority_first_choices_then_token_order():
    chosen = torch.tensor([[0, 1], [1, 0], [0, 2], [0, 1]])
    pos = dispatch.positions(chosen, 3)
    # expert 0 queue: first choices of tokens 0, 2, 3, then token 1's second choice
    assert pos.tolist() == [[0, 1], [0, 3], [1, 0], [2, 2]]
    kept = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    pos = dispatch.positions(chosen, 3, kept)
    assert pos[kept].tolist() == [0, 1, 0, 0, 1, 2]


def test_capacity_keeps_at_most_c_tokens_per_expert_and_counts_the_rest():
    gen = GEN(4)
    logits = torch.randn(200, 4, generator=gen, dtype=F64) + torch.tensor([1.5, 0.0, 0.0, -1.0], dtype=F64)
    for factor in [0.5, 1.0, 1.25, 2.0]:
        routing = Switch(capacity_factor=factor)(logits)
        c, kept = routing.aux["capacity"], routing.aux["kept"]
        assert c == dispatch.capacity(200, 4, 1, factor)
        per_expert = torch.bincount(routing.chosen[kept], minlength=4)
        wanted = torch.bincount(routing.chosen.reshape(-1), minlength=4)
        torch.testing.assert_close(per_expert, torch.minimum(wanted, torch.tensor(c)))
        assert float(routing.aux["dropped"]) == pytest.approx(1 - per_expert.sum().item() / 200)
        assert (routing.weights[~kept] == 0).all()
        # the kept tokens of each expert are its first c tokens, in token order
        for e in range(4):
            tokens = torch.where(routing.chosen[:, 0] == e)[0]
            assert kept[tokens[:c], 0].all() and not kept[tokens[c:], 0].any()


def test_the_plan_groups_tokens_by_expert_and_counts_them():
    chosen = torch.tensor([[2, 0], [2, 3], [0, 2]])
    plan = dispatch.sort(chosen, 5)
    assert plan.counts.tolist() == [2, 0, 3, 1, 0]          # expert 1 and 4 get nothing
    assert plan.token.tolist() == [0, 2, 0, 1, 2, 1]
    assert chosen.reshape(-1)[plan.slot].tolist() == [0, 0, 2, 2, 2, 3]
    kept = torch.tensor([[True, False], [True, True], [False, True]])
    plan = dispatch.sort(chosen, 5, kept)
    assert plan.counts.tolist() == [0, 0, 3, 1, 0] and plan.token.tolist() == [0, 1, 2, 1]


def test_blocks_of_any_family_equal_the_stacked_forward():
    gen = GEN(5)
    for experts in [mu.experts.Linear(3, 2, 4, generator=gen), mu.experts.MLP(3, 5, 2, 4, generator=gen),
                    mu.experts.MLP(3, 5, 2, 4, gated=True, generator=gen)]:
        z = [torch.randn(n, 3, generator=gen) for n in (3, 0, 1, 4)]
        for e, (block, out) in enumerate(zip(z, experts.blocks(z))):
            torch.testing.assert_close(out, experts.function(experts.params(), block)[:, e])
        with pytest.raises(ValueError, match="one block per expert"):
            experts.blocks(z[:2])
        with pytest.raises(ValueError, match="shape"):
            experts.blocks([torch.zeros(2, 4)] * 4)


def test_the_layer_gives_the_same_output_and_gradients_with_every_dispatch():
    x = torch.randn(30, 6, generator=GEN(6), dtype=F64)
    results = {}
    for how in ["sort", "padded", "dense", "loop"]:
        layer = mu.SparseMoE(6, 8, 5, rule=Switch(capacity_factor=0.8, z_weight=1e-3), n_shared=1, dispatch=how,
                             generator=GEN(7)).double()
        out = layer(x)
        (out.out.square().mean() + mu.mixture.aux_loss(out.routing)).backward()
        results[how] = (out.out.detach(), [p.grad for p in layer.parameters()])
        assert float(out.routing.aux["dropped"]) > 0
    for how, (out, grads) in results.items():
        torch.testing.assert_close(out, results["dense"][0], msg=how)
        for g, w in zip(grads, results["dense"][1]):
            torch.testing.assert_close(g, w, msg=how)


def test_bad_input_gets_a_clear_error():
    experts = experts_of(True, 3)
    x, chosen, weights = routed_case(6, 3, 2, seed=0)
    with pytest.raises(ValueError, match="capacity_factor"):
        dispatch.capacity(10, 3, 1, 0.0)
    with pytest.raises(ValueError, match="capacity"):
        dispatch.padded(experts, x, chosen, weights, capacity=0)
    with pytest.raises(ValueError, match="x must have shape"):
        dispatch.sort_based(experts, x[:4], chosen, weights)
    with pytest.raises(ValueError, match="weights must have the shape"):
        dispatch.sort_based(experts, x, chosen, weights[:, :1])
    with pytest.raises(ValueError, match="expert indices"):
        dispatch.dense(experts, x, chosen + 3, weights)
    with pytest.raises(ValueError, match="chosen"):
        dispatch.masked_loop(experts, x, chosen.double(), weights)
    with pytest.raises(ValueError, match="dispatch"):
        mu.SparseMoE(4, 4, 2, dispatch="scatter")
    layer = mu.SparseMoE(4, 4, 2)
    with pytest.raises(ValueError, match="x contains NaN"):
        layer(torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4\)"):
        layer(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="k must be <="):
        mu.SparseMoE(4, 4, 2, rule=TopK(k=3))(torch.zeros(3, 4))


def test_experts_that_standardise_their_inputs_dispatch_the_same():
    experts = mu.experts.MLP(5, 7, 5, 3, shift=torch.linspace(-1, 1, 5), scale=torch.linspace(0.5, 2, 5),
                             generator=GEN(8)).double()
    x, chosen, weights = routed_case(20, 3, 2, seed=9)
    want = dispatch.dense(experts, x, chosen, weights)
    for name, fn in DISPATCHES.items():
        torch.testing.assert_close(fn(experts, x, chosen, weights), want, msg=name)


def test_the_steps_compose_with_or_without_concatenating_the_blocks():
    experts = experts_of(True, 4)
    x, chosen, weights = routed_case(25, 4, 2, seed=10, skewed=True)
    plan = dispatch.sort(chosen, 4)
    xs = dispatch.permute(x, plan)
    joined = dispatch.combine(dispatch.compute(experts, xs, plan.counts), plan, weights, 25)
    blocks = dispatch.compute(experts, xs, plan.counts, cat=False)
    assert [len(b) for b in blocks] == plan.counts.tolist() and plan.counts[-1] == 0
    torch.testing.assert_close(dispatch.combine(blocks, plan, weights, 25), joined)
    torch.testing.assert_close(joined, dispatch.dense(experts, x, chosen, weights))


@pytest.mark.parametrize("gated", [True, False])
def test_grouped_products_equal_the_blocks_forward_and_backward(gated):
    # float32 (grouped_mm's type on the CPU), an expert with no rows, D, H, O multiples of 4
    experts = mu.experts.MLP(8, 12, 4, 4, activation="gelu", gated=gated, generator=GEN(11))
    counts = torch.tensor([5, 0, 9, 3])
    z = torch.randn(17, 8, generator=GEN(12), requires_grad=True)
    params = [z, *experts.parameters()]
    assert experts.groupable(z)
    want, want_grads = gradients(lambda: torch.cat(experts.blocks(z.split(counts.tolist()))), *params)
    got, got_grads = gradients(lambda: experts.grouped(z, counts), *params)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_sort_based_groups_the_products_only_when_autograd_records():
    experts = mu.experts.MLP(8, 12, 8, 4, activation="gelu", generator=GEN(13))
    _, chosen, weights = routed_case(30, 4, 2, seed=14, skewed=True)              # the last expert unused
    x = torch.randn(30, 8, generator=GEN(15), requires_grad=True)
    weights = weights.detach().float().requires_grad_()
    assert dispatch._grouped(experts, x, 60)
    with torch.no_grad():
        assert not dispatch._grouped(experts, x, 60)
        torch.testing.assert_close(dispatch.sort_based(experts, x, chosen, weights),  # a gather per expert
                                   dispatch.dense(experts, x, chosen, weights))
    assert not dispatch._grouped(experts, x, dispatch.GROUPED_ROWS * 4 + 1)  # many rows per expert
    assert not dispatch._grouped(experts.double(), x.double(), 60)    # grouped_mm has no float64
    experts.float()
    params = [x, weights, *experts.parameters()]
    want, want_grads = gradients(lambda: dispatch.dense(experts, x, chosen, weights), *params)
    got, got_grads = gradients(lambda: dispatch.sort_based(experts, x, chosen, weights), *params)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    with pytest.raises(ValueError, match="grouped needs float32"):
        mu.experts.MLP(5, 7, 5, 3).grouped(torch.zeros(4, 5), torch.tensor([1, 2, 1]))
