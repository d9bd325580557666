"""One report header for every task, and a registry of the views that render each task's report.

Every ``report.json`` starts with the same header (:func:`header`): ``schema_version``, ``task``,
``sparring_version``, ``created_at``, ``run_name`` and ``threat`` (the threat model the evaluation measured, or
null); the task's own blocks sit beside it (classification: accuracies, ε-curve, checks; recsys: ranking and
promotion; language: ASR per attack, utility, over-refusal). A report without ``task`` (written before the header
existed) is a classification report.

:data:`VIEWS` maps a task to its :class:`View`: how to read, render (``report.html``), summarize (a terminal table)
and compare (headline figures) that task's reports. ``sparring report`` and ``sparring compare`` go through it, so a
domain brings its own view (its templates and figures live in its folder) and the CLI knows none.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from sparring.errors import RunFolderError
from sparring.files import atomic_write_text
from sparring.registry import Registry
from sparring.report.html import COMPARISON_MARKER, comparison_path, write_html
from sparring.report.schema import REPORT_FILE, SCHEMA_VERSION, is_number, load_report, worst_case
from sparring.report.terminal import summary_table
from sparring.version import __version__

#: The task a report without a ``task`` key belongs to.
DEFAULT_TASK = "classification"
#: Tasks whose reports are classifier reports (ε-curves, per-class accuracy): compared by threat model.
CLASSIFIER_TASKS = ("classification", "points")


def header(*, task: str, run_name: str, threat: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys every report.json starts with."""
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "sparring_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_name": run_name,
        "threat": dict(threat) if threat is not None else None,
    }


@dataclass(frozen=True)
class View:
    """How one task's reports are read, rendered, summarized and compared.

    Attributes:
        load: ``run_dir → report`` (checks the task's required keys; a RunFolderError line otherwise).
        write_html: ``run_dir → path of the report.html it (re)wrote``.
        summary_table: ``report → rich renderable`` for the terminal.
        headline: ``report → {figure: value}``, the numbers ``sparring compare`` puts side by side.
    """

    load: Callable[[Path], dict[str, Any]]
    write_html: Callable[[Path], Path]
    summary_table: Callable[[Mapping[str, Any]], Any]
    headline: Callable[[Mapping[str, Any]], dict[str, float | None]]


VIEWS: Registry[View] = Registry("report view")


def classification_headline(report: Mapping[str, Any]) -> dict[str, float | None]:
    return {"clean accuracy": report.get("clean_accuracy"), "robust accuracy": worst_case(report)}


CLASSIFICATION = View(load=load_report, write_html=write_html, summary_table=summary_table,
                      headline=classification_headline)
VIEWS.register("classification")(CLASSIFICATION)


def task_of_report(run_dir: Path) -> str:
    """The task of the report in ``run_dir`` (its ``task`` key; classification when absent or unreadable, so that
    the classification reader names the problem)."""
    try:
        raw = json.loads((Path(run_dir) / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_TASK
    task = raw.get("task", DEFAULT_TASK) if isinstance(raw, dict) else DEFAULT_TASK
    return task if isinstance(task, str) else DEFAULT_TASK


def view_of(run_dir: Path) -> View:
    """The view of the report in ``run_dir``; a RunFolderError line for a task no installed domain renders."""
    task = task_of_report(run_dir)
    if task not in VIEWS:
        raise RunFolderError(f"{Path(run_dir) / REPORT_FILE}: task {task!r} has no report view here "
                             f"(known: {', '.join(VIEWS.names())})")
    return VIEWS.get(task)


def compare_headlines(run_dirs: Sequence[Path], out: Path) -> tuple[Path, list[Table]]:
    """Compare runs of any task by their headline figures: one table per task (runs of different tasks are never
    ranked against each other), in the terminal and on one HTML page at ``out`` (a page sparring did not write is
    never overwritten). Returns the page and the tables."""
    if not run_dirs:
        raise RunFolderError("no run folders to compare")
    by_task: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for run_dir in run_dirs:
        view = view_of(run_dir)
        by_task.setdefault(task_of_report(run_dir), []).append((Path(run_dir), view.load(run_dir)))
    out = comparison_path(out)
    tables, sections = [], []
    for task, runs in by_task.items():
        rows = [(run_dir, VIEWS.get(task).headline(report)) for run_dir, report in runs]
        figures = list(dict.fromkeys(name for _, row in rows for name in row))
        table = Table(title=escape(f"{task} runs"), title_justify="left", title_style="bold")
        table.add_column("run")
        for name in figures:
            table.add_column(escape(name), justify="right")
        cells = "".join(f"<th>{html.escape(name)}</th>" for name in figures)
        body = []
        for run_dir, row in rows:
            values = [_figure(row.get(name)) for name in figures]
            table.add_row(escape(run_dir.name), *values)
            body.append(f"<tr><td>{html.escape(run_dir.name)}</td>"
                        + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
        tables.append(table)
        sections.append(f"<h2>{html.escape(task)}</h2><table><tr><th>run</th>{cells}</tr>{''.join(body)}</table>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'>{COMPARISON_MARKER}<title>Run comparison</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;text-align:right}"
            "td:first-child,th:first-child{text-align:left}</style></head><body><h1>Run comparison</h1>"
            + "".join(sections) + "</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out, tables


def _figure(value: Any) -> str:
    return f"{value:.4f}" if is_number(value) and math.isfinite(value) else "—"


__all__ = ["CLASSIFIER_TASKS", "DEFAULT_TASK", "VIEWS", "View", "classification_headline", "compare_headlines",
           "header", "task_of_report", "view_of"]
