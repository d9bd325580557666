"""The run pipeline's tasks: what ``task:`` in a YAML run config names.

A task supplies what differs between domains: its config schema, its data, model, training and evaluation
steps, and the domain block of its report. What they share lives once in :mod:`sparring.experiment`: the run
folder (claimed and locked, never a user's folder), the resolved ``config.yaml``, ``metrics.jsonl`` and
``checkpoints/`` (written by the one :class:`~sparring.train.Trainer`), ``--resume``, the report's header and
``report.html`` (rendered by the task's entry in :data:`sparring.report.views.VIEWS`).

``classification`` (images, features; the default when ``task`` is absent) is the core's; the domains register
``points``, ``recsys`` and ``language`` (:data:`TASKS` loads them on first lookup)::

    @TASKS.register("mytask")
    class MyTask(Task):
        config_type = MyRunConfig
        def prepare(self, config: MyRunConfig) -> Job: ...

A :class:`Job` is one run, prepared before the folder is touched (data loaded, model built, settings checked
against the data: every mistake is one line before anything is written).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from sparring.errors import ConfigError
from sparring.registry import Registry

Notify = Callable[[str], None]

#: The default task when a config has no ``task:`` key.
DEFAULT_TASK = "classification"


class Job(ABC):
    """One run of a task: built by :meth:`Task.prepare`, driven by :func:`sparring.experiment.run`."""

    #: The validated config this job runs (has ``name`` and ``seed``).
    config: Any

    @abstractmethod
    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in (written as ``config.yaml``; running it again reproduces the
        run)."""

    @abstractmethod
    def headline(self) -> str:
        """One line saying what is trained on what (shown before training starts)."""

    @abstractmethod
    def train(self, out: Path, *, resume: bool, progress: bool) -> None:
        """Train into the run folder ``out`` (checkpoints and ``metrics.jsonl`` through the Trainer); ``resume``
        continues from its newest complete checkpoint."""

    @abstractmethod
    def save_model(self, folder: Path) -> None:
        """The final ``model.safetensors`` and ``model.json`` (how to rebuild it) into ``folder`` (main process)."""

    @abstractmethod
    def evaluate(self, out: Path, *, progress: bool, notify: Notify) -> dict[str, Any] | None:
        """Evaluate the trained model; the report's domain blocks (None on the other processes of a multi-process
        run). The header (schema version, task, run metadata, threat) is added by the pipeline from
        :meth:`threat` and ``config``."""

    def load_trained(self, folder: Path) -> None:
        """Load the model :meth:`save_model` wrote into ``folder`` (a finished run's ``checkpoints/``), so that
        :meth:`evaluate` measures it again (``sparring eval --model RUN``)."""
        raise ConfigError(f"re-evaluating a saved run is not supported by {type(self).__name__}")

    def threat(self) -> dict[str, Any] | None:
        """The threat model the evaluation measured, as plain data for the report header (None: none)."""
        return None

    def close(self) -> None:
        """Release what training held (experiment trackers); called once whatever happened."""
        return None


class Task(ABC):
    """One kind of run (``task: <name>``): a config schema and the steps of a :class:`Job`."""

    name: ClassVar[str]
    #: The pydantic model a config of this task validates against (``task`` itself excluded).
    config_type: ClassVar[type[BaseModel]]
    #: The report view (:data:`sparring.report.views.VIEWS`) that renders this task's report.json.
    view: ClassVar[str]

    def parse(self, raw: dict[str, Any], *, source: str = "config") -> Any:
        """Validate a config mapping (without its ``task`` key) and :meth:`check` it: every problem is one
        :class:`ConfigError` line naming ``source`` and the field."""
        try:
            config = self.config_type.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {first_error(exc)}") from None
        try:
            self.check(config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return config

    def check(self, config: Any) -> None:
        """Build what can be built without data (objective, attacks, model settings) so errors surface before any
        work; the default checks nothing."""
        return None

    @abstractmethod
    def prepare(self, config: Any) -> Job:
        """Load the data and build the model and objective (the run folder is not touched yet)."""


TASKS: Registry[type[Task]] = Registry("task")


def task_of(raw: dict[str, Any], *, source: str = "config") -> Task:
    """The task a config mapping names (``task:``, default :data:`DEFAULT_TASK`)."""
    name = raw.get("task", DEFAULT_TASK)
    if not isinstance(name, str) or name not in TASKS:
        known = ", ".join(TASKS.names())
        raise ConfigError(f"{source}: task: must be one of {known}, got {name!r}")
    return TASKS.get(name)()


def first_error(exc: ValidationError) -> str:
    """A pydantic error as ``field.path: message`` (one line)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}"


__all__ = ["DEFAULT_TASK", "Job", "TASKS", "Task", "first_error", "task_of"]
