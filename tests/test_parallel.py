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
