"""The sparse layer of chapter 7 under expert parallelism: R ranks, E / R experts each (chapter 8).

Rank r holds the experts r E/R .. (r+1) E/R - 1 and its own N_r tokens; the router (and any shared
expert) is replicated. A forward pass is the sort-based dispatch of ``dispatch`` with two exchanges
put between its steps:

    plan = sort(chosen, E)                        # this rank's (token, expert) pairs, by expert
    xs = permute(z, plan)                         # (M, D), grouped by expert, so by rank
    counts -> exchange_counts                     # how many rows each rank gets, per local expert
    received = all_to_all(xs, ...)                # (M', D): rows from every rank, for my experts
    ys = compute(my experts, regrouped rows)      # one product per local expert
    back = all_to_all(ys, ...)                    # the reverse exchange
    out = combine(back, plan, weights, N_r)       # weight, and scatter back: (N_r, D)

``padded=True`` is GShard's static-shape variant: every rank sends exactly C rows to every expert
(``dispatch.padded``'s buffer), so both exchanges have equal sizes and no counts are exchanged.
Gradients flow through the exchanges (their backward is the reverse exchange); the replicated
router's gradients are summed over the ranks by ``sync_replicated_grads``.

>>> import torch, moe_utils as mu
>>> layer = mu.SparseMoE(n_inputs=4, n_hidden=8, n_experts=4, rule=mu.topk.TopK(k=2))
>>> mu.expert_parallel.local_experts(layer.experts, rank=1, world_size=2).n_experts
2
"""

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from . import _checks as checks
from . import dispatch, parallel, topk
from .parallel import all_to_all, exchange_counts
from .sparse import SparseMoE, SparseOutput

__all__ = ["ExpertParallel", "build", "experts_per_rank", "local_experts", "max_difference", "reference", "run",
           "shard", "sync_replicated_grads"]


def experts_per_rank(n_experts: int, world_size: int) -> int:
    """E / R, the experts each rank holds; E must divide among the R ranks."""
    n_experts = checks.positive_int("n_experts", n_experts)
    world_size = checks.positive_int("world_size", world_size)
    if n_experts % world_size:
        raise ValueError(f"n_experts ({n_experts}) must be divisible by the number of ranks ({world_size})")
    return n_experts // world_size


def local_experts(experts, rank: int, world_size: int):
    """The experts rank ``rank`` of ``world_size`` holds: a contiguous E / R of them."""
    per = experts_per_rank(experts.n_experts, world_size)
    return experts.select(slice(rank * per, (rank + 1) * per))


