"""Checkpoints: written as safetensors plus JSON metadata, atomically; read from the files users have.

A checkpoint is a folder ``epoch-0007/`` holding ``model.safetensors``, ``optimizer.safetensors`` (the
optimizer's tensors; its scalar state and param groups go to JSON) and ``meta.json``. The folder is
written under a temporary name and renamed into place, then ``latest.json`` (and ``best.json``) is
replaced atomically to point at it; a run killed at any moment therefore leaves the previous complete
checkpoint in charge, never a half-written one. No pickle anywhere.

Everything read back is checked first. A pointer that is missing, corrupted (not JSON, no ``epoch-NNNN`` name)
or names a folder that is missing or damaged is not trusted: :meth:`CheckpointDir.latest` falls back to the
newest complete epoch folder with a warning (all randomness derives from ``(seed, epoch)``, so resuming from
an older epoch reproduces the same run, only later), and to None (train from epoch 0) when none is left. A
damaged file inside the folder being loaded (``meta.json``, ``model.safetensors``, ``optimizer.safetensors``)
is refused in one :class:`~sparring.errors.RunFolderError` line naming the file and what to do.

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

from sparring.errors import RunFolderError, SparringError
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
    _load_state(model, read_state_dict(path), path)


def _load_state(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load ``state`` (read from ``path``) into ``model``, all or nothing: :func:`load_weights` after reading."""
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
    """The ``checkpoints/`` folder of a run: epoch folders plus ``latest.json`` / ``best.json`` pointers.

    ``weights="trainable"`` saves only the parameters that require gradients (a LoRA adapter: megabytes, where the
    whole model is hundreds): the rest is rebuilt from the run's config on resume. The file says so in its
    metadata, and :meth:`load` then restores exactly those parameters and checks that they are all the model trains.
    """

    def __init__(self, root: Path, *, weights: str = "all") -> None:
        if weights not in ("all", "trainable"):
            raise ValueError(f"weights must be 'all' or 'trainable', got {weights!r}")
        self.root = Path(root)
        self.weights = weights

    def save(
        self, *, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any], best: bool
    ) -> Path:
        """Write ``epoch-XXXX/`` atomically, point ``latest`` (and ``best`` if asked) at it, prune others."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        try:
            if self.weights == "trainable":
                trainable = {name for name, p in model.named_parameters() if p.requires_grad}
                state = {k: v for k, v in model.state_dict().items() if k in trainable}
                save_file(_tensors(state), str(tmp / "model.safetensors"), metadata={"weights": "trainable"})
            else:
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

    def _pointer(self, which: str) -> tuple[Path | None, str | None]:
        """(the complete folder ``which.json`` names, None) or (None, what is wrong); (None, None) with no pointer."""
        pointer = self.root / f"{which}.json"
        if not pointer.exists():
            return None, None
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None, "corrupted (not JSON)"
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"unreadable ({_one_line(exc)})"
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(name, str) or not _EPOCH_FOLDER.fullmatch(name):
            return None, "corrupted (no epoch-NNNN folder under 'checkpoint')"
        problem = _folder_problem(self.root / name)
        return (None, f"pointing at {name}, which {problem}") if problem else (self.root / name, None)

    def _newest_complete(self) -> Path | None:
        """The complete epoch folder of the highest epoch, if any."""
        if not self.root.is_dir():
            return None
        folders = [p for p in self.root.iterdir() if _EPOCH_FOLDER.fullmatch(p.name) and p.is_dir()]
        for folder in sorted(folders, key=lambda p: int(p.name.removeprefix("epoch-")), reverse=True):
            if _folder_problem(folder) is None:
                return folder
        return None

    def latest(self) -> Path | None:
        """The checkpoint to resume from: the folder ``latest.json`` names when it is complete; otherwise (no
        pointer, a corrupted one, or one naming a missing or damaged folder) the newest complete epoch folder,
        with a warning when the pointer was there; None when no complete epoch folder exists."""
        folder, problem = self._pointer("latest")
        if folder is not None:
            return folder
        fallback = self._newest_complete()
        if problem is not None:
            pointer = self.root / "latest.json"
            if fallback is not None:
                log.warning("the checkpoint pointer %s is %s: using the newest complete epoch folder %s instead",
                            pointer, problem, fallback)
            else:
                log.warning("the checkpoint pointer %s is %s, and no complete epoch folder remains", pointer, problem)
        return fallback

    def best(self) -> Path | None:
        """The folder ``best.json`` names when it is complete; if that pointer is corrupted or names a missing or
        damaged folder, the best epoch the latest checkpoint's ``meta.json`` records (``best_epoch``), with a
        warning; None when there is no pointer or no usable best folder."""
        return self._best()[0]

    def _best(self) -> tuple[Path | None, bool]:
        """(the best folder, whether ``best.json`` exists but no best folder could be found)."""
        folder, problem = self._pointer("best")
        if folder is not None or problem is None:
            return folder, False
        pointer = self.root / "best.json"
        latest = self.latest()
        if latest is not None:
            epoch = _read_meta(latest / "meta.json").get("best_epoch")
            candidate = self.root / f"epoch-{epoch:04d}" if isinstance(epoch, int) and epoch >= 0 else None
            if candidate is not None and _folder_problem(candidate) is None:
                log.warning("the checkpoint pointer %s is %s: using %s, the best epoch %s records", pointer, problem,
                            candidate, latest / "meta.json")
                return candidate, False
        log.warning("the checkpoint pointer %s is %s, and the best epoch folder cannot be found", pointer, problem)
        return None, True

    def _prune(self) -> None:
        best, lost = self._best()
        if lost:  # best.json is damaged and the best folder unknown: delete nothing that might be it
            log.warning("keeping every epoch folder in %s until best.json is rewritten", self.root)
            return
        keep = {p.name for p in (self.latest(), best) if p is not None}
        for child in self.root.iterdir():
            if child.is_dir() and (child.name.startswith("epoch-") or child.name.startswith(".epoch-")):
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)

    @staticmethod
    def load(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Restore ``model`` (and ``optimizer``) from a checkpoint folder; returns its metadata.

        Every file is checked before anything is changed: a damaged ``meta.json``, ``model.safetensors`` or
        ``optimizer.safetensors`` raises one :class:`~sparring.errors.RunFolderError` line naming the file, and
        the model and optimizer are then unchanged.
        """
        path = Path(path)
        meta_file = path / "meta.json"
        meta = _read_meta(meta_file, strict=True)
        model_file = path / "model.safetensors"
        state = _read_checkpoint_tensors(model_file)
        joined = None
        if optimizer is not None:
            opt_file = path / "optimizer.safetensors"
            tensors = _read_checkpoint_tensors(opt_file)
            try:
                joined = _join_optimizer(tensors, meta["optimizer"])
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise RunFolderError(
                    f"the optimizer state in {meta_file} and {opt_file} is damaged ({_one_line(exc)}); "
                    f"{_damaged_advice(path)}"
                ) from None
        before = {k: v.detach().clone() for k, v in model.state_dict().items()} if joined is not None else None
        if _saved_weights(model_file) == "trainable":
            _load_trainable(model, state, model_file)
        else:
            _load_state(model, state, model_file)
        if optimizer is not None and joined is not None:
            try:
                optimizer.load_state_dict(joined)
            except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
                assert before is not None
                model.load_state_dict(before)
                raise RunFolderError(
                    f"cannot restore the optimizer from {path / 'optimizer.safetensors'} and {meta_file} "
                    f"({_one_line(exc)}): they are damaged or were written for another optimizer or model; resume "
                    f"with the config the run was started with, delete the folder {path} to resume from an older "
                    "checkpoint, or start afresh with --overwrite"
                ) from None
        return meta


