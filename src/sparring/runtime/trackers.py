"""Experiment trackers through accelerate: TensorBoard, MLflow and (when installed) Weights & Biases.

Everything is written under the run folder, never to a server:

- TensorBoard: ``<run>/trackers/<project>/`` (event files; ``tensorboard --logdir <run>/trackers``);
- MLflow: a local file store ``file:<run>/trackers/mlruns`` (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
  --backend-store-uri file:<run>/trackers/mlruns``);
- W&B: offline runs in ``<run>/trackers/wandb`` unless the user sets ``WANDB_MODE`` (``wandb sync`` uploads them).

Usage (the accelerator must be created with :func:`accelerator_kwargs`)::

    accelerator = Accelerator(**accelerator_kwargs(["tensorboard", "mlflow"], run_dir))
    start(accelerator, project="digits", config=resolved_config)
    log_epoch(accelerator, record, step=record["epoch"])      # each epoch
    log_evaluation(accelerator, report, step=epochs)          # scalars, per-class table, ε-curve
    finish(accelerator)

Every function is a no-op when no tracker is active (including on processes other than the main one).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparring.errors import ConfigError
from sparring.extras import EXTRAS, install_hint, installed

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "wandb")
TRACKERS_DIR = "trackers"  # inside the run folder
# tracker -> (importable module, what to pip install)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
             "wandb": ("wandb", "wandb")}
_SCALAR_TRACKERS = ("tensorboard", "mlflow")  # take the ε-curve as scalars stepped by ε index (W&B: a line plot)


def check_trackers(names: str | Iterable[str] | None) -> list[str]:
    """Validate tracker names (lower-cased, de-duplicated, in order).

    Raises:
        ConfigError: for an unknown name, or a tracker whose package is not installed.
    """
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    checked: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {raw!r} in train.trackers; choose from {', '.join(TRACKERS)}")
        module, pip_name = _PACKAGES[name]
        if not installed(module):
            hint = install_hint(module) if module in EXTRAS else f"pip install {pip_name}"
            raise ConfigError(f"{name} is not installed; run {hint}, or drop it from train.trackers")
        if name not in checked:
            checked.append(name)
    return checked


def tracker_dir(run_dir: Path | str) -> Path:
    """Where the trackers of a run folder write (``<run>/trackers``)."""
    return Path(run_dir) / TRACKERS_DIR


def mlflow_uri(run_dir: Path | str) -> str:
    """The local MLflow file store of a run folder (``file:<run>/trackers/mlruns``)."""
    return (tracker_dir(run_dir).resolve() / "mlruns").as_uri()


def accelerator_kwargs(names: str | Iterable[str] | None, run_dir: Path | str | None) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator(...)`` that enable ``names`` writing under ``run_dir``.

    Empty when no tracker is asked for. Raises :class:`ConfigError` for a bad name or a missing run folder.
    """
    checked = check_trackers(names)
    if not checked:
        return {}
    if run_dir is None:
        raise ConfigError("train.trackers need a run folder to write to; pass out_dir or drop train.trackers")
    return {"log_with": checked, "project_dir": str(tracker_dir(run_dir))}


def active(accelerator: Any) -> list[str]:
    """Names of the trackers started on this process (empty on non-main processes)."""
    return [tracker.name for tracker in getattr(accelerator, "trackers", [])]


def start(accelerator: Any, *, project: str, config: Mapping[str, Any] | None = None,
          run_name: str | None = None) -> None:
    """Start the accelerator's trackers (``init_trackers``) with the flattened ``config`` as hyperparameters.

    ``project`` names the TensorBoard sub-folder, the MLflow experiment and the W&B project; ``run_name`` the
    MLflow / W&B run. The MLflow tracking URI is pointed at the run folder's local file store (process-wide, as
    MLflow's fluent API needs).
    """
    names = [str(name) for name in (accelerator.log_with or [])]
    if not names or not accelerator.is_main_process:
        return
    root = Path(accelerator.project_dir or ".")
    root.mkdir(parents=True, exist_ok=True)
    init_kwargs: dict[str, dict[str, Any]] = {}
    if "mlflow" in names:
        import mlflow

        if mlflow.active_run() is not None:  # left over by a run that failed before finish()
            mlflow.end_run(status="KILLED")
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x asks for an opt-in to file stores
        mlflow.set_tracking_uri((root.resolve() / "mlruns").as_uri())  # == mlflow_uri(run folder)
        init_kwargs["mlflow"] = {"run_name": run_name}
    if "wandb" in names:
        (root / "wandb").mkdir(exist_ok=True)
        init_kwargs["wandb"] = {"dir": str(root), "name": run_name, "mode": os.environ.get("WANDB_MODE", "offline")}
    accelerator.init_trackers(project, config=flatten_config(config or {}), init_kwargs=init_kwargs)