class ExpertParallel(nn.Module):
    """One rank's share of a ``SparseMoE``: the replicated router, rule and shared experts, and
    its E / R local experts (copied from ``layer`` at construction). forward: x (N_r, D) ->
    ``SparseOutput``; the routing's ``aux`` gains ``sent_rows`` (rows this rank sent to other
    ranks, both exchanges), ``counts`` (E,) (the routed rows it sent to each expert, its own
    included; padding excluded) and ``seconds`` ({"exchange": ..., "compute": ...}) of this pass."""

    def __init__(self, layer: SparseMoE, group=None, padded: bool = False):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("no process group: call moe_utils.parallel.init (or torch.distributed."
                               "init_process_group) first, or launch with torchrun")
        self.group, self.padded = group, bool(padded)
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.router, self.rule, self.shared = layer.router, layer.rule, layer.shared
        self.n_experts, self.n_inputs = layer.n_experts, layer.n_inputs
        self.experts = local_experts(layer.experts, self.rank, self.world_size)

    def forward(self, x: torch.Tensor) -> SparseOutput:
        routing = self.rule(self.router(x))
        seconds = {"exchange": 0.0, "compute": 0.0}
        kept = routing.aux.get("kept")
        exchange = self._padded if self.padded else self._sorted
        out, sent, counts = exchange(self.experts.standardise(x), routing, kept, seconds)
        if self.shared is not None:
            out = out + self.shared(x).sum(1)
        aux = {**routing.aux, "sent_rows": sent, "counts": counts, "seconds": seconds}
        return SparseOutput(out, routing._replace(aux=aux))

    def _timed(self, seconds: dict, key: str, fn, *args):
        if torch.cuda.is_initialized():  # CUDA kernels and NCCL calls return before they finish
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn(*args)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        seconds[key] += time.perf_counter() - start
        return result

    def _sorted(self, z, routing, kept, seconds):
        """Uneven exchanges: counts first, then exactly the routed rows."""
        per, world = self.experts.n_experts, self.world_size
        plan = dispatch.sort(routing.chosen, self.n_experts, kept)
        xs = dispatch.permute(z, plan)                                           # (M, D) by expert
        counts = plan.counts.view(world, per)                                    # to each rank, per its expert
        received_counts = self._timed(seconds, "exchange", exchange_counts, counts, self.group)  # (R, per)
        send, recv = counts.sum(1).tolist(), received_counts.sum(1).tolist()
        rows = self._timed(seconds, "exchange", all_to_all, xs, send, recv, self.group)  # by source, then expert
        expert = torch.arange(per, device=z.device).repeat(world).repeat_interleave(received_counts.reshape(-1))
        order = torch.argsort(expert, stable=True)                               # by local expert, source order
        ys = self._timed(seconds, "compute", dispatch.compute, self.experts, rows.index_select(0, order),
                         received_counts.sum(0))
        ys = ys.index_select(0, torch.argsort(order))                            # back to source order
        back = self._timed(seconds, "exchange", all_to_all, ys, recv, send, self.group)
        sent = 2 * (sum(send) - send[self.rank])
        return dispatch.combine(back, plan, routing.weights, z.shape[0]), sent, plan.counts

    def _padded(self, z, routing, kept, seconds):
        """Equal exchanges: C rows per expert from every rank (GShard), zeros where unused."""
        per, world, n = self.experts.n_experts, self.world_size, z.shape[0]
        c = routing.aux.get("capacity") or max(1, int(torch.bincount(routing.chosen.reshape(-1),
                                                                     minlength=self.n_experts).max()))
        pos = dispatch.positions(routing.chosen, self.n_experts, kept)
        keep = pos < c if kept is None else kept & (pos < c)
        token = torch.arange(n, device=z.device)[:, None].expand_as(routing.chosen)[keep]
        expert, row = routing.chosen[keep], pos[keep]
        buffer = z.new_zeros(self.n_experts, c, z.shape[1]).index_put((expert, row), z.index_select(0, token))
        # every rank's C may differ (its own tokens): agree on the largest, so the exchange is equal
        c_all = torch.tensor([c], device=z.device)
        dist.all_reduce(c_all, dist.ReduceOp.MAX, group=self.group)
        c_max = int(c_all)
        buffer = nn.functional.pad(buffer, (0, 0, 0, c_max - c))                 # (E, C, D)
        size = [per * c_max] * world
        rows = self._timed(seconds, "exchange", all_to_all, buffer.reshape(-1, z.shape[1]), size, size, self.group)
        inputs = rows.view(world, per, c_max, -1).permute(0, 2, 1, 3).reshape(world * c_max, per, -1)
        ys = self._timed(seconds, "compute", self.experts.function, self.experts.params(), inputs)  # (R C, per, O)
        ys = ys.view(world, c_max, per, -1).permute(0, 2, 1, 3).reshape(world * per * c_max, -1)
        back = self._timed(seconds, "exchange", all_to_all, ys, size, size, self.group)
        back = back.view(self.n_experts, c_max, -1)[expert, row] * routing.weights[keep][:, None]
        out = back.new_zeros(n, back.shape[1]).index_add(0, token, back)
        return out, 2 * size[0] * (world - 1), torch.bincount(expert, minlength=self.n_experts)


def sync_replicated_grads(model: ExpertParallel) -> None:
    """Sum the gradients of the replicated parts (router, shared experts) over the ranks, so that
    each rank's copy steps as the single-process layer would; the local experts' gradients already
    hold every rank's tokens (they came back through the exchange)."""
    for module in (model.router, model.shared):
        for p in (module.parameters() if module is not None else []):
            if p.grad is not None:
                dist.all_reduce(p.grad, group=model.group)


# ---------------------------------------------------------------------- runs (workers and references)
CONFIG = {"seed": 0, "n_tokens": 96, "n_inputs": 16, "n_hidden": 32, "n_experts": 8, "k": 2,
          "capacity_factor": None, "padded": False, "steps": 0, "lr": 0.01}


def build(config: dict) -> tuple[SparseMoE, torch.Tensor, torch.Tensor]:
    """The layer, the inputs x (N, D) and targets (N, D) of a run, all drawn from ``config["seed"]``,
    so that every rank and the single-process reference build the same ones."""
    c = {**CONFIG, **config}
    gen = torch.Generator().manual_seed(c["seed"])
    rule = (topk.Switch(capacity_factor=c["capacity_factor"]) if c["capacity_factor"] is not None
            else topk.TopK(k=c["k"]))
    layer = SparseMoE(c["n_inputs"], c["n_hidden"], c["n_experts"], rule=rule, generator=gen)
    x = torch.randn(c["n_tokens"], c["n_inputs"], generator=gen)
    return layer, x, torch.sin(x).roll(1, dims=1)


def shard(n_tokens: int, rank: int, world_size: int) -> torch.Tensor:
    """The token indices of one rank: contiguous, as even as they go (torch.tensor_split)."""
    return torch.tensor_split(torch.arange(n_tokens), world_size)[rank]


def _loss(out: torch.Tensor, target: torch.Tensor, n_total: int) -> torch.Tensor:
    return ((out - target) ** 2).sum() / n_total  # summed over the ranks: the mean over all tokens


