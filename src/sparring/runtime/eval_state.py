"""Resumable and sharded evaluation: the batch is the unit of work.

An evaluation splits its points into fixed batches (by global index) and gives batch ``b`` its own
random generators seeded by ``(seed, b)``, so a batch's outcome does not depend on which process ran
it or when. That makes two things simple:

* **Resume.** :class:`EvalState` writes one small JSON record per finished batch, atomically, into a
  state folder beside a ``manifest.json`` holding the fingerprint of the evaluation (model weights,
  data, threat, suite, settings). Run again with the same arguments, finished batches are read back
  instead of recomputed, and the final numbers are the same as an uninterrupted run's. A state folder
  with another fingerprint is never mixed in: it is an error unless the caller starts afresh. A record
  that cannot be read back whole (truncated, corrupted, not this batch's) is recomputed, with a warning.
  The folder carries sparring's marker (:mod:`sparring.runtime.run_folder`): a non-empty folder without it is
  never written into, and starting afresh deletes only the state's own files.
* **Sharding.** Under ``torch.distributed`` (``torchrun`` or ``accelerate launch``; gloo on CPU, NCCL
  on GPU), rank ``r`` of ``w`` takes batches ``b ≡ r (mod w)``; the records are gathered on every rank,
  so the numbers equal the single-process run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparring.errors import RunFolderError
from sparring.files import atomic_write_json, atomic_write_npz
from sparring.runtime.distributed import broadcast, is_main_process
from sparring.runtime.run_folder import MARKER, RunFolder, not_ours

log = logging.getLogger(__name__)
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
        """Rank 0: claim the folder, start afresh or check the manifest; the error message, if any."""
        if self.folder.exists() and not self.folder.is_dir():
            return f"{self.folder} exists and is not a folder; choose another --out"
        folder = RunFolder(self.folder)
        if not folder.is_empty() and not folder.is_sparring():
            if _read_manifest(manifest) is None:
                return not_ours(self.folder)
            # the manifest an older sparring wrote (before the marker): its exact shape says whose it is
            log.warning("%s holds the evaluation state of an older sparring (no %s); marking it", self.folder, MARKER)
            RunFolder.create(self.folder, kind="state")
        if fresh and folder.is_sparring():
            kept = folder.clear_ours()
            if kept:
                log.warning("left %d file(s) in %s that sparring did not write: %s", len(kept), self.folder,
                            ", ".join(kept))
        if not folder.is_sparring():
            RunFolder.create(self.folder, kind="state")
        if not manifest.exists():
            atomic_write_json(manifest, {"fingerprint": print_, "settings": settings})
            return None
        stored = _read_manifest(manifest)
        if stored is None:
            return (f"{manifest} is corrupted, so the state beside it cannot be trusted; pass --overwrite to start "
                    "afresh or choose another --out")
        if stored["fingerprint"] != print_:
            return (f"{self.folder} holds the state of a different run (model, data or settings changed); "
                    "pass --overwrite to start afresh or choose another --out")
        return None

    def path(self, batch: int) -> Path:
        return self.folder / f"batch-{batch:05d}.json"

    def load(self, batch: int, *, valid: Callable[[Record], bool] | None = None) -> Record | None:
        """Batch ``batch``'s record; None if it is missing, or unreadable or not ``valid`` (then recompute it)."""
        path = self.path(batch)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return _unusable(path, f"unreadable: {type(exc).__name__}")
        if not isinstance(record, dict) or (valid is not None and not valid(record)):
            return _unusable(path, "not this batch's record")
        return record

    def save(self, batch: int, record: Record) -> None:
        atomic_write_json(self.path(batch), record, separators=(",", ":"))

    def done(self) -> list[int]:
        return sorted(int(p.stem[6:]) for p in self.folder.glob("batch-*.json") if p.stem[6:].isdigit())

    def save_arrays(self, batch: int, arrays: dict[str, Tensor]) -> None:
        """Tensors of one batch as ``batch-XXXXX.npz``, written atomically (for large per-point outputs)."""
        atomic_write_npz(self.folder / f"batch-{batch:05d}.npz",
                         {k: v.detach().cpu().numpy() for k, v in arrays.items()})

    def load_arrays(
        self, batch: int, *, valid: Callable[[dict[str, Tensor]], bool] | None = None
    ) -> dict[str, Tensor] | None:
        """Tensors of one batch; None if missing, or unreadable or not ``valid`` (then recompute them)."""
        path = self.folder / f"batch-{batch:05d}.npz"
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: torch.from_numpy(archive[k]) for k in archive.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            return _unusable(path, f"unreadable: {type(exc).__name__}")
        if valid is not None and not valid(arrays):
            return _unusable(path, "not this batch's arrays")
        return arrays

    def discard(self) -> None:
        """Delete the state's own files (batches, manifest, marker), and the folder if nothing else is left."""
        folder = RunFolder(self.folder)
        if not folder.is_sparring():
            return
        kept = folder.clear_ours(keep_marker=False)
        try:
            self.folder.rmdir()
        except OSError:
            log.warning("kept %s: it holds file(s) sparring did not write: %s", self.folder, ", ".join(kept))


def _unusable(path: Path, why: str) -> None:
    log.warning("%s is truncated or corrupted (%s); recomputing that batch", path, why)
    return None


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest if it is one sparring wrote ({"fingerprint": hex, "settings": {...}}), else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or set(data) != {"fingerprint", "settings"}:
        return None
    if not isinstance(data["fingerprint"], str) or not isinstance(data["settings"], dict):
        return None
    return data


def batch_generator(device: torch.device | str, seed: int, batch: int, stream: int = 0) -> torch.Generator:
    """The generator of one (batch, stream) pair: independent of process, order and resumption."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch) * 10_007 + stream + 1)
