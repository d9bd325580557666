"""Reading pickles that hold only data: data files never run code.

``pickle.load`` calls whatever function the file names (``os.system``, ``subprocess.Popen``, ...), so a pickle
is a program, not data. :func:`safe_load` reads it with an unpickler whose ``find_class`` admits only the few
globals that rebuild plain data: dicts, lists, tuples, strings, bytes and numbers are built by pickle opcodes
without any global; :data:`NUMPY_ARRAYS` adds numpy arrays and scalars (``_reconstruct``, ``ndarray``,
``dtype``, ``scalar``, ``_frombuffer``, under the ``numpy.core`` and ``numpy._core`` spellings of numpy 1 and 2)
and the ``_codecs.encode(text, "latin1")`` call that protocol 0-2 pickles use for bytes. Anything else, even
another name in an allowed module (``numpy.load``), raises :class:`UnsafePickleError` before it is imported.

The allowed names map to the objects themselves, so reading a pickle never imports a module either.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

try:  # numpy 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asks for a global outside the allowed ones; ``what`` is its ``module.name``."""

    def __init__(self, module: str, name: str) -> None:
        self.what = f"{module}.{name}"
        super().__init__(f"it asks to load {self.what}, which is not plain data")


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes: ``encode(str, "latin1")`` and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs", f"encode with {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        found[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        found[(f"{core}.multiarray", "scalar")] = _multiarray.scalar
        found[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer
    return found


#: Bytes (protocol 0-2) plus numpy arrays and scalars: what a CIFAR batch or any pickled dict of arrays needs.
NUMPY_ARRAYS: Mapping[tuple[str, str], Any] = {("_codecs", "encode"): _latin1, **_numpy_globals()}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` returns only the objects in ``allowed`` (``(module, name) → object``)."""

    def __init__(self, file: IO[bytes], *, allowed: Mapping[tuple[str, str], Any], encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it refers to an external (persistent) object, which is not plain data")


def safe_load(
    file: IO[bytes], *, allowed: Mapping[tuple[str, str], Any] = NUMPY_ARRAYS, encoding: str = "ASCII"
) -> Any:
    """Unpickle ``file`` admitting only the globals in ``allowed``; raises :class:`UnsafePickleError` otherwise.

    Args:
        file: a binary file object positioned at the pickle.
        allowed: ``(module, name) → object`` that ``find_class`` may return (default: :data:`NUMPY_ARRAYS`).
        encoding: how Python 2 ``str`` objects are decoded (``"bytes"`` keeps them as bytes, as CIFAR needs).
    """
    return SafeUnpickler(file, allowed=allowed, encoding=encoding).load()
