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
    # top-label (Guo et al. 2017): confidences 0.9, 0.8, 0.6, 0.7 of the top classes 0, 1, 0, 1; right, right, wrong, right
    rel = mu.metrics.reliability(torch.tensor([0.1, 0.8, 0.4, 0.7]), y, n_bins=4)
    torch.testing.assert_close(rel.count, torch.tensor([0, 0, 2, 2]))
    torch.testing.assert_close(rel.confidence[2:], torch.tensor([0.65, 0.85], dtype=F64))
    torch.testing.assert_close(rel.frequency[2:], torch.tensor([0.5, 1.0], dtype=F64))
    assert rel.confidence[:2].isnan().all() and rel.ece == pytest.approx(0.5 * 0.15 + 0.5 * 0.15)
    same = mu.metrics.reliability(log_probs.exp(), y, n_bins=4)  # a vector (N,) is p(y = 1) of (N, 2)
    for a, b in zip(same[:3], rel[:3]):
        torch.testing.assert_close(a, b, equal_nan=True)
    # one-vs-rest for class 1: the classic binary diagram, a different ECE
    one = mu.metrics.reliability(torch.tensor([0.1, 0.8, 0.4, 0.7]), y, n_bins=2, positive=1)
    torch.testing.assert_close(one.count, torch.tensor([2, 2]))
    torch.testing.assert_close(one.confidence, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(one.frequency, torch.tensor([0.5, 1.0], dtype=F64))
    assert one.ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)
    empty = mu.metrics.reliability(torch.tensor([0.05, 0.1]), torch.tensor([0, 0]), n_bins=4)
    assert empty.count.tolist() == [0, 0, 0, 2] and empty.ece == pytest.approx(0.075)


def test_top_label_reliability_matches_scikit_learn_for_three_classes():
    calibration_curve = pytest.importorskip("sklearn.calibration").calibration_curve
    gen = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((3,), 0.5)).sample((2000,))
    y = torch.multinomial(probs.sqrt(), 1, generator=gen)[:, 0]  # miscalibrated on purpose
    rel = mu.metrics.reliability(probs, y, n_bins=15)
    confidence, top = probs.double().max(1)
    hit = (top == y).double().numpy()
    accuracy, mean_confidence = calibration_curve(hit, confidence.numpy(), n_bins=15, strategy="uniform")
    full = rel.count > 0
    torch.testing.assert_close(rel.frequency[full], torch.as_tensor(accuracy))
    torch.testing.assert_close(rel.confidence[full], torch.as_tensor(mean_confidence))
    count = torch.histc(confidence, bins=15, min=0.0, max=1.0).long()
    torch.testing.assert_close(rel.count, count)
    ece = (count[full] / len(y) * (torch.as_tensor(accuracy) - torch.as_tensor(mean_confidence)).abs()).sum()
    assert rel.ece == pytest.approx(ece.item()) and rel.ece > 0.05


def test_reliability_rejects_what_is_not_a_distribution_over_classes():
    with pytest.raises(ValueError, match="sum to one"):
        mu.metrics.reliability(torch.tensor([[0.5, 0.6]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mu.metrics.reliability(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="positive"):
        mu.metrics.reliability(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), positive=2)
    with pytest.raises(ValueError, match="class labels"):
        mu.metrics.reliability(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
