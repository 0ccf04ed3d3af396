"""Process-group helpers for data-parallel training (``torchrun`` / DistributedDataParallel).

Launch::

    torchrun --nproc_per_node=N -m core.workflows.cli train CONFIG.yaml        # one machine, N processes
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=N -m core.workflows.cli train CONFIG.yaml

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed`
reads them and starts the process group (NCCL when the processes use CUDA GPUs, gloo on CPU). With
WORLD_SIZE unset or 1 everything here is a no-op, so the same code runs single-process.

Conventions the trainer follows under DDP:

* ``batch_size`` is the **global** batch: each step takes the next ``batch_size`` subjects of the
  epoch's seeded permutation (the same permutation as a single-process run) and gives each rank an
  equal, contiguous ``batch_size // world_size`` of them (:func:`shard_batch`). The loss is a
  per-sample mean and DDP averages gradients over ranks, so a step equals the single-process step on
  the same global batch. Subjects beyond a multiple of ``world_size`` in a batch are skipped for that
  epoch (at most ``world_size - 1`` per step; the permutation changes every epoch).
* Epoch metrics are sample-weighted sums and counts reduced over ranks, so every rank takes the same
  keep-best, early-stopping and stop/cancel decisions.
* Only rank 0 writes the run folder and runs the callbacks; the others wait at a barrier.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "init_distributed",
    "shutdown_distributed",
    "current_context",
    "is_main_process",
    "shard_batch",
    "shard_indices",
    "barrier",
    "all_reduce_flags",
    "all_gather_objects",
    "broadcast_object",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} must be an integer (set by torchrun).") from None


def current_context() -> DistributedContext:
    """The context of an initialised process group, else of the torchrun environment, else single-process."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), str(dist.get_backend()))
    return DistributedContext(0, 1, 0, None)


def is_main_process() -> bool:
    """True on rank 0, and in any single-process run (use it to silence progress bars on other ranks)."""
    return current_context().is_main


def init_distributed(device_type: str | None = None, timeout_minutes: float = 30.0) -> tuple[DistributedContext, bool]:
    """Start the process group described by the torchrun environment, if any.

    Args:
        device_type: ``"cuda"`` selects NCCL, anything else gloo (default: CUDA when available).
        timeout_minutes: how long a collective may wait for a slow rank.

    Returns:
        ``(context, created)``; ``created`` is True when this call started the group (so the caller
        should end it with :func:`shutdown_distributed`).
    """
    if dist.is_available() and dist.is_initialized():
        return current_context(), False
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistributedContext(), False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} are not set; launch with torchrun --nproc_per_node=N.")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    backend = "nccl" if use_cuda and dist.is_nccl_available() else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistributedContext(rank, world_size, local_rank, backend), True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s equal, contiguous share of a global batch (the remainder is left out).

    Example:
        >>> shard_batch(list(range(7)), 1, 2)
        [3, 4, 5]
    """
    size = len(batch) // world_size
    return list(batch[rank * size : (rank + 1) * size])


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Every ``world_size``-th index from ``rank`` (evaluation: every subject once, sizes may differ by one)."""
    return list(range(rank, n, world_size))


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def _reduce_device(context: DistributedContext) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if context.backend == "nccl" else torch.device("cpu")


def all_reduce_flags(context: DistributedContext, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over the ranks (one small collective)."""
    if not context.enabled:
        return tuple(bool(f) for f in flags)
    values = torch.tensor([float(f) for f in flags], device=_reduce_device(context))
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in values.tolist())


def all_gather_objects(context: DistributedContext, value: Any) -> list[Any]:
    """``value`` from every rank, in rank order (``[value]`` when not distributed)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(context: DistributedContext, value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (e.g. the run folder name chosen by rank 0)."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
