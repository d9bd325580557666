"""Models users already have, by the names they write on the command line.

``load_model(spec, checkpoint=..., data=...)`` resolves ``--model``: ``MODULE:FACTORY`` (an importable
module or a ``.py`` file and a function returning the ``nn.Module``) and loads ``--checkpoint`` into it.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from sparring.data import Dataset
from sparring.errors import SparringError


def load_factory(spec: str) -> Any:
    """Resolve ``MODULE:FACTORY`` (a module path or a .py file) to a callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SparringError(f"--model must look like MODULE:FACTORY, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise SparringError(f"model file not found: {path}")
            spec_obj = importlib.util.spec_from_file_location(path.stem, path)
            assert spec_obj is not None and spec_obj.loader is not None
            module = importlib.util.module_from_spec(spec_obj)
            spec_obj.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SparringError(f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SparringError(f"{module_name} has no callable {attr!r}")
    return factory


def load_model(spec: str, *, checkpoint: Path | str | None = None, data: Dataset | None = None) -> nn.Module:
    """The model ``--model spec`` names, with ``checkpoint`` loaded into it (``data`` gives shapes where needed)."""
    from sparring.checkpoint import load_weights

    net = load_factory(spec)()
    if checkpoint is not None:
        load_weights(net, Path(checkpoint))
    return net


__all__ = ["load_factory", "load_model"]
