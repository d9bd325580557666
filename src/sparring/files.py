"""Atomic file writes: a reader (or a killed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    _atomic_write(path, "w", lambda handle: handle.write(text))


def atomic_write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez`` of ``arrays``, written atomically (no pickles)."""
    _atomic_write(path, "wb", lambda handle: np.savez(handle, **arrays))


def _atomic_write(path: Path, mode: str, write: Callable[[IO[Any]], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp would force 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any, **dumps: Any) -> None:
    """Indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, **dumps) + "\n")
