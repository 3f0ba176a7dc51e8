"""The 2-D data sets and the classification metrics."""

import math

import pytest
import torch

import moe_utils as mu

F64 = torch.float64


@pytest.mark.parametrize("n", [1, 2, 7, 1001])
def test_blobs_sizes_halves_and_the_rule(n):
    x, y, z = mu.data2d.blobs(n, seed=3)
    assert x.shape == (n, 2) and y.shape == z.shape == (n,) and x.dtype == torch.float32
    assert y.dtype == z.dtype == torch.long
    assert (z == 0).sum() == n // 2 and (z == 1).sum() == n - n // 2
    assert torch.equal(mu.data2d.circle_rule(x), y)


def test_blobs_are_seeded_and_follow_the_reference_recipe():
    x, y, z = mu.data2d.blobs(20001, seed=0, dtype=F64)
    a, b = mu.data2d.blobs(20001, seed=0, dtype=F64), mu.data2d.blobs(20001, seed=1, dtype=F64)
    assert torch.equal(a[0], x) and not torch.equal(b[0], x)
    torch.testing.assert_close(x[z == 0].mean(0), torch.tensor([3.0, 0.0], dtype=F64), atol=0.05, rtol=0)
    torch.testing.assert_close(x[z == 1].mean(0), torch.tensor([-3.0, 0.0], dtype=F64), atol=0.05, rtol=0)
    torch.testing.assert_close(x[z == 1].std(0), torch.ones(2, dtype=F64), atol=0.03, rtol=0)
    before_shift = x + torch.tensor([0.0, 2.0], dtype=F64)   # the reference labels before shifting y by -2
    assert torch.equal((before_shift.norm(dim=1) > math.sqrt(13)).long(), y)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=F64)
    assert torch.allclose((centres - torch.tensor(mu.data2d.CENTRE, dtype=F64)).norm(dim=1),
                          torch.full((2,), mu.data2d.RADIUS, dtype=F64))  # the circle passes through both centres


def test_split_is_seeded_and_keeps_the_rule():
    s = mu.data2d.blobs_split(1001, test_size=0.5, seed=2)
    assert len(s.x_train) + len(s.x_test) == 1001 and s.x_train.shape[1] == 2
    assert torch.equal(mu.data2d.circle_rule(s.x_test), s.y_test) and torch.equal(mu.data2d.circle_rule(s.x_train), s.y_train)
    assert torch.equal(mu.data2d.blobs_split(1001, seed=2).x_test, s.x_test)


def test_scores_and_reliability_by_hand():
    log_probs = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]))
    y = torch.tensor([0, 1, 1, 1])
    s = mu.metrics.class_scores(log_probs, y)
    assert s.accuracy == 0.75 and s.nll == pytest.approx(-(math.log(0.9 * 0.8 * 0.4 * 0.7)) / 4)
    rel = mu.metrics.reliability(torch.tensor([0.1, 0.8, 0.4, 0.7]), y, n_bins=2)
    torch.testing.assert_close(rel.count, torch.tensor([2, 2]))
    torch.testing.assert_close(rel.confidence, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(rel.frequency, torch.tensor([0.5, 1.0], dtype=F64))
    assert rel.ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)
    empty = mu.metrics.reliability(torch.tensor([0.05, 0.1]), torch.tensor([0, 0]), n_bins=4)
    assert empty.count.tolist() == [2, 0, 0, 0] and empty.ece == pytest.approx(0.075)


