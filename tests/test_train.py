"""train.fit_many: several models of one architecture trained at once."""

import copy

import pytest
import torch

import moe_utils as mu
from problems import model, problem


def data_sets(likelihood, m=3, n=120):
    """m different data sets of one size, stacked: inputs (m, N, D) and targets (m, N)."""
    parts = [problem(likelihood, n, seed=s)[:2] for s in range(m)]
    return torch.stack([x for x, _ in parts]), torch.stack([y for _, y in parts])


@pytest.mark.parametrize("likelihood", ["gaussian"])  # vmap cannot run the Categorical head's label check
def test_fit_many_is_fit_on_each_model(likelihood):
    xs, ys = data_sets(likelihood)
    models = [model(likelihood, xs[m], n_experts=3, seed=m) for m in range(3)]
    alone = copy.deepcopy(models)
    seen = []
    histories = mu.train.fit_many(models, mu.competitive_loss, xs, ys, epochs=25, lr=0.05, lr_end=0.01,
                                  progress=False, callback=lambda epoch, m: seen.append(epoch))
    assert seen == [e for e in range(25) for _ in range(3)]
    for m, (batched, single) in enumerate(zip(models, alone)):
        history = mu.train.fit(single, mu.competitive_loss, xs[m], ys[m], epochs=25, lr=0.05, lr_end=0.01,
                               progress=False)
        torch.testing.assert_close(torch.tensor(histories[m].loss), torch.tensor(history.loss))
        for (name, p), q in zip(batched.named_parameters(), single.parameters()):
            torch.testing.assert_close(p, q, msg=name)
        assert not batched.training


def test_fit_many_draws_different_gumbel_noise_for_each_model():
    xs, ys = data_sets("gaussian", m=1)
    first = mu.MixtureOfExperts.linear(2, 1, 2, router="mlp", rule=mu.routing.Gumbel(hard=True), x=xs[0]).double()
    twins = [first, copy.deepcopy(first)]
    histories = mu.train.fit_many(twins, mu.competitive_loss, xs.expand(2, -1, -1), ys.expand(2, -1), epochs=10,
                                  lr=0.05, progress=False)
    assert histories[0].loss != histories[1].loss


@pytest.mark.parametrize("call, error, words", [
    (lambda m, xs, ys: mu.train.fit_many([], mu.competitive_loss, xs, ys), TypeError, "non-empty list"),
    (lambda m, xs, ys: mu.train.fit_many([m], mu.competitive_loss, xs, ys), ValueError, r"shape \(1, N, ...\)"),
    (lambda m, xs, ys: mu.train.fit_many([m, m, m], mu.competitive_loss, xs, ys[:, :5]), ValueError,
     "one data set per model"),
    (lambda m, xs, ys: mu.train.fit_many([m, m, m], mu.competitive_loss, xs * torch.nan, ys), ValueError,
     "xs contains NaN"),
])
def test_fit_many_bad_input_raises_a_clear_error(call, error, words):
    xs, ys = data_sets("gaussian")
    with pytest.raises(error, match=words):
        call(model("gaussian", xs[0]), xs, ys)
