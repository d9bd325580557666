"""Adversarial examples at scale: stream a data set through an attack, batch by batch, resumably.

``generate(model, data, attack, threat, out="adv.npz")`` attacks every point in fixed batches (batch
``b`` seeded by ``(seed, b)``), writes each finished batch atomically into ``adv.state/`` beside the
output, and assembles ``adv.npz`` at the end:

    x_adv (N, ...) float32   adversarial inputs (inside the threat set)
    y (N,) int64             labels
    success (N,) bool        the attack broke the point (misclassified at x_adv)
    loss (N,) float32        the attack loss at x_adv
    meta ()                  JSON: attack settings, threat, data, throughput

Killed and run again with the same arguments, it continues from the finished batches (a batch file that
cannot be read back whole is recomputed); once the output is complete, the state's own files are removed,
and the folder with them if nothing else is in it. The state folder carries sparring's marker: a non-empty
``adv.state/`` sparring did not create is refused, never written into. While it runs, ``adv.npz.lock``
beside the output makes a second process writing the same file refuse (:mod:`sparring.runtime.run_folder`).
``sparring attack`` is the command-line face of this module.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparring.attacks import Attack
from sparring.context import device_of
from sparring.data import Dataset
from sparring.errors import ConfigError, RunFolderError
from sparring.files import atomic_write_npz
from sparring.models.fit import check_model_accepts
from sparring.runtime.eval_state import EvalState, batch_generator, fingerprint
from sparring.runtime.run_folder import output_lock
from sparring.threat import ThreatModel


@dataclass
class Generated:
    """What :func:`generate` wrote: the output path, counts and throughput (adversarial examples / s)."""

    path: Path
    n: int
    success_rate: float
    attack_s: float
    throughput: float
    resumed_batches: int


def generate(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    attack: Attack,
    threat: ThreatModel,
    out: Path | str,
    *,
    batch_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Generated:
    """Attack every point of ``data`` and write ``out`` (``.npz``); resumable (see the module docstring)."""
    out = Path(out)
    if not attack.score:
        raise ConfigError(f"{attack.name} was built with score=False: generation records per-example success")
    if out.suffix != ".npz":
        raise RunFolderError(f"the output must be a .npz file, got {out}")
    if out.exists() and not overwrite:
        raise RunFolderError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    x, y = (data.x, data.y) if isinstance(data, Dataset) else data
    device = torch.device(device) if device is not None else device_of(model)
    check_model_accepts(model, data, device=device)  # a wrong shape is one line here, not a traceback mid-attack
    settings = {"attack": attack.describe(), "threat": threat.describe(), "batch_size": batch_size, "seed": seed,
                "n": len(x)}
    state_dir = out.with_suffix(".state")
    with output_lock(out):  # a second process writing the same file refuses until this one is done
        if out.exists() and not overwrite:  # (another process may have finished it meanwhile)
            raise RunFolderError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
        if out.exists() and not _written_by_generate(out):
            raise RunFolderError(f"{out} was not written by sparring attack (no x_adv and meta in it); "
                                 "choose another --out or delete it yourself")
        state = EvalState(state_dir, fingerprint(model, x, y, settings), settings, fresh=overwrite)
        n_batches = (len(x) + batch_size - 1) // batch_size
        parts: list[dict[str, Tensor]] = []
        attack_s, resumed = 0.0, 0
        for b in range(n_batches):
            rows = torch.arange(b * batch_size, min((b + 1) * batch_size, len(x)))
            part = state.load_arrays(b, valid=lambda arrays, n=len(rows): _part_fits(arrays, n, x.shape[1:]))
            if part is None:
                generator = batch_generator(device, seed, b)
                started = time.perf_counter()
                result = attack(model, x[rows].to(device), y[rows].to(device), threat.subset(rows),
                                generator=generator)
                elapsed = time.perf_counter() - started
                assert result.success is not None and result.loss is not None
                part = {"x_adv": result.x_adv.float(), "success": result.success, "loss": result.loss.float(),
                        "seconds": torch.tensor([elapsed], dtype=torch.float64)}
                state.save_arrays(b, part)
            else:
                resumed += 1
            attack_s += float(part["seconds"][0])
            parts.append(part)
            if progress is not None:
                progress(b + 1, n_batches)
        success = torch.cat([p["success"] for p in parts])
        meta: dict[str, Any] = {**settings, "attack_s": attack_s, "throughput_per_s": len(x) / max(attack_s, 1e-12),
                                "success_rate": float(success.float().mean())}
        atomic_write_npz(out, {"x_adv": torch.cat([p["x_adv"] for p in parts]).numpy(), "y": y.cpu().numpy(),
                               "success": success.numpy(), "loss": torch.cat([p["loss"] for p in parts]).numpy(),
                               "meta": np.array(json.dumps(meta))})
        state.discard()
    return Generated(path=out, n=len(x), success_rate=meta["success_rate"], attack_s=attack_s,
                     throughput=meta["throughput_per_s"], resumed_batches=resumed)


def _part_fits(part: dict[str, Tensor], n: int, point_shape: torch.Size) -> bool:
    """Whether a batch read back from the state is whole: every array, each with this batch's shape."""
    return (
        {"x_adv", "success", "loss", "seconds"} <= part.keys()
        and part["x_adv"].shape == (n, *point_shape) and part["x_adv"].dtype == torch.float32
        and part["success"].shape == (n,) and part["success"].dtype == torch.bool
        and part["loss"].shape == (n,) and part["seconds"].shape == (1,)
    )


def _written_by_generate(path: Path) -> bool:
    """Whether ``path`` is an output of :func:`generate` (``--overwrite`` replaces nothing else)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return isinstance(archive, np.lib.npyio.NpzFile) and {"x_adv", "meta"} <= set(archive.files) and \
                "attack" in json.loads(str(archive["meta"]))
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile):
        return False