def log_epoch(accelerator: Any, record: Mapping[str, Any], step: int | None = None) -> None:
    """Log the numeric values of a training epoch's record (``train_loss`` → ``train/loss``, ``val_*`` → ``val/*``).

    ``step`` defaults to the record's ``epoch``; ``epoch`` and ``step`` themselves are the x axis, not metrics.
    """
    if not active(accelerator):
        return
    values = {_epoch_key(k): float(v) for k, v in record.items() if k not in ("epoch", "step") and _is_number(v)}
    accelerator.log(values, step=step if step is not None else int(record.get("epoch", 0)))


def log_evaluation(accelerator: Any, report: Any, step: int | None = None, *, prefix: str = "eval") -> None:
    """Log an evaluation (a report dict or an :class:`~sparring.evaluate.Evaluation`) to every active tracker.

    All trackers get the scalars at ``step``: ``eval/clean_accuracy``, ``eval/robust_accuracy`` (worst case),
    ``eval/after_attack/<attack>`` (robust accuracy after the cascade up to that attack),
    ``eval/balanced/{clean,robust}``, ``eval/trustworthy`` and per class ``per_class/{clean,robust}/<class>``.
    Then each tracker in its own way:

    - TensorBoard and MLflow: the ε-curve as scalars ``eps_curve/robust_accuracy`` and ``eps_curve/eps`` whose
      step is the index of the radius;
    - TensorBoard: Markdown tables (``add_text``) and figures (``add_figure``) of the per-class accuracy and the
      ε-curve;
    - MLflow: JSON tables (``eval/per_class.json``, ``eval/eps_curve.json``, columns/data) and PNG figures;
    - W&B: ``wandb.Table`` objects and a line plot of the ε-curve.
    """
    names = active(accelerator)
    if not names:
        return
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    per_class = [row for row in report.get("per_class") or [] if isinstance(row, Mapping)]
    curve = [p for p in report.get("eps_curve") or [] if isinstance(p, Mapping) and _is_number(p.get("eps"))]
    accelerator.log(evaluation_scalars(report, prefix=prefix), step=step)
    for i, point in enumerate(curve):
        values = {"eps_curve/eps": float(point["eps"])}
        if _is_number(point.get("robust_accuracy")):
            values["eps_curve/robust_accuracy"] = float(point["robust_accuracy"])
        for tracker in accelerator.trackers:
            if tracker.name in _SCALAR_TRACKERS:
                tracker.log(values, step=i)
    class_table = _table(per_class, ("class", "name", "n", "clean_accuracy", "robust_accuracy", "train_count"))
    curve_table = _table(curve, ("eps", "robust_accuracy"))
    figures = _figures(report)
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "tensorboard":
                _tensorboard(tracker.tracker, prefix, class_table, curve_table, figures, step)
            elif tracker.name == "mlflow":
                _mlflow(prefix, class_table, curve_table, figures)
            elif tracker.name == "wandb":
                _wandb(tracker.tracker, prefix, class_table, curve_table, step)
        except Exception as err:  # a tracker's rich logging must never lose the run's report
            log.warning("could not log the evaluation tables to %s: %s", tracker.name, err)
    for fig in figures.values():
        fig.clear()


def finish(accelerator: Any) -> None:
    """Close every tracker (flush TensorBoard, end the MLflow / W&B run).

    Unlike ``accelerator.end_training()`` this leaves the ``torch.distributed`` process group alone, so a
    distributed evaluation can still follow; safe to call twice.
    """
    for tracker in list(getattr(accelerator, "trackers", [])):
        try:
            tracker.finish()
        except Exception as err:  # closing one tracker must not keep the others open
            log.warning("could not close the %s tracker: %s", tracker.name, err)
    if getattr(accelerator, "trackers", None):
        accelerator.trackers.clear()


# ------------------------------------------------------------------------------------------------ helpers


