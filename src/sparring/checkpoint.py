"""Checkpoints: written as safetensors plus JSON metadata, atomically; read from the files users have.

A checkpoint is a folder ``epoch-0007/`` holding ``model.safetensors``, ``optimizer.safetensors`` (the
optimizer's tensors; its scalar state and param groups go to JSON) and ``meta.json``. The folder is
written under a temporary name and renamed into place, then ``latest.json`` (and ``best.json``) is
replaced atomically to point at it; a run killed at any moment therefore leaves the previous complete
checkpoint in charge, never a half-written one. No pickle anywhere.

:func:`load_weights` reads the weights users already have: safetensors, and ``torch.save`` files read with
``torch.load(weights_only=True)`` only (a file that needs a full unpickle is refused), with the key prefixes
that DataParallel, torch.compile, Lightning and :func:`~sparring.models.with_normalization` add.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparring.errors import SparringError
from sparring.files import atomic_write_json

log = logging.getLogger(__name__)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a model's state dict to one safetensors file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(_tensors(model.state_dict()), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path | str) -> None:
    """Load the weights in ``path`` into ``model``, all or nothing.

    ``path`` is a safetensors file or a ``torch.save`` file (``.pt``, ``.pth``, ``.bin``, Lightning's ``.ckpt``),
    read with ``torch.load(weights_only=True)`` only: a file that needs a full unpickle is refused, since
    unpickling runs whatever code the file names. The state dict may sit under ``state_dict``, ``model``,
    ``net``, ``model_state_dict`` (or only an EMA copy); ``module.`` (DataParallel/DDP) and ``_orig_mod.``
    (torch.compile) anywhere in the keys, a prefix shared by the keys (Lightning's ``model.``) and the
    :func:`~sparring.models.with_normalization` wrapper on either side are reconciled. Anything else that
    differs raises one :class:`SparringError` line listing the differences and the likely fix; the model is
    then unchanged.
    """
    path = Path(path)
    state = read_state_dict(path)
    expected = model.state_dict()
    matched = match_state_dict(expected, state, source=f"checkpoint {path}")
    if matched.dropped_normalization is not None:
        mean, std = matched.dropped_normalization
        log.warning(
            "%s was saved with with_normalization(mean=%s, std=%s) but the model has no Normalize layer: loaded the "
            "inner model only; wrap the model with with_normalization to get the same outputs", path, mean, std,
        )
    if matched.ignored:
        log.warning("%s: loaded the weights read with %s; ignored %d other tensors (%s)", path, matched.how,
                    len(matched.ignored), _few(matched.ignored))
    elif matched.how:
        log.info("%s: loaded the weights read with %s", path, matched.how)
    before = {k: v.detach().clone() for k, v in expected.items()}
    try:
        model.load_state_dict(matched.state, strict=True)
    except Exception as exc:  # keys and shapes were checked; a module's own loading hook can still refuse
        model.load_state_dict(before, strict=True)
        raise SparringError(f"cannot load checkpoint {path} into the model: {_one_line(exc)}") from None


def checkpoint_format(path: Path) -> str:
    """What a weights file is, from its bytes: ``"safetensors"``, ``"torchscript"`` or ``"torch"`` (torch.save)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return "torch"
        return "torchscript" if any(_TORCHSCRIPT_ENTRY.search(n) for n in names) else "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):  # u64 header length, then JSON
        return "safetensors"
    return "torch"


def read_state_dict(path: Path | str) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` state dict a checkpoint file holds, never unpickling anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise SparringError(f"checkpoint file not found: {path}")
    kind = checkpoint_format(path)
    if kind == "safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise SparringError(f"cannot read checkpoint {path}: {_one_line(exc)}") from None
    if kind == "torchscript":
        raise SparringError(
            f"{path} is a TorchScript archive, a whole model rather than weights: pass it as --model {path} "
            "(or sparring.models.loading.load_model) without --checkpoint"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"GLOBAL|allowlist", str(exc)):  # an object torch's weights-only reader would not rebuild
            raise SparringError(_refusal(path, exc)) from None
        detail = str(exc).partition("WeightsUnpickler error:")[2].split("Check the documentation")[0]
        raise SparringError(
            f"cannot read checkpoint {path} ({' '.join(detail.split()) or _one_line(exc)}): it is damaged, or needs a "
            "full unpickle, which sparring refuses; expected a safetensors file or a torch.save file of tensors"
        ) from None
    except Exception as exc:  # a damaged zip or pickle: RuntimeError, EOFError, ValueError ...
        raise SparringError(
            f"cannot read checkpoint {path} ({_one_line(exc)}): expected a safetensors file or a torch.save file "
            "(.pt, .pth, .bin, .ckpt)"
        ) from None
    state = _find_state_dict(obj)
    if state is None:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise SparringError(
            f"checkpoint {path} holds no state dict (found: {keys}): save torch.save(model.state_dict(), path) or "
            "safetensors"
        )
    return state


@dataclass
class StateMatch:
    """A checkpoint's tensors renamed to a model's keys, and what it took."""

    state: dict[str, Tensor]  # the model's keys → tensors, ready for load_state_dict(strict=True)
    how: str = ""  # how the keys were read ("" when as they are, bar module. / _orig_mod.)
    dropped_normalization: tuple[list[float], list[float]] | None = None  # the checkpoint's (mean, std), unused
    ignored: list[str] = field(default_factory=list)  # checkpoint keys outside the part that was loaded


def match_state_dict(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], *, source: str = "the checkpoint"
) -> StateMatch:
    """Rename ``state`` to the keys of ``expected`` (a model's state dict), or raise one line on what differs.

    The readings tried, most literal first: the keys as they are (``module.`` and ``_orig_mod.`` removed on both
    sides), the keys under one or two shared prefixes, a prefix the model has added, and each of these with the
    :func:`~sparring.models.with_normalization` wrapper added (the model's own Normalize is kept) or dropped
    (the checkpoint's Normalize is reported in ``dropped_normalization``). The first reading whose keys and
    shapes all fit wins; if none fits, the error describes the closest.
    """
    model_keys = _canonical(expected)  # canonical name → the model's own key
    shapes = {c: tuple(expected[k].shape) for c, k in model_keys.items()}
    wrapped = _is_wrapped(shapes)
    canonical = _canonical_state(state)
    best: _Candidate | None = None
    for candidate in _candidates(canonical, shapes, wrapped):
        missing, unexpected, reshaped = candidate.diff(shapes)
        if not (missing or unexpected or reshaped):
            final = {model_keys[c]: v for c, v in candidate.tensors.items()}
            for c in candidate.kept(shapes):
                final[model_keys[c]] = expected[model_keys[c]]
            used = {id(v) for v in candidate.tensors.values()}
            unused = {"0.mean", "0.std"} if candidate.dropped is not None else set()
            ignored = [k for k, v in canonical.items() if id(v) not in used and k not in unused]
            return StateMatch(final, candidate.how, candidate.dropped, ignored)
        if best is None or candidate.score(shapes) > best.score(shapes):
            best = candidate
    assert best is not None
    raise SparringError(_mismatch(source, best, shapes))


# --------------------------------------------------------------------------- reading
_TORCHSCRIPT_ENTRY = re.compile(r"(^|/)(constants\.pkl|code/)")
_NESTED = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")
_EMA = ("state_dict_ema", "model_ema", "ema", "ema_state_dict", "ema_model")
_WRAPPERS = ("module", "_orig_mod")  # DataParallel / DDP / AveragedModel, torch.compile
_OPTIONAL = ("num_batches_tracked",)  # absent from old BatchNorm checkpoints: the model keeps its own


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _refusal(path: Path, exc: BaseException) -> str:
    found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))  # torch names the first global it would not import
    what = f"it contains {found.group(1)}, not only tensors" if found else "it contains more than tensors"
    return (
        f"checkpoint {path} needs a full unpickle to read ({what}) and unpickling can run arbitrary code, so "
        "sparring refuses it: where the model's code lives, re-save it with torch.save(model.state_dict(), path) "
        "or as safetensors"
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, Tensor] | None:
    """The model's state dict in what torch.load returned: itself, under a usual key, or an EMA copy."""
    if _is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, Mapping) or depth > 2:
        return None
    for key in (*_NESTED, *_EMA):
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found is not None:
                return found
    inner = [v for v in obj.values() if _is_state_dict(v)]
    return dict(inner[0]) if len(inner) == 1 else None  # one state dict under an unusual key


# --------------------------------------------------------------------------- matching keys
def _canonical_key(key: str) -> str:
    return ".".join(part for part in key.split(".") if part not in _WRAPPERS)


def _canonical(state: Mapping[str, Tensor]) -> dict[str, str]:
    """Canonical name (no ``module.`` / ``_orig_mod.``) → key; the keys themselves if that would merge two."""
    names = {_canonical_key(k): k for k in state}
    return names if len(names) == len(state) else {k: k for k in state}


def _canonical_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    tensors = {c: state[k] for c, k in _canonical(state).items()}
    tensors.pop("n_averaged", None)  # torch.optim.swa_utils.AveragedModel's counter
    return tensors


def _is_wrapped(keys: Mapping[str, Any]) -> bool:
    """Keys of ``nn.Sequential(Normalize, model)``: ``0.mean``, ``0.std`` and ``1.*``."""
    rest = set(keys) - {"0.mean", "0.std"}
    return len(rest) == len(keys) - 2 and bool(rest) and all(k.startswith("1.") for k in rest)


@dataclass
class _Candidate:
    """One reading of the checkpoint's keys: ``tensors`` under canonical model names, and how it was made."""

    tensors: dict[str, Tensor]
    how: str = ""
    prefix: str = ""  # the prefix dropped from the checkpoint's keys
    wrapped_model: bool = False  # "1." added: the model's own Normalize buffers stay
    dropped: tuple[list[float], list[float]] | None = None  # the checkpoint's Normalize, dropped

    def kept(self, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        """Model keys the checkpoint need not provide: the model's Normalize, old BatchNorm counters."""
        return [
            k for k in shapes if k not in self.tensors
            and (k.rsplit(".", 1)[-1] in _OPTIONAL or (self.wrapped_model and k in ("0.mean", "0.std")))
        ]

    def diff(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str]]:
        """(missing, unexpected, reshaped) canonical keys."""
        kept = set(self.kept(shapes))
        missing = [k for k in shapes if k not in self.tensors and k not in kept]
        unexpected = [k for k in self.tensors if k not in shapes]
        reshaped = [k for k in self.tensors if k in shapes and tuple(self.tensors[k].shape) != shapes[k]]
        return missing, unexpected, reshaped

    def score(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        return sum(1 for k, v in self.tensors.items() if shapes.get(k) == tuple(v.shape))


def _candidates(
    state: dict[str, Tensor], shapes: Mapping[str, tuple[int, ...]], wrapped: bool
) -> Iterator[_Candidate]:
    """Readings of ``state`` from the most literal on: as is, one or two shared prefixes dropped or added, and
    the with_normalization wrapper added or dropped on each."""
    for tensors, how, prefix in _prefixed(state, shapes):
        yield _Candidate(tensors, how, prefix=prefix)
        if wrapped and not _is_wrapped(tensors):
            yield _Candidate({f"1.{k}": v for k, v in tensors.items()}, _join(how, "'1.' added for the model's "
                             "with_normalization"), prefix=prefix, wrapped_model=True)
        if not wrapped and _is_wrapped(tensors):
            mean, std = tensors["0.mean"].flatten().tolist(), tensors["0.std"].flatten().tolist()
            inner = {k[2:]: v for k, v in tensors.items() if k.startswith("1.")}
            yield _Candidate(inner, _join(how, "the checkpoint's with_normalization dropped"), prefix=prefix,
                             dropped=(mean, std))


def _prefixed(
    state: dict[str, Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> Iterator[tuple[dict[str, Tensor], str, str]]:
    """(tensors, how they were read, the prefix dropped or "")."""
    yield state, "", ""
    heads = _heads(state)
    for head in heads:  # Lightning's "model.", a "backbone." ...: the keys under one prefix
        inner = {k[len(head) + 1 :]: v for k, v in state.items() if k.startswith(f"{head}.")}
        yield inner, f"the '{head}.' prefix dropped", f"{head}."
        if len(inner) < len(state):  # a prefix on part of the model only
            partial = {(k[len(head) + 1 :] if k.startswith(f"{head}.") else k): v for k, v in state.items()}
            if len(partial) == len(state):
                yield partial, f"the '{head}.' prefix dropped where present", f"{head}."
        for sub in _heads(inner):
            deeper = {k[len(sub) + 1 :]: v for k, v in inner.items() if k.startswith(f"{sub}.")}
            yield deeper, f"the '{head}.{sub}.' prefix dropped", f"{head}.{sub}."
    for head in _heads(dict.fromkeys(shapes)):  # the model nests what the checkpoint holds bare
        if head not in heads:
            yield {f"{head}.{k}": v for k, v in state.items()}, f"a '{head}.' prefix added", ""


def _heads(keys: Mapping[str, Any]) -> list[str]:
    """First key components, the most common first; only those followed by more components."""
    counts: dict[str, int] = {}
    for key in keys:
        head, sep, _ = key.partition(".")
        if sep:
            counts[head] = counts.get(head, 0) + 1
    return sorted(counts, key=lambda h: -counts[h])


def _join(how: str, more: str) -> str:
    return f"{how}, {more}" if how else more


def _mismatch(source: str, best: _Candidate, shapes: Mapping[str, tuple[int, ...]]) -> str:
    missing, unexpected, reshaped = best.diff(shapes)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if reshaped:
        shown = ", ".join(
            f"{k} {_shape(best.tensors[k].shape)} vs {_shape(shapes[k])}" for k in reshaped[:3]
        ) + (", ..." if len(reshaped) > 3 else "")
        parts.append(f"{len(reshaped)} with other shapes (checkpoint vs model: {shown})")
    reading = f" (read with {best.how})" if best.how else ""
    hint = _hint(best, shapes, missing, unexpected, reshaped)
    return f"{source} does not match the model{reading}: {'; '.join(parts)}; {hint}"


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _hint(
    best: _Candidate, shapes: Mapping[str, tuple[int, ...]], missing: list[str], unexpected: list[str],
    reshaped: list[str],
) -> str:
    last = [k for k in shapes if k.endswith(".weight") and len(shapes[k]) >= 2]
    head = last[-1] if last else None
    if head in reshaped:
        theirs, ours = tuple(best.tensors[head].shape), shapes[head]
        if theirs[1:] == ours[1:]:
            return (
                f"the checkpoint has {theirs[0]} classes in {head} but the model has {ours[0]}: pass the right "
                "--model / num_classes (the data the checkpoint was trained on)"
            )
    rebuild = "build the architecture the checkpoint was saved from (same model and settings: depth, width, classes)"
    if best.prefix:
        return f"the checkpoint's keys look like they carry a '{best.prefix}' prefix, but even without it: {rebuild}"
    for extra, short in ((unexpected, missing), (missing, unexpected)):
        for prefix in _heads(dict.fromkeys(extra)):
            hits = sum(1 for k in extra if k.startswith(f"{prefix}.") and k[len(prefix) + 1 :] in short)
            if hits and hits >= len(short) // 2:
                side = "checkpoint" if extra is unexpected else "model"
                return (
                    f"the {side}'s keys look like they carry a '{prefix}.' prefix ({hits} keys match without it): "
                    "load the matching part (e.g. rename the keys) or build the model the checkpoint was saved from"
                )
    return rebuild


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
