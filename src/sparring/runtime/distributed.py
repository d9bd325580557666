"""The process group of a multi-process run (``torchrun`` / ``accelerate launch``): rank, world size, barriers and
the few collectives evaluation and run folders need. A single process is rank 0 of 1 and every call is a no-op."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from typing import Any

import torch

Record = dict[str, Any]

def world() -> tuple[int, int]:
    """(rank, world size): from an initialized process group, else from torchrun's environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_process_group()
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_process_group() -> None:
    """Join the group ``torchrun`` / ``accelerate launch`` describe in the environment (gloo on CPU, NCCL on GPU)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend=backend)  # env://: RANK, WORLD_SIZE, MASTER_ADDR/PORT
    # A process group still alive at interpreter exit can abort the process ("terminate called without an
    # active exception" from gloo's threads): the group we opened is closed on the way out.
    atexit.register(_close_process_group)


def _close_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_main_process() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()


def my_batches(n_batches: int) -> list[int]:
    rank, size = world()
    return list(range(rank, n_batches, size))


def gather_records(records: Iterable[Record]) -> list[Record]:
    """Every rank's batch records, on every rank, sorted by batch."""
    mine = list(records)
    rank, size = world()
    if size == 1:
        return sorted(mine, key=lambda r: r["batch"])
    gathered: list[list[Record] | None] = [None] * size
    torch.distributed.all_gather_object(gathered, mine)
    return sorted((r for part in gathered for r in part or []), key=lambda r: r["batch"])


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
