"""Models users already have, by the names they write on the command line.

``load_model(spec, checkpoint=..., data=...)`` resolves ``--model``, then loads ``--checkpoint`` into it:

- ``RUN_DIR``: a run folder sparring wrote (or its ``checkpoints/``): the architecture from ``model.json``,
  the weights from ``model.safetensors`` unless a checkpoint is given;
- ``NAME``: a registered model (:func:`sparring.models.available`), shaped by the data;
- ``MODULE:FACTORY`` or ``file.py:FACTORY``: a function returning the ``nn.Module`` (the module is looked
  up in the current folder first, as ``python -c "import MODULE"`` would);
- ``file.pt`` / ``file.ts``: a TorchScript archive, a whole model.

Every failure is one :class:`~sparring.errors.SparringError` line naming what to change.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparring.data import Dataset
from sparring.errors import ConfigError, DataError, SparringError

log = logging.getLogger(__name__)

FORMS = (
    "a run folder (holding checkpoints/model.json), a registered model name ({names}), MODULE:FACTORY or "
    "file.py:FACTORY (a function returning the nn.Module), or a TorchScript file (.pt, .ts)"
)
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".bin", ".ckpt", ".safetensors")


def load_model(spec: str, *, checkpoint: Path | str | None = None, data: Dataset | None = None) -> nn.Module:
    """The model ``--model spec`` names, with ``checkpoint`` loaded into it.

    Args:
        spec: a run folder, a registered model name, ``MODULE:FACTORY``, ``file.py:FACTORY`` or a TorchScript
            file (see the module docstring).
        checkpoint: weights to load (see :func:`sparring.runtime.checkpoint.load_weights`); for a run folder they
            replace the folder's own.
        data: the data the model will see; its ``input_shape`` and ``num_classes`` shape a registered model and
            are checked against a run folder's ``model.json``.
    """
    from sparring.runtime.checkpoint import load_weights

    spec = str(spec).strip()
    path = Path(spec)
    run_json = _run_model_json(path)
    if run_json is not None:
        net, weights = _from_run(run_json, data)
        if checkpoint is None:
            if weights is None:
                raise SparringError(
                    f"{run_json.parent} has model.json but no weights (model.safetensors or an epoch checkpoint): "
                    "the run did not get to save any; pass --checkpoint"
                )
            checkpoint = weights
    elif path.suffix in MODEL_FILE_SUFFIXES:
        net = _from_file(path)
    elif spec in _names():
        net = _from_registry(spec, data)
    elif ":" in spec:
        net = _from_factory(spec, data)
    elif path.is_file() and path.suffix != ".py":
        net = _from_file(path)
    elif path.suffix == ".py":
        raise ConfigError(f"--model {spec} needs the function to call: {spec}:FACTORY (e.g. {spec}:make_model)")
    elif path.is_dir():
        raise ConfigError(_not_a_run(path, spec))
    else:
        raise ConfigError(f"--model {spec!r} is not something sparring can load; it takes "
                          f"{FORMS.format(names=_names_hint(spec))}")
    if checkpoint is not None:
        load_weights(net, Path(checkpoint))
    return net


def load_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``MODULE:FACTORY`` (a module in the current folder or installed, or a ``.py`` file) to a callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SparringError(f"--model must look like MODULE:FACTORY or file.py:FACTORY, got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise SparringError(f"model file not found: {path}")
        with _on_sys_path(path.resolve().parent):  # so the file can import its neighbours
            module = _exec_file(path)
    else:
        with _on_sys_path(Path.cwd()):
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                    raise SparringError(
                        f"cannot import {module_name!r}: no {module_name.replace('.', '/')}.py in the current folder "
                        f"({Path.cwd()}) nor an installed module of that name"
                    ) from None
                raise SparringError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
            except Exception as exc:  # a syntax error or an exception in the module's top-level code
                raise SparringError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SparringError(f"{module_name} has no callable {attr!r}")
    return factory


# --------------------------------------------------------------------------- the forms
def _names() -> list[str]:
    from sparring.models import available

    return available()


def _names_hint(spec: str) -> str:
    names = _names()
    close = difflib.get_close_matches(spec, names, n=3)
    return ", ".join(close) + " ..." if close else ", ".join(names)


def _run_model_json(path: Path) -> Path | None:
    """``model.json`` of a run folder or of its ``checkpoints/`` folder (or the file itself), if ``path`` is one."""
    if path.name == "model.json" and path.is_file():
        return path
    for candidate in (path / "checkpoints" / "model.json", path / "model.json"):
        if path.is_dir() and candidate.is_file():
            return candidate
    return None


def _not_a_run(path: Path, spec: str) -> str:
    from sparring.runtime.checkpoint import CheckpointDir

    latest = CheckpointDir(path / "checkpoints").latest() if (path / "checkpoints").is_dir() else None
    if latest is not None:
        return (
            f"{spec} has no checkpoints/model.json: its training has not finished; pass the architecture as --model "
            f"and {latest / 'model.safetensors'} as --checkpoint"
        )
    return f"{spec} is a folder but not a sparring run (no checkpoints/model.json): --model takes " + FORMS.format(
        names=_names_hint(spec)
    )


def _from_run(model_json: Path, data: Dataset | None) -> tuple[nn.Module, Path | None]:
    """The architecture ``model.json`` describes, and the weights file beside it (None if there is none)."""
    from sparring.models import build_model, with_normalization
    from sparring.runtime.checkpoint import CheckpointDir

    try:
        spec = json.loads(model_json.read_text(encoding="utf-8"))
        name, shape, classes = spec["name"], tuple(int(d) for d in spec["input_shape"]), int(spec["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SparringError(f"cannot read {model_json}: {_one_line(exc)}; the run folder is damaged") from None
    if data is not None and (tuple(data.input_shape) != shape or data.num_classes != classes):
        raise DataError(
            f"the model in {model_json.parent.parent} takes inputs {shape} with {classes} classes but the data "
            f"has inputs {tuple(data.input_shape)} with {data.num_classes} classes: pass the --data it was trained on"
        )
    net = build_model(name, input_shape=shape, num_classes=classes, **(spec.get("settings") or {}))
    normalize = spec.get("normalize")
    if normalize:
        net = with_normalization(net, normalize["mean"], normalize["std"])
    folder = model_json.parent
    weights = folder / "model.safetensors"
    if weights.is_file():
        return net, weights
    saved = CheckpointDir(folder)  # training stopped before the final save: its best or latest epoch
    epoch = saved.best() or saved.latest()
    if epoch is None:
        return net, None
    log.warning("%s has no model.safetensors: loading the checkpoint %s", folder, epoch)
    return net, epoch / "model.safetensors"


def _from_registry(name: str, data: Dataset | None) -> nn.Module:
    from sparring.models import build_model

    if data is None:
        raise ConfigError(f"--model {name} needs data to size its input and output: pass --data (or data=)")
    return build_model(name, input_shape=tuple(data.input_shape), num_classes=data.num_classes)


def _from_file(path: Path) -> nn.Module:
    """A TorchScript archive; anything else gets a line saying what it is and where it goes."""
    from sparring.runtime.checkpoint import checkpoint_format, read_state_dict

    if not path.is_file():
        raise SparringError(f"model file not found: {path}")
    if checkpoint_format(path) != "torchscript":
        try:
            read_state_dict(path)
        except SparringError as exc:  # a pickled whole model, refused; or not a model file at all
            raise ConfigError(
                f"--model {path} is not a TorchScript archive and {exc}; or export the whole model with "
                "torch.jit.script(model).save(path)"
            ) from None
        raise ConfigError(
            f"{path} holds weights, not a whole model: name the architecture with --model (a run folder, "
            f"one of {', '.join(_names())}, or MODULE:FACTORY) and pass {path} as --checkpoint"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still the reader
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SparringError(f"cannot load the TorchScript model {path}: {_one_line(exc)}") from None


def _from_factory(spec: str, data: Dataset | None) -> nn.Module:
    """Call ``FACTORY``, with ``input_shape`` / ``num_classes`` from the data if it takes those keywords."""
    factory = load_factory(spec)
    kwargs: dict[str, Any] = {}
    if data is not None:
        try:
            accepted = set(inspect.signature(factory).parameters)
        except (TypeError, ValueError):  # a builtin or C callable without a signature
            accepted = set()
        offered = {"input_shape": tuple(data.input_shape), "num_classes": data.num_classes}
        kwargs = {k: v for k, v in offered.items() if k in accepted}
    try:
        net = factory(**kwargs)
    except Exception as exc:
        raise SparringError(f"--model {spec}: the factory raised {_one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise SparringError(f"--model {spec}: the factory returned {type(net).__name__}, not a torch nn.Module")
    return net


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the duration (an import), then ``sys.path`` as it was."""
    before = list(sys.path)
    sys.path.insert(0, os.fspath(folder))
    importlib.invalidate_caches()  # a module written after the last import's directory scan
    try:
        yield
    finally:
        sys.path[:] = before


def _exec_file(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise SparringError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a syntax error or an exception in the file's top-level code
        raise SparringError(f"importing {path} failed: {_one_line(exc)}") from None
    return module


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


__all__ = ["load_factory", "load_model"]
