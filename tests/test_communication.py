"""The cost of the exchanges: bytes counted and expected, the alpha-beta fit and model, one real run."""

import math

import pytest
import torch
from scipy import stats

import moe_utils as mu
from conftest import cuda
from moe_utils import communication as comm


def test_element_size():
    assert comm.element_size(torch.float32) == 4 and comm.element_size(torch.bfloat16) == 2
    with pytest.raises(TypeError, match="dtype"):
        comm.element_size("float32")


def test_rows_sent_leaves_out_the_ranks_own_experts():
    counts = torch.tensor([3, 1, 4, 1, 5, 9])                  # 6 experts on 3 ranks: (3, 1), (4, 1), (5, 9)
    assert [comm.rows_sent(counts, r, 3) for r in range(3)] == [19, 18, 9]
    assert comm.rows_sent(counts, 0, 1) == 0                   # one rank: nothing leaves it
    with pytest.raises(ValueError, match="divisible"):
        comm.rows_sent(counts, 0, 4)
    with pytest.raises(ValueError, match="rank must be < world_size"):
        comm.rows_sent(counts, 3, 3)
    with pytest.raises(ValueError, match="counts must be a tensor"):
        comm.rows_sent([3, 1], 0, 2)


def _expected_min(n, p, c):
    """E[min(L, C)] for L ~ Binomial(n, p), from scipy."""
    loads = range(n + 1)
    return sum(min(l, c) * stats.binom.pmf(l, n, p) for l in loads)


@pytest.mark.parametrize("n, e, k, r, c", [(100, 8, 2, 4, 30), (257, 16, 1, 2, 12), (64, 4, 3, 4, 50)])
def test_expected_rows_against_scipy(n, e, k, r, c):
    expected = (r - 1) * (e // r) * _expected_min(n, k / e, c)
    assert comm.expected_rows(n, e, k, r, capacity=c) == pytest.approx(expected, rel=1e-9)


def test_expected_rows_limits():
    assert comm.expected_rows(1000, 8, 2, 4) == 1000 * 2 * 3 / 4
    assert comm.expected_rows(1000, 8, 2, 4, capacity=1000) == pytest.approx(1500.0)   # C = N: nothing dropped
    assert comm.expected_rows(1000, 8, 2, 4, capacity=1) == pytest.approx(comm.padded_rows(8, 4, 1))  # always full
    assert comm.padded_rows(8, 4, 10) == 3 * 2 * 10
    with pytest.raises(ValueError, match="k must be <= n_experts"):
        comm.expected_rows(10, 4, 5, 2)
    with pytest.raises(ValueError, match="divisible"):
        comm.padded_rows(6, 4, 3)


@pytest.mark.parametrize("k, factor", [(1, None), (2, None), (2, 1.0), (1, 1.25), (4, 0.5)])
def test_uniform_routing_sends_what_is_expected(k, factor):
    n, e, r, repeats = 512, 8, 4, 40
    gen = torch.Generator().manual_seed(k)
    sent = []
    for i in range(repeats):
        counts, c = comm.uniform_counts(n, e, k, factor, generator=gen)
        assert counts.sum() <= n * k and (c is None or counts.max() <= c)
        sent.append(comm.rows_sent(counts, i % r, r))
    expected = comm.expected_rows(n, e, k, r, capacity=c)
    sd = math.sqrt(n * k * (r - 1) / r**2 / repeats)             # a bound on the sd of the mean
    assert abs(sum(sent) / repeats - expected) < 5 * sd


def test_fit_alpha_beta_recovers_the_constants():
    messages = torch.tensor([1.0, 1, 1, 3, 3, 3])
    n_bytes = torch.tensor([1e2, 1e5, 1e7, 3e2, 3e5, 3e7])
    truth = comm.AlphaBeta(2e-5, 1e-9)
    seconds = [truth.seconds(b, m) for m, b in zip(messages.tolist(), n_bytes.tolist())]
    fit = comm.fit_alpha_beta(messages, n_bytes, seconds)
    assert fit.alpha == pytest.approx(truth.alpha, rel=1e-6) and fit.beta == pytest.approx(truth.beta, rel=1e-6)
    assert fit.bandwidth == pytest.approx(1e9)


def test_fit_alpha_beta_keeps_both_constants_non_negative():
    fit = comm.fit_alpha_beta([1, 1, 1], [1e3, 1e4, 1e5], [3e-3, 2e-3, 1e-3])   # time falls with size: noise
    assert fit.alpha >= 0 and fit.beta >= 0
    with pytest.raises(ValueError, match="at least two"):
        comm.fit_alpha_beta([1], [1e3], [1e-3])
    with pytest.raises(ValueError, match="same number"):
        comm.fit_alpha_beta([1, 1], [1e3, 1e4, 1e5], [1e-3, 1e-3])


def test_all_to_all_model():
    nvlink, network = comm.AlphaBeta(1e-6, 1 / 400e9), comm.AlphaBeta(1e-5, 1 / 50e9)
    one_node = comm.all_to_all_seconds(8e6, 8, 8, nvlink, network)
    assert one_node["latency"] == pytest.approx(7e-6)
    assert one_node["bandwidth"] == pytest.approx(8e6 * 7 / 8 / 400e9)
    assert comm.all_to_all_seconds(8e6, 8, 8, nvlink, network, hierarchical=True) == pytest.approx(one_node)
    direct = comm.all_to_all_seconds(8e6, 64, 8, nvlink, network)
    tiered = comm.all_to_all_seconds(8e6, 64, 8, nvlink, network, hierarchical=True)
    assert direct["latency"] == pytest.approx(7e-6 + 56e-5) and tiered["latency"] == pytest.approx(7e-6 + 7e-5)
    assert tiered["bandwidth"] > direct["bandwidth"]            # the NVLink step carries the data once more
    assert direct["bandwidth"] == pytest.approx(8e6 * 56 / 64 / 50e9)
    with pytest.raises(ValueError, match="multiple of gpus_per_node"):
        comm.all_to_all_seconds(8e6, 12, 8, nvlink, network)


def test_run_and_time_counts_what_the_exchanges_moved():
    configs = [{"steps": 2}, {"padded": True, "capacity_factor": 1.25}]
    results = mu.parallel.run_local(comm.run_and_time, 2, configs, [1024, 65536], 3)
    for rank, res in enumerate(results):
        sorted_run, padded_run = res["runs"]
        assert sorted_run["sent_rows"] == 2 * comm.rows_sent(sorted_run["counts"], rank, 2)
        assert sorted_run["counts"].sum() == 48 * 2                 # 96 tokens on 2 ranks, k = 2
        c = mu.dispatch.capacity(48, 8, 1, 1.25)
        assert padded_run["sent_rows"] == 2 * comm.padded_rows(8, 2, c)
        assert len(sorted_run["step_seconds"]) == 2 and sorted_run["seconds"]["exchange"] > 0
        assert len(res["all_to_all"]) == 2 and all(t > 0 for t in res["all_to_all"])


@cuda
def test_run_and_time_on_nccl():
    world = 2 if torch.cuda.device_count() >= 2 else 1
    results = mu.parallel.run_local(comm.run_and_time, world, [{"steps": 1}], [4096], 2, device="cuda")
    single = mu.expert_parallel.reference({"steps": 1}, world)
    diff = mu.expert_parallel.max_difference([r["runs"][0] for r in results], single)
    assert max(diff.values()) < 1e-4, diff