def run(rank: int, world_size: int, config: dict) -> dict:
    """A worker (``parallel.run_local`` or torchrun): forward, backward and ``steps`` Adam steps of
    the expert-parallel layer on this rank's tokens. Returns the first pass's output (N_r, D), the
    gradients of the local experts and of the router, the rows sent, the routed rows per expert
    (``counts``) and the load shares, the seconds spent in the first pass and in each training
    step's forward pass, the loss curve (summed over the ranks) and the local experts' parameters
    after training."""
    c = {**CONFIG, **config}
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    layer, x, target = build(c)
    layer, x, target = layer.to(device), x.to(device), target.to(device)
    idx = shard(len(x), rank, world_size).to(device)
    model = ExpertParallel(layer, padded=c["padded"])
    first = model(x[idx])
    _loss(first.out, target[idx], len(x)).backward()
    sync_replicated_grads(model)
    result = {"out": first.out.detach().cpu(), "sent_rows": first.routing.aux["sent_rows"],
              "seconds": first.routing.aux["seconds"], "counts": first.routing.aux["counts"].cpu(),
              "load": first.routing.aux["load"].cpu(),
              "expert_grads": {n: p.grad.detach().clone().cpu() for n, p in model.experts.named_parameters()},
              "router_grads": {n: p.grad.detach().clone().cpu() for n, p in model.router.named_parameters()}}
    opt, losses, seconds = torch.optim.Adam(model.parameters(), lr=c["lr"]), [], []
    for _ in range(c["steps"]):
        opt.zero_grad()
        step = model(x[idx])
        loss = _loss(step.out, target[idx], len(x))
        loss.backward()
        sync_replicated_grads(model)
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item())
        seconds.append(step.routing.aux["seconds"])
    result["losses"], result["step_seconds"] = losses, seconds
    result["experts"] = {n: p.detach().cpu() for n, p in model.experts.named_parameters()}
    return result


def reference(config: dict, world_size: int) -> dict:
    """The same run on one process: the single-process layer on each rank's tokens (a capacity
    applies per group of tokens, as in GShard), outputs concatenated and gradients summed."""
    c = {**CONFIG, **config}
    layer, x, target = build(c)
    outs = []
    for rank in range(world_size):
        idx = shard(len(x), rank, world_size)
        out = layer(x[idx]).out
        _loss(out, target[idx], len(x)).backward()
        outs.append(out.detach())
    result = {"out": torch.cat(outs), "expert_grads": {n: p.grad.clone() for n, p in layer.experts.named_parameters()},
              "router_grads": {n: p.grad.clone() for n, p in layer.router.named_parameters()}}
    opt, losses = torch.optim.Adam(layer.parameters(), lr=c["lr"]), []
    for _ in range(c["steps"]):
        opt.zero_grad()
        loss = sum(_loss(layer(x[idx]).out, target[idx], len(x)) for idx in
                   (shard(len(x), r, world_size) for r in range(world_size)))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    result["losses"] = losses
    result["experts"] = {n: p.detach().clone() for n, p in layer.experts.named_parameters()}
    return result


def max_difference(parallel: list[dict], single: dict) -> dict:
    """The largest |expert-parallel - single-process| of the outputs, every gradient, the losses and
    the trained experts (the local experts of rank r are the single process's slice r)."""
    def experts(key):
        return {n: torch.cat([r[key][n] for r in parallel]) for n in single[key]}
    diff = {"output": (torch.cat([r["out"] for r in parallel]) - single["out"]).abs().max().item()}
    diff["expert grads"] = max((experts("expert_grads")[n] - g).abs().max().item() for n, g in single["expert_grads"].items())
    diff["router grads"] = max((r["router_grads"][n] - g).abs().max().item()
                               for r in parallel for n, g in single["router_grads"].items())
    if single["losses"]:
        diff["losses"] = max(abs(a - b) for a, b in zip(parallel[0]["losses"], single["losses"]))
        diff["trained experts"] = max((experts("experts")[n] - p).abs().max().item()
                                      for n, p in single["experts"].items())
    return diff


def main() -> int:
    """``torchrun --nproc-per-node R -m moe_utils.expert_parallel``: every rank runs ``run`` and the
    single-process reference, and rank 0 prints the largest differences (exit code 1 if above 1e-5)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # one GPU per process: torchrun says which in LOCAL_RANK
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(parallel.backend(device), timeout=datetime.timedelta(seconds=120))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    config = {"steps": 5}
    result = run(rank, world_size, config)
    gathered = [None] * world_size
    dist.all_gather_object(gathered, result)
    if rank == 0:
        diff = max_difference(gathered, reference(config, world_size))
        print(f"expert parallelism on {world_size} ranks ({dist.get_backend()}): largest |parallel - single process|")
        for name, value in diff.items():
            print(f"  {name:16s} {value:.2e}")
        ok = max(diff.values()) < 1e-5
    dist.destroy_process_group()
    return 0 if rank or ok else 1


if __name__ == "__main__":
    sys.exit(main())
