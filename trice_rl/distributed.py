"""Data-parallel runs: one (algorithm, seed) run over W processes started by ``torchrun`` or
``accelerate launch`` (docs/distributed.md).

Every rank holds the whole state of a run (parameters, optimizer, TRICE's memory, STaR's
kept set, the minibatch order) and draws the same minibatch.  Work is split, results are
not: each rank samples its share of a batch's prompts and back-propagates its share of the
rationales to score, then all ranks see every sample (:func:`gather`) and the summed
gradient (:func:`sum_gradients`), so every rank takes the update a single process would.

Without a launcher's environment variables nothing here starts a process group and every
collective below returns its input: a plain run is one process, exactly as before.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

# The meter's counts of work that each rank does its own share of (optimizer steps and
# seconds are the same on every rank and are not summed).
SHARED_COUNTS = ("samples", "tokens_generated", "tokens_scored", "flops")


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group that a launcher describes (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT): gloo on a CPU, nccl on CUDA.  Returns whether it started one (the caller
    then ends it with :func:`shutdown`); without those variables it starts none."""
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        return False
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """The device of this rank: ``cuda`` means the GPU of the launcher's LOCAL_RANK."""
    if torch.device(device).type == "cuda" and torch.device(device).index is None and world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this rank writes the run's files (CSVs, checkpoints, plots) and shows progress."""
    return rank() == 0


def rank_seed(seed: int, *salt: int) -> int:
    """A seed of this rank's own random stream: ``seed`` itself in a one-process run, else a
    distinct, deterministic seed per (seed, rank, salt)."""
    if world_size() == 1 and not salt:
        return seed
    return int(np.random.SeedSequence([seed, rank(), *salt]).generate_state(1)[0])


def shard(count: int) -> slice:
    """This rank's contiguous share of ``count`` items (sizes differ by at most one); the
    shards of ranks 0..W-1 in turn are the items in order."""
    size, index = world_size(), rank()
    return slice(index * count // size, (index + 1) * count // size)


def gather(items: Iterable[T]) -> list[T]:
    """Every rank's ``items`` (each rank's shard), concatenated in rank order."""
    if world_size() == 1:
        return list(items)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def agree(value: T) -> T:
    """Rank 0's ``value`` on every rank: for decisions that must not differ between ranks
    (a seconds budget read a moment apart, a seed drawn from a rank's own stream)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (for work that rank 0 does alone, such as a build)."""
    if world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``tensor``, on ``tensor``'s device (``tensor`` itself in a
    one-process run)."""
    if world_size() == 1:
        return tensor
    buffer = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buffer)
    return buffer.to(tensor.device)


def sum_float(value: float) -> float:
    return float(sum_tensor(torch.tensor(value, dtype=torch.float64)))


def sum_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over ranks.

    The algorithms normalise their coefficients by the whole batch (TRICE's K, rft's E,
    GRPO's M·G, a supervised step's M), so the ranks' partial gradients add up to the
    single-process one: a sum, not a mean.  A parameter that no rank has a gradient for
    keeps none (AdamW skips it, as in one process); one with a gradient on some rank gets
    the sum on every rank."""
    if world_size() == 1:
        return
    has_grad = sum_tensor(torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32))
    with_grad = [p for p, count in zip(parameters, has_grad.tolist()) if count > 0]
    for p in with_grad:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for dtype in dict.fromkeys(p.grad.dtype for p in with_grad):  # in parameter order on every rank
        group = [p for p in with_grad if p.grad.dtype == dtype]
        flat = sum_tensor(torch.cat([p.grad.flatten() for p in group]))
        for p, part in zip(group, flat.split([p.numel() for p in group])):
            p.grad.copy_(part.view_as(p.grad))


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite each tensor, in place, with rank 0's."""
    if world_size() == 1:
        return
    for tensor in tensors:
        buffer = tensor.detach().to(_comm_device(), copy=True)
        dist.broadcast(buffer, src=0)
        tensor.copy_(buffer)


class MeterSync:
    """Makes every rank's budget meter count the whole world's work: each rank charges what
    it samples and scores itself, and :meth:`__call__` adds the other ranks' charges since
    the last call, so that every rank reads the same totals and stops at the same step."""

    def __init__(self, meter) -> None:
        self.meter = meter
        self.mark()

    def mark(self) -> None:
        """Take the meter's counts as already shared (after a reset or a restored checkpoint)."""
        self.synced = [getattr(self.meter, name) for name in SHARED_COUNTS]

    def __call__(self) -> None:
        if world_size() == 1:
            return
        local = torch.tensor([getattr(self.meter, name) - before for name, before in zip(SHARED_COUNTS, self.synced)], dtype=torch.float64)
        for name, before, added in zip(SHARED_COUNTS, self.synced, sum_tensor(local).tolist()):
            setattr(self.meter, name, type(before)(before + added))
        self.mark()