def _saved_weights(file: Path) -> str:
    """``"trainable"`` when the checkpoint holds only the trainable parameters, else ``"all"``."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return (f.metadata() or {}).get("weights", "all")


def _load_trainable(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Restore a trainable-only checkpoint: its tensors must be exactly the model's trainable parameters."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(trainable) - set(state)), sorted(set(state) - set(trainable))
    wrong = [k for k in state if k in trainable and tuple(state[k].shape) != tuple(trainable[k].shape)]
    if missing or extra or wrong:
        problem = (f"lacks {_few(missing)}" if missing else f"has parameters the model does not train: {_few(extra)}"
                   if extra else f"has other shapes for {_few(wrong)}")
        raise RunFolderError(f"the trainable-weights checkpoint {path} {problem}; resume with the config the run was "
                             "started with, or start afresh with --overwrite")
    with torch.no_grad():
        for name, tensor in state.items():
            trainable[name].copy_(tensor)


# --------------------------------------------------------------------------- checking what was written
_EPOCH_FOLDER = re.compile(r"epoch-\d{4,}")
_CHECKPOINT_FILES = ("meta.json", "model.safetensors", "optimizer.safetensors")


def _damaged_advice(folder: Path) -> str:
    return (
        f"delete the folder {folder} to resume from the newest complete epoch folder left (or from epoch 0), "
        "or start afresh with --overwrite"
    )


def _read_meta(file: Path, *, strict: bool = False) -> dict[str, Any]:
    """``meta.json`` as a dict with an int ``epoch``; ``{}`` when it is not (or raise, if ``strict``)."""
    problem: str | None = None
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem, meta = "is missing", None
    except json.JSONDecodeError:
        problem, meta = "is corrupted (not JSON)", None
    except (OSError, UnicodeDecodeError) as exc:
        problem, meta = f"is unreadable ({_one_line(exc)})", None
    if problem is None:
        epoch = meta.get("epoch") if isinstance(meta, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            problem = "is corrupted (no integer 'epoch')"
        elif not isinstance(meta.get("optimizer", {}), dict):
            problem = "is corrupted ('optimizer' is not an object)"
    if problem is None:
        return meta  # type: ignore[no-any-return]
    if strict:
        raise RunFolderError(f"the checkpoint metadata {file} {problem}; {_damaged_advice(file.parent)}")
    return {}


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header, length), without reading the tensors; None if fine."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "is truncated"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return "is truncated"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"is corrupted ({_one_line(exc)})"
    if not isinstance(header, dict):
        return "is corrupted (its header is not a JSON object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "is corrupted (its header lacks data offsets)"
    if size != 8 + n + end:
        return "is truncated" if size < 8 + n + end else "is corrupted (longer than its header says)"
    return None


def _folder_problem(folder: Path) -> str | None:
    """What makes an epoch folder unusable ("is missing", "has a truncated model.safetensors" ...); None if complete."""
    if not folder.is_dir():
        return "is missing"
    if not _read_meta(folder / "meta.json"):
        return "has no readable meta.json"
    for name in _CHECKPOINT_FILES[1:]:
        problem = _safetensors_problem(folder / name)
        if problem is not None:
            return f"has a {name} that {problem}"
    return None


def _read_checkpoint_tensors(file: Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint's safetensors file, or one :class:`RunFolderError` line naming it."""
    problem = _safetensors_problem(file)
    if problem is None:
        try:
            return load_file(str(file))
        except Exception as exc:  # safetensors raises several types for corrupt files
            problem = f"is corrupted ({_one_line(exc)})"
    raise RunFolderError(f"the checkpoint file {file} {problem}; {_damaged_advice(file.parent)}")
