"""Optional dependencies: a missing extra is one line naming the ``pip install`` that brings it.

``require("transformers", what="language models")`` imports and returns the module, or raises
:class:`MissingExtraError` saying ``pip install 'sparring[hf]'``; ``missing_extra(exc)`` turns a
:class:`ModuleNotFoundError` raised deep inside an import into that error when the module belongs to an extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from sparring.errors import SparringError

#: The top-level module of each optional package and the extra of pyproject.toml that installs it.
EXTRAS: dict[str, str] = {
    "transformers": "hf", "peft": "hf", "tokenizers": "hf",
    "lightning": "scale", "tensorboard": "scale", "mlflow": "scale",
    "torchattacks": "bench", "art": "bench", "gguf": "llm",
}


class MissingExtraError(SparringError, ImportError):
    """An optional package is not installed; the message names the ``pip install`` to run."""


def install_hint(module: str) -> str:
    """``pip install 'sparring[hf]'`` for a module of an extra, else ``pip install <module>``."""
    root = module.split(".")[0]
    extra = EXTRAS.get(root)
    return f"pip install 'sparring[{extra}]'" if extra else f"pip install {root}"


def installed(module: str) -> bool:
    """Is ``module`` importable (without importing it)? A module blocked in ``sys.modules`` (None) is not."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (a few words: "the Lightning callbacks"), or one line naming the install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, what=what) from None


def missing_extra(exc: ModuleNotFoundError, *, what: str) -> Exception:
    """The :class:`MissingExtraError` for ``exc`` when the missing module belongs to an extra, else ``exc``."""
    name = (exc.name or "").split(".")[0]
    if name not in EXTRAS:
        return exc
    return MissingExtraError(f"{what}: {name} is not installed; run {install_hint(name)}")


__all__ = ["EXTRAS", "MissingExtraError", "install_hint", "installed", "missing_extra", "require"]
