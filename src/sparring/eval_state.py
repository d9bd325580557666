"""Resumable and sharded evaluation: the batch is the unit of work.

An evaluation splits its points into fixed batches (by global index) and gives batch ``b`` its own
random generators seeded by ``(seed, b)``, so a batch's outcome does not depend on which process ran
it or when. That makes two things simple:

* **Resume.** :class:`EvalState` writes one small JSON record per finished batch, atomically, into a
  state folder beside a ``manifest.json`` holding the fingerprint of the evaluation (model weights,
  data, threat, suite, settings). Run again with the same arguments, finished batches are read back
  instead of recomputed, and the final numbers are the same as an uninterrupted run's. A state folder
  with another fingerprint is never mixed in: it is an error unless the caller starts afresh.
* **Sharding.** Under ``torch.distributed`` (``torchrun`` or ``accelerate launch``; gloo on CPU, NCCL
  on GPU), rank ``r`` of ``w`` takes batches ``b ≡ r (mod w)``; the records are gathered on every rank,
  so the numbers equal the single-process run's.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparring.errors import RunFolderError
from sparring.files import atomic_write_json, atomic_write_npz

Record = dict[str, Any]


def fingerprint(model: nn.Module, x: Tensor, y: Tensor, settings: dict[str, Any]) -> str:
    """SHA-256 over the model's weights and buffers, the data and the settings."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(_tensor_bytes(tensor))
    digest.update(_tensor_bytes(x))
    digest.update(_tensor_bytes(y))
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _tensor_bytes(tensor: Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return str(tuple(t.shape)).encode() + str(t.dtype).encode() + t.numpy().tobytes()


class EvalState:
    """The on-disk record of an evaluation in progress: ``manifest.json`` and ``batch-XXXXX.json`` files."""

    def __init__(self, folder: Path, print_: str, settings: dict[str, Any], *, fresh: bool = False) -> None:
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        error = self._prepare(manifest, print_, settings, fresh) if is_main_process() else None
        error = broadcast(error)  # also a barrier: no rank reads the folder before rank 0 has checked it
        if error:
            raise RunFolderError(error)

    def _prepare(self, manifest: Path, print_: str, settings: dict[str, Any], fresh: bool) -> str | None:
        """Rank 0: start afresh or check the manifest; the error message, if any."""
        if fresh and self.folder.exists():
            if any(self.folder.iterdir()) and not manifest.exists():
                return f"{self.folder} is not a sparring state folder; refusing to delete it"
            shutil.rmtree(self.folder)
        if not manifest.exists():
            atomic_write_json(manifest, {"fingerprint": print_, "settings": settings})
        elif json.loads(manifest.read_text()).get("fingerprint") != print_:
            return (f"{self.folder} holds the state of a different run (model, data or settings changed); "
                    "pass --overwrite to start afresh or choose another --out")
        return None

    def path(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:05d}.json"

    def load(self, batch: int) -> Record | None:
        path = self.path(batch)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def save(self, batch: int, record: Record) -> None:
        atomic_write_json(self.path(batch), record, separators=(",", ":"))

    def done(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("batch-*.json"))

    def save_arrays(self, batch: int, arrays: dict[str, Tensor]) -> None:
        """Tensors of one batch as ``batch-XXXXX.npz``, written atomically (for large per-point outputs)."""
        atomic_write_npz(self.folder / f"batch-{batch:05d}.npz",
                         {k: v.detach().cpu().numpy() for k, v in arrays.items()})

    def load_arrays(self, batch: int) -> dict[str, Tensor] | None:
        path = self.folder / f"batch-{batch:05d}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as archive:
            return {k: torch.from_numpy(archive[k]) for k in archive.files}


def batch_generator(device: torch.device | str, seed: int, batch: int, stream: int = 0) -> torch.Generator:
    """The generator of one (batch, stream) pair: independent of process, order and resumption."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch) * 10_007 + stream + 1)


# ----------------------------------------------------------------------------- distributed
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
