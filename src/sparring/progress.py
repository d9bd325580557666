"""Progress a person can read: attacks report how far they are, whoever listens draws it.

Attacks call :func:`report` from their loops (Square per block of queries, APGD per step); it costs one
context-variable lookup when nobody listens. A caller that wants to show progress wraps the attack in
:func:`listening`, and :class:`EvalBars` draws one rich bar per suite attack for an evaluation.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

Listener = Callable[[int, int], None]
_LISTENER: ContextVar[Listener | None] = ContextVar("sparring_progress", default=None)


def report(done: int, total: int) -> None:
    """Tell the current listener (if any) that ``done`` of ``total`` units of the running attack are finished."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(done, total)


@contextlib.contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Route :func:`report` calls made inside the block to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def interactive() -> bool:
    """Is a person watching? stderr is a terminal and no test runner or CI captures it."""
    if os.environ.get("CI") or "PYTEST_CURRENT_TEST" in os.environ:
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class EvalBars:
    """One bar per suite attack and one for the ε-curve, in batches (a batch's Square moves by query blocks).

    Used as a context manager; :meth:`step` takes ``(attack index, fraction of the current batch done)``.
    """

    def __init__(self, labels: Sequence[str], n_batches: int, *, curve: bool) -> None:
        self.labels = list(labels) + (["ε-curve"] if curve else [])
        self.n_batches = n_batches
        self._done = [0] * len(self.labels)
        self._bar: Any = None
        self._tasks: list[Any] = []

    def __enter__(self) -> EvalBars:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description:<14}"), BarColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._bar.__enter__()
        self._tasks = [self._bar.add_task(label, total=self.n_batches, note="") for label in self.labels]
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    @property
    def curve(self) -> int:
        """The index of the ε-curve's bar."""
        return len(self.labels) - 1

    def step(self, k: int, fraction: float) -> None:
        """Attack ``k`` is ``fraction`` of the way through the current batch."""
        self._bar.update(self._tasks[k], completed=self._done[k] + min(max(fraction, 0.0), 1.0))

    def finish_batch(self, k: int, *, attacked: int, broken: int) -> None:
        self._done[k] += 1
        task = self._tasks[k]
        fields = self._bar.tasks[task].fields
        attacked, broken = fields.get("attacked", 0) + attacked, fields.get("broken", 0) + broken
        note = f"broke {broken} of {attacked}" if k != self.curve else ""
        self._bar.update(task, completed=self._done[k], attacked=attacked, broken=broken, note=note)

    def skip_batch(self) -> None:
        """A batch read back from the evaluation state: every bar moves on."""
        for k in range(len(self.labels)):
            self._done[k] += 1
            self._bar.update(self._tasks[k], completed=self._done[k])


__all__ = ["EvalBars", "interactive", "listening", "report"]
