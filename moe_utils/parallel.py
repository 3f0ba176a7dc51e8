"""Expert parallelism with ``torch.distributed``: the exchanges, and R local workers for a notebook.

Under expert parallelism each of R ranks (processes) holds E / R of the experts and its own
tokens. Tokens travel to the rank of their expert and back by two all-to-all exchanges, whose
sizes are not known in advance: every rank first tells every other how many tokens it will send
(``exchange_counts``), then sends them (``AllToAll``, an autograd Function whose backward is the
same exchange with the send and receive sizes swapped).

``run_local(fn, R, ...)`` starts R worker processes on this machine (gloo over 127.0.0.1, or NCCL
with one GPU per rank), runs ``fn(rank, world_size, ...)`` in each and returns their results: the
way a notebook, whose own functions spawned workers cannot import, runs a distributed function
that lives in a module. ``python -m moe_utils.expert_parallel`` is a ``torchrun`` entry point.
This module never imports plotting (a worker stays light).

>>> import torch, moe_utils as mu
>>> mu.parallel.backend(torch.device("cpu"))
'gloo'
"""

import datetime
import pickle
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import _checks as checks

__all__ = ["AllToAll", "all_to_all", "backend", "exchange_counts", "init", "run_local"]


def backend(device: torch.device) -> str:
    """The process-group backend for a device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _group_size(group) -> int:
    if not dist.is_initialized():
        raise RuntimeError("no process group: call moe_utils.parallel.init (or torch.distributed.init_process_group) "
                           "first, or launch with torchrun")
    return dist.get_world_size(group)


class AllToAll(torch.autograd.Function):
    """y = all_to_all(x): rank r sends x's rows [offsets of send_sizes] to each rank and receives
    recv_sizes[s] rows from each rank s, in rank order. x (N_send, ...) -> (N_recv, ...).

    The gradient of an exchange is the reverse exchange: the rows' gradients go back to where the
    rows came from, so backward is the same call with the two size lists swapped.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], group=None) -> torch.Tensor:
        ctx.sizes, ctx.group = (send_sizes, recv_sizes), group
        out = x.new_empty((sum(recv_sizes), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv_sizes, send_sizes, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        send_sizes, recv_sizes = ctx.sizes
        back = grad.new_empty((sum(send_sizes), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), send_sizes, recv_sizes, group=ctx.group)
        return back, None, None, None


def all_to_all(x: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], group=None) -> torch.Tensor:
    """``AllToAll.apply`` with its sizes checked: x (sum(send_sizes), ...) -> (sum(recv_sizes), ...)."""
    world = _group_size(group)
    if len(send_sizes) != world or len(recv_sizes) != world:
        raise ValueError(f"send_sizes and recv_sizes need one entry per rank ({world}), got "
                         f"{len(send_sizes)} and {len(recv_sizes)}")
    if sum(send_sizes) != x.shape[0]:
        raise ValueError(f"send_sizes sum to {sum(send_sizes)} but x has {x.shape[0]} rows")
    return AllToAll.apply(x, list(map(int, send_sizes)), list(map(int, recv_sizes)), group)


def exchange_counts(counts: torch.Tensor, group=None) -> torch.Tensor:
    """Tell every rank how many rows it will receive: counts (R, M) -> (R, M).

    Row s of ``counts`` is what this rank sends to rank s, split in M parts (per expert of rank s);
    row s of the result is what rank s sends to this rank. One all_to_all_single of R M integers.
    """
    world = _group_size(group)
    if counts.ndim != 2 or counts.shape[0] != world:
        raise ValueError(f"counts must have shape ({world}, M) (a row per rank), got {tuple(counts.shape)}")
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts.contiguous(), group=group)
    return received


def init(rank: int, world_size: int, port: int, device: torch.device | str = "cpu", timeout: float = 60.0) -> None:
    """Join a process group on this machine (127.0.0.1:``port``) as ``rank`` of ``world_size``.

    The backend follows the device (NCCL for CUDA, one GPU per rank, else gloo). Every collective
    gives up after ``timeout`` seconds instead of hanging when a rank is missing or has died.
    """
    world_size = checks.positive_int("world_size", world_size)
    rank = checks.positive_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, device, timeout, fn, args, queue) -> None:
    torch.set_num_threads(1)  # R workers share the machine's cores
    try:
        init(rank, world_size, port, device, timeout)
        result = fn(rank, world_size, *args)
        queue.put((rank, "ok", pickle.dumps(result)))  # bytes: torch's queue would share memory with a dying process
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the traceback
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _context(fn):
    """Where the workers come from. A "forkserver" (Linux, macOS) imports torch and ``fn``'s module
    once, on the first call, and forks every later worker from that warm process: a worker then
    starts in milliseconds instead of the seconds a fresh interpreter needs to import torch. The
    workers are still new processes that never saw the caller's ``__main__``. Elsewhere: "spawn"."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # read once, when the server starts; torch._dynamo is what a first optimiser step imports (seconds)
    ctx.set_forkserver_preload(["torch", "torch._dynamo", fn.__module__])
    return ctx


def run_local(fn, world_size: int, *args, device: str = "cpu", timeout: float = 120.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes; return the R results.

    ``fn`` must be importable by the workers (a function of a module, not one defined in a notebook
    or a script's ``__main__``); its result must be picklable (tensors on the CPU). A failing rank
    raises ``RuntimeError`` with its traceback; ranks that do not finish in ``timeout`` seconds are
    stopped and reported, so nothing hangs.
    """
    world_size = checks.positive_int("world_size", world_size)
    if getattr(fn, "__module__", None) in (None, "__main__") or "<locals>" in getattr(fn, "__qualname__", ""):
        raise ValueError("fn must be a module-level function of an importable module: spawned workers cannot "
                         "import a function defined in a notebook, a script's __main__ or another function")
    ctx = _context(fn)
    queue, port = ctx.SimpleQueue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, device, timeout, fn, args, queue), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    while len(results) + len(errors) < world_size:
        if datetime.datetime.now() > deadline:
            errors.append(f"{world_size - len(results) - len(errors)} rank(s) did not finish in {timeout} s")
            break
        if queue.empty():
            if any(p.exitcode not in (None, 0) for p in procs) and queue.empty():
                errors.append("a worker process died: " + ", ".join(f"rank {r} exit code {p.exitcode}"
                                                                    for r, p in enumerate(procs) if p.exitcode))
                break
            procs[0].join(0.05)
            continue
        rank, status, payload = queue.get()
        if status == "ok":
            results[rank] = pickle.loads(payload)
        else:
            errors.append(f"rank {rank}:\n{payload}")
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError("distributed run failed: " + "\n".join(errors))
    return [results[r] for r in range(world_size)]
