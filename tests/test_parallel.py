"""Expert parallelism: real multi-process runs (gloo on 127.0.0.1) on this machine."""

import pytest
import torch
import torch.distributed as dist

import moe_utils as mu
from moe_utils import parallel


def _exchange(rank, world_size, sizes):
    """Each rank sends sizes[rank][s] rows to rank s: rows tagged (source, index); then a backward."""
    send = sizes[rank]
    counts = parallel.exchange_counts(torch.tensor(send)[:, None])[:, 0]
    x = (100 * rank + torch.arange(sum(send), dtype=torch.float64))[:, None].requires_grad_()
    y = parallel.all_to_all(x, send, counts.tolist())
    (y * (1 + torch.arange(len(y), dtype=torch.float64))[:, None]).sum().backward()
    return {"counts": counts, "received": y.detach(), "grad": x.grad}


@pytest.mark.parametrize("world_size", [2, 3])
def test_uneven_all_to_all_and_its_backward(world_size):
    gen = torch.Generator().manual_seed(world_size)
    sizes = torch.randint(0, 4, (world_size, world_size), generator=gen).tolist()
    sizes[0][1 % world_size] = 0  # a rank that sends nothing to another
    results = parallel.run_local(_exchange, world_size, sizes)
    for r, res in enumerate(results):
        assert res["counts"].tolist() == [sizes[s][r] for s in range(world_size)]
        expected = torch.cat([100 * s + torch.arange(sum(sizes[s][:r]), sum(sizes[s][:r + 1]), dtype=torch.float64)
                              for s in range(world_size)])
        torch.testing.assert_close(res["received"][:, 0], expected)
    for s, res in enumerate(results):  # each row's gradient is the weight its receiver gave it
        expected = torch.cat([torch.tensor([1.0 + sum(sizes[q][r] for q in range(s)) + i for i in range(sizes[s][r])],
                                           dtype=torch.float64) for r in range(world_size)])
        torch.testing.assert_close(res["grad"][:, 0], expected)


def _fails(rank, world_size):
    if rank == 1:
        raise ValueError("planted failure")
    return rank


def _sleeps(rank, world_size):
    if rank == 0:
        dist.barrier()  # rank 1 never joins the barrier: the collective times out instead of hanging
    return rank


def test_a_failing_rank_is_reported_and_nothing_hangs():
    with pytest.raises(RuntimeError, match=r"(?s)rank 1:.*planted failure"):
        parallel.run_local(_fails, 2)
    with pytest.raises(RuntimeError, match="distributed run failed"):
        parallel.run_local(_sleeps, 2, timeout=8)


def test_functions_of_a_notebook_are_refused_and_no_group_is_a_clear_error():
    def local(rank, world_size):
        return rank
    with pytest.raises(ValueError, match="importable module"):
        parallel.run_local(local, 2)
    with pytest.raises(RuntimeError, match="no process group"):
        parallel.exchange_counts(torch.zeros(2, 1, dtype=torch.long))


# ---------------------------------------------------------------------- the expert-parallel layer
RUNS = {
    "2 ranks": (2, {"steps": 3}),
    "4 ranks, uneven shards": (4, {"n_tokens": 90, "steps": 3}),
    "4 ranks, a rank without tokens": (4, {"n_tokens": 3}),
    "2 ranks, capacity drops": (2, {"capacity_factor": 0.5}),
    "2 ranks, padded": (2, {"padded": True, "steps": 2}),
    "2 ranks, padded with drops": (2, {"padded": True, "capacity_factor": 0.5}),
}


@pytest.mark.parametrize("world_size, config", RUNS.values(), ids=RUNS.keys())
def test_expert_parallel_equals_the_single_process_layer(world_size, config):
    from moe_utils import expert_parallel as ep
    results = parallel.run_local(ep.run, world_size, config)
    single = ep.reference(config, world_size)
    diff = ep.max_difference(results, single)
    assert max(diff.values()) < 1e-5, diff
    if config.get("capacity_factor"):  # the same assignments were dropped: outputs of dropped tokens are 0
        assert (single["out"].abs().sum(1) == 0).any()
    sent = [r["sent_rows"] for r in results]
    if config.get("padded"):
        assert len(set(sent)) == 1  # static shapes: every rank sends the same number of rows
    assert all(isinstance(s, int) and s >= 0 for s in sent)


def _too_many_ranks(rank, world_size):
    from moe_utils import expert_parallel as ep
    return ep.run(rank, world_size, {"n_experts": 6})


def test_experts_must_divide_among_the_ranks():
    with pytest.raises(RuntimeError, match=r"n_experts \(6\) must be divisible by the number of ranks \(4\)"):
        parallel.run_local(_too_many_ranks, 4)
    from moe_utils import expert_parallel as ep
    with pytest.raises(RuntimeError, match="no process group"):
        ep.ExpertParallel(mu.SparseMoE(4, 8, 4))


def test_torchrun_entry_point():
    import subprocess
    import sys
    from pathlib import Path
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(parallel._free_port()),
                           "-m", "moe_utils.expert_parallel"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "expert parallelism on 2 ranks (gloo)" in proc.stdout and "output" in proc.stdout