def flatten_config(config: Mapping[str, Any], parent: str = "") -> dict[str, bool | int | float | str]:
    """Nested config → ``{"train.lr": 0.1, ...}`` with scalar values (lists as JSON, None as ``"null"``)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{parent}.{key}" if parent else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is None:
            flat[name] = "null"
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def evaluation_scalars(report: Mapping[str, Any], *, prefix: str = "eval") -> dict[str, float]:
    """The scalar metrics of a report dict (headline, per attack, balanced, per class)."""
    values: dict[str, float] = {}
    if _is_number(report.get("clean_accuracy")):
        values[f"{prefix}/clean_accuracy"] = float(report["clean_accuracy"])
    for attack, acc in (report.get("robust_accuracy") or {}).items():
        if _is_number(acc):
            # not eval/robust_accuracy/<attack>: a file store cannot hold a metric and a folder of the same name
            key = f"{prefix}/robust_accuracy" if attack == "worst_case" else f"{prefix}/after_attack/{_safe(attack)}"
            values[key] = float(acc)
    for kind, acc in (report.get("balanced_accuracy") or {}).items():
        if _is_number(acc):
            values[f"{prefix}/balanced/{_safe(kind)}"] = float(acc)
    if isinstance(report.get("trustworthy"), bool):
        values[f"{prefix}/trustworthy"] = float(report["trustworthy"])
    for row in report.get("per_class") or []:
        for kind in ("clean", "robust"):
            acc = row.get(f"{kind}_accuracy") if isinstance(row, Mapping) else None
            if _is_number(acc):
                values[f"per_class/{kind}/{row.get('class')}"] = float(acc)
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _safe(name: Any) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w\-./ ]", "_", str(name))


def _epoch_key(key: str) -> str:
    for group in ("train", "val"):
        if key.startswith(group + "_"):
            return f"{group}/{key[len(group) + 1:]}"
    return key


def _table(rows: list[Mapping[str, Any]], columns: tuple[str, ...]) -> dict[str, list[Any]]:
    """Rows → ``{"columns": [...], "data": [[...], ...]}`` over the columns that some row has."""
    kept = [c for c in columns if any(c in row for row in rows)]
    return {"columns": kept, "data": [[row.get(c) for c in kept] for row in rows]}


def _markdown(table: dict[str, list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)

    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table["data"]]
    return "\n".join(lines)


def _figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's own ε-curve and per-class figures (matplotlib), those it can draw."""
    try:
        from sparring.report.plots import eps_curve_figure, per_class_figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return {}
    figures = {"eps_curve": eps_curve_figure(report), "per_class": per_class_figure(report)}
    return {name: fig for name, fig in figures.items() if fig is not None}


def _tensorboard(writer: Any, prefix: str, class_table: dict[str, list[Any]], curve_table: dict[str, list[Any]],
                 figures: dict[str, Any], step: int | None) -> None:
    if class_table["data"]:
        writer.add_text(f"{prefix}/per_class", _markdown(class_table), global_step=step)
    if curve_table["data"]:
        writer.add_text(f"{prefix}/eps_curve", _markdown(curve_table), global_step=step)
    for name, fig in figures.items():
        writer.add_figure(f"{prefix}/{name}", fig, global_step=step, close=False)
    writer.flush()


def _mlflow(prefix: str, class_table: dict[str, list[Any]], curve_table: dict[str, list[Any]],
            figures: dict[str, Any]) -> None:
    import mlflow

    if class_table["data"]:
        mlflow.log_dict(class_table, f"{prefix}/per_class.json")
    if curve_table["data"]:
        mlflow.log_dict(curve_table, f"{prefix}/eps_curve.json")
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{prefix}/{name}.png")


def _wandb(run: Any, prefix: str, class_table: dict[str, list[Any]], curve_table: dict[str, list[Any]],
           step: int | None) -> None:
    import wandb

    values: dict[str, Any] = {}
    if class_table["data"]:
        values[f"{prefix}/per_class"] = wandb.Table(columns=class_table["columns"], data=class_table["data"])
    if curve_table["data"] and "robust_accuracy" in curve_table["columns"]:
        curve = wandb.Table(columns=curve_table["columns"], data=curve_table["data"])
        values[f"{prefix}/eps_curve"] = wandb.plot.line(curve, "eps", "robust_accuracy",
                                                         title="robust accuracy vs ε")
    if values:
        run.log(values, step=step)


__all__ = [
    "TRACKERS", "check_trackers", "accelerator_kwargs", "start", "log_epoch", "log_evaluation", "finish",
    "flatten_config", "evaluation_scalars", "mlflow_uri", "tracker_dir", "active",
]
