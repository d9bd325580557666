"""Run folders and locks: sparring deletes only what it wrote, and two processes never write one output.

* **The marker.** Every folder sparring creates for a run (``sparring run / train / eval / demo``) or for a
  resumable state (``eval_state/``, ``adv.state/``) holds ``.sparring-run.json``:
  ``{"sparring_version", "run_id", "created_at", "kind"}``. A folder is recognised as sparring's by that file,
  never by the names of the files it happens to contain. ``--overwrite`` clears only marked folders, and in
  them only the names sparring writes (:data:`OWNED`); anything else stays where it is, and a log line says so.
* **The lock.** ``.sparring-lock`` inside a folder (or ``FILE.lock`` beside an output file) holds
  ``{"pid", "host", "started_at"}``. It is created with ``O_CREAT | O_EXCL``, so a second process writing the
  same output refuses in one line while the first is alive. A lock whose process is gone (same host, no such
  pid) is stale and taken over; one from another host counts as alive. It is released on exit, exceptions
  included (a context manager, and ``atexit`` as a net).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import fnmatch
import functools
import json
import logging
import os
import secrets
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparring.errors import RunFolderError
from sparring.files import atomic_write_json
from sparring.version import __version__

log = logging.getLogger(__name__)

MARKER = ".sparring-run.json"
LOCK = ".sparring-lock"
KINDS = ("run", "eval", "demo", "state")
_RUN = ("config.yaml", "metrics.jsonl", "checkpoints", "report.json", "report.html", "examples.npz", "eval_state",
        "trackers")
OWNED: dict[str, tuple[str, ...]] = {  # per kind: the names (glob patterns) sparring writes in such a folder
    "run": _RUN,
    "eval": _RUN,
    "demo": ("comparison.html", "standard", "pgd_at"),
    "state": ("manifest.json", "batch-*.json", "batch-*.npz"),
}
WHOLE = ("checkpoints", "trackers", "eval_state")  # sparring's sub-folders, removed whole when they carry no marker


class FolderInUseError(RunFolderError):
    """Another live process holds the lock of this output."""


def not_ours(path: Path) -> str:
    """The one-line refusal for a non-empty folder sparring did not create."""
    return f"{path} was not created by sparring (no {MARKER}); choose another --out or empty it yourself"


@dataclass(frozen=True)
class RunFolder:
    """A folder sparring created, recognised by its marker file; see the module docstring."""

    path: Path

    @property
    def marker_path(self) -> Path:
        return Path(self.path) / MARKER

    def marker(self) -> dict[str, Any] | None:
        """The marker's content; None when absent or unreadable (the folder is then not recognised as ours)."""
        try:
            data = json.loads(self.marker_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("run_id"), str):
            return None
        return data

    def is_sparring(self) -> bool:
        return self.marker() is not None

    def entries(self) -> list[Path]:
        """What the folder holds, but for a lock (a lock alone leaves a folder empty); [] if it does not exist."""
        if not Path(self.path).is_dir():
            return []
        return sorted(p for p in Path(self.path).iterdir() if p.name != LOCK)

    def is_empty(self) -> bool:
        return not self.entries()

    @classmethod
    def create(cls, path: Path | str, *, kind: str) -> RunFolder:
        """Make the folder (if needed) and write a fresh marker into it: from now on it is sparring's."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        folder = cls(Path(path))
        atomic_write_json(folder.marker_path, {
            "sparring_version": __version__, "run_id": uuid.uuid4().hex,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "kind": kind,
        })
        return folder

    def clear_ours(self, *, keep_marker: bool = True) -> list[str]:
        """Delete what sparring wrote here (:data:`OWNED` for the marker's kind); the names left in place.

        A sub-folder with its own marker (a demo's runs, ``eval_state/``) is cleared the same way and removed
        if nothing is left in it; a symbolic link is removed, never what it points to. The lock is kept (the
        caller holds it), and so is the marker unless ``keep_marker`` is off.
        """
        marker = self.marker()
        if marker is None:
            raise RunFolderError(not_ours(Path(self.path)))
        kept: list[str] = []
        for entry in self.entries():
            if entry.name == MARKER:
                continue
            if not _owned(entry.name, marker["kind"]):
                kept.append(entry.name)
            elif entry.is_symlink() or not entry.is_dir():
                entry.unlink()
            elif (sub := RunFolder(entry)).is_sparring():
                kept += [f"{entry.name}/{name}" for name in sub.clear_ours(keep_marker=False)]
                with contextlib.suppress(OSError):  # not empty: the user's files (listed) or a lock
                    entry.rmdir()
            elif entry.name in WHOLE:
                shutil.rmtree(entry)
            else:
                kept.append(entry.name)
        if not keep_marker:
            self.marker_path.unlink(missing_ok=True)
        return kept


def _owned(name: str, kind: str) -> bool:
    patterns = OWNED[kind]
    # the temporary files of an atomic write that was killed: .NAME.<hex>.tmp
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f".{p}.*.tmp") for p in patterns)


# ----------------------------------------------------------------------------- locks
@contextlib.contextmanager
def folder_lock(path: Path | str) -> Iterator[Path]:
    """Hold ``PATH/.sparring-lock`` while the block runs (the folder is made if needed, and removed again if this
    created it and it is still empty at the end). Raises :class:`FolderInUseError` if a live process holds it.

    Under ``torch.distributed`` only rank 0 takes the lock; the other ranks pass through.
    """
    folder = Path(path)
    if not _main_process():
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _held(folder / LOCK, target=folder):
            yield folder
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a refused or failed start leaves nothing behind


@contextlib.contextmanager
def output_lock(path: Path | str) -> Iterator[Path]:
    """Hold ``FILE.lock`` beside the output file ``path`` while the block runs (see :func:`folder_lock`)."""
    out = Path(path)
    if not _main_process():
        yield out
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with _held(out.with_name(out.name + ".lock"), target=out):
        yield out


def _main_process() -> bool:
    from sparring.runtime.distributed import is_main_process

    return is_main_process()


@contextlib.contextmanager
def _held(lock: Path, *, target: Path) -> Iterator[None]:
    token = acquire(lock, target=target)
    release = functools.partial(_release, lock, token)
    atexit.register(release)  # a net for an exit that skips the block's end
    try:
        yield
    finally:
        atexit.unregister(release)
        release()


def acquire(lock: Path, *, target: Path) -> str:
    """Create ``lock`` for this process (taking over a stale one); its token. Refuses if a live process holds it."""
    token = secrets.token_hex(8)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "token": token}
    for _ in range(3):  # another process may release, or take over, the lock between two looks
        if _create(lock, record):
            return token
        held = _read(lock)
        if held is _MISSING:
            continue
        if not isinstance(held, dict):
            raise FolderInUseError(f"{target} may be in use: {lock} exists but is not a readable sparring lock; "
                                   "delete it if no sparring process is writing there")
        if _alive(held):
            where = "" if held["host"] == socket.gethostname() else f" on {held['host']}"
            raise FolderInUseError(f"{target} is in use by process {held['pid']}{where} (started "
                                   f"{held.get('started_at', '?')}); wait for it or choose another --out")
        log.warning("taking over %s: process %s that held it is no longer running", lock, held["pid"])
        _break(lock, held)
    raise FolderInUseError(f"{target} is in use by another process (its lock {lock} keeps changing); "
                           "wait for it or choose another --out")


_MISSING = object()


def _create(lock: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return True


def _read(lock: Path) -> Any:
    """The lock's record; _MISSING if there is none; None if it cannot be read as one."""
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _MISSING
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or not isinstance(data.get("host"), str):
        return None
    return data


def _alive(held: dict[str, Any]) -> bool:
    """Whether the process that wrote ``held`` may still run: another host, or a pid that exists here."""
    if held["host"] != socket.gethostname() or os.name == "nt":  # (on Windows, signal 0 is CTRL_C_EVENT)
        return True
    if held["pid"] == os.getpid():
        return True  # this very process holds it (another block of the same program)
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def _break(lock: Path, held: dict[str, Any]) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile (then put theirs back)."""
    aside = lock.with_name(f".{lock.name}.{secrets.token_hex(6)}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _read(aside) != held:
        with contextlib.suppress(OSError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)


def _release(lock: Path, token: str) -> None:
    held = _read(lock)
    if isinstance(held, dict) and held.get("token") == token:  # never remove a lock another process took over
        lock.unlink(missing_ok=True)


__all__ = ["MARKER", "LOCK", "OWNED", "RunFolder", "FolderInUseError", "folder_lock", "output_lock", "not_ours"]
