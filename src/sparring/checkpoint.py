"""Checkpoints as safetensors plus JSON metadata, written atomically.

A checkpoint is a folder ``epoch-0007/`` holding ``model.safetensors``, ``optimizer.safetensors`` (the
optimizer's tensors; its scalar state and param groups go to JSON) and ``meta.json``. The folder is
written under a temporary name and renamed into place, then ``latest.json`` (and ``best.json``) is
replaced atomically to point at it; a run killed at any moment therefore leaves the previous complete
checkpoint in charge, never a half-written one. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparring.errors import SparringError
from sparring.files import atomic_write_json


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a model's state dict to one safetensors file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(_tensors(model.state_dict()), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``model``; a clear error if it does not fit."""
    if not Path(path).is_file():
        raise SparringError(f"checkpoint file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise SparringError(f"cannot read checkpoint {path}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or reshaped:  # checked before loading, so a failed load changes nothing
        raise SparringError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {reshaped[:5]}"
        )
    model.load_state_dict(state)


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state dict → (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return _tensors(tensors), {"scalars": scalars, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


class CheckpointDir:
    """The ``checkpoints/`` folder of a run: epoch folders plus ``latest.json`` / ``best.json`` pointers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(
        self, *, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any], best: bool
    ) -> Path:
        """Write ``epoch-XXXX/`` atomically, point ``latest`` (and ``best`` if asked) at it, prune others."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        try:
            save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
            opt_tensors, opt_rest = _split_optimizer(optimizer.state_dict())
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            atomic_write_json(tmp / "meta.json", {**meta, "epoch": epoch, "optimizer": opt_rest})
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_json(self.root / "latest.json", {"checkpoint": name, "epoch": epoch})
        if best:
            atomic_write_json(self.root / "best.json", {"checkpoint": name, "epoch": epoch})
        self._prune()
        return final

    def _pointer(self, which: str) -> Path | None:
        pointer = self.root / f"{which}.json"
        if not pointer.is_file():
            return None
        target = self.root / json.loads(pointer.read_text())["checkpoint"]
        return target if (target / "meta.json").is_file() else None

    def latest(self) -> Path | None:
        return self._pointer("latest")

    def best(self) -> Path | None:
        return self._pointer("best")

    def _prune(self) -> None:
        keep = {p.name for p in (self.latest(), self.best()) if p is not None}
        for child in self.root.iterdir():
            if child.is_dir() and (child.name.startswith("epoch-") or child.name.startswith(".epoch-")):
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)

    @staticmethod
    def load(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Restore ``model`` (and ``optimizer``) from a checkpoint folder; returns its metadata."""
        meta = json.loads((path / "meta.json").read_text())
        load_weights(model, path / "model.safetensors")
        if optimizer is not None:
            tensors = load_file(str(path / "optimizer.safetensors"))
            optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
        return meta
