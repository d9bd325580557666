"""Comparing runs: their reports grouped by threat model, the view data behind the comparison page and tables.

Robust accuracies are only comparable under the same threat: a run evaluated at L∞ ε = 8/255 is not "better"
than one evaluated at L2 ε = 0.5. So runs are grouped by their threat key (:func:`threat_key`: the norm, ε
rounded to 9 significant digits, the box bounds, and any further scalar field of the threat such as a point
cloud's radius), and ranking (the best worst-case robust accuracy) happens only within a group. The HTML page
(:func:`sparring.report.html.write_comparison`) and the terminal tables
(:func:`sparring.report.terminal.comparison_table`) lay out the same :class:`ThreatGroup` objects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparring.errors import RunFolderError
from sparring.report.schema import (
    REPORT_FILE,
    attack_accuracies,
    failed_checks,
    format_threat,
    is_number,
    is_trustworthy,
    load_report,
    norm_symbol,
    worst_case,
)

# One column per class up to this many classes; beyond it, each run lists its LOWEST_CLASSES weakest classes.
MAX_CLASS_COLUMNS = 20
LOWEST_CLASSES = 5
_THREAT_FIELDS = ("norm", "eps", "bounds")


def _round(value: float) -> float:
    """A float rounded to 9 significant digits (so 8/255 written twice by different code paths still matches)."""
    return float(f"{value:.9g}") if math.isfinite(value) else value


def _key_value(value: Any) -> Any:
    """A hashable, rounded form of one threat field (numbers, lists of numbers, strings, null)."""
    if is_number(value):
        return _round(float(value))
    if isinstance(value, list | tuple):
        return tuple(_key_value(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _key_value(v)) for k, v in value.items()))
    return value if value is None or isinstance(value, str | bool) else str(value)


def threat_key(threat: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The identity of a threat model: (norm, ε, bounds, further fields), with ε and bounds rounded.

    Norm spellings are unified (``linf``, ``Linf`` and ``inf`` are one norm); a per-class ε (a list) is part of
    the key as a tuple; ``bounds`` ``null`` (no box) differs from ``[0, 1]``. Other scalar fields of the threat
    (a point cloud's ``radius``) are part of the key too.
    """
    threat = threat or {}
    extras = tuple(sorted((str(k), _key_value(v)) for k, v in threat.items() if k not in _THREAT_FIELDS))
    return (
        norm_symbol(threat.get("norm", "?")),
        _key_value(threat.get("eps")),
        _key_value(threat.get("bounds")),
        extras,
    )


def threat_heading(threat: Mapping[str, Any] | None) -> str:
    """A group's heading: :func:`format_threat` plus what else tells the group apart (no box, extra fields)."""
    text = format_threat(threat)
    if not threat:
        return text
    eps = threat.get("eps")
    if isinstance(eps, list) and eps and all(is_number(e) for e in eps):
        text += f" ({len(eps)} values, {min(eps):g} to {max(eps):g})"
    if threat.get("bounds") is None:
        text += ", no box"
    for name, value in threat.items():
        if name in _THREAT_FIELDS or isinstance(value, list | dict) or value is None:
            continue
        text += f", {name} = {value:g}" if is_number(value) else f", {name} = {value}"
    return text


@dataclass(frozen=True)
class ComparedRun:
    """One run of a comparison: its label, folder, report and the numbers the views show."""

    label: str
    run_dir: Path
    report: Mapping[str, Any]
    attacks: dict[str, float | None]  # attack label -> robust accuracy after it (cumulative, as in the report)
    per_class: dict[str, float | None]  # class key -> worst-case robust accuracy
    worst: float | None
    best: bool = False

    @property
    def trustworthy(self) -> bool:
        return is_trustworthy(self.report)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [str(c.get("name", "check")) for c in failed_checks(self.report)]

    @property
    def balanced_robust(self) -> Any:
        balanced = self.report.get("balanced_accuracy")
        return balanced.get("robust") if isinstance(balanced, dict) else None


@dataclass(frozen=True)
class ThreatGroup:
    """Runs evaluated under one threat model, in the order given; ``best`` is marked only among them."""

    threat: Mapping[str, Any]
    heading: str
    runs: list[ComparedRun]
    attacks: list[str]  # the union of attack labels over the group's runs, in first-seen order
    classes: list[tuple[str, str]] = field(default_factory=list)  # (class key, name), union in first-seen order

    @property
    def class_columns(self) -> bool:
        """One column per class (few classes) or, for many classes, each run's weakest classes."""
        return len(self.classes) <= MAX_CLASS_COLUMNS

    def lowest_classes(self, run: ComparedRun, n: int = LOWEST_CLASSES) -> list[tuple[str, float]]:
        """The ``n`` classes with the lowest robust accuracy of ``run``: (name, accuracy), weakest first."""
        names = dict(self.classes)
        scored = [(names.get(k, k), float(v)) for k, v in run.per_class.items() if is_number(v)]
        return sorted(scored, key=lambda item: item[1])[:n]


def _attack_accuracies(report: Mapping[str, Any]) -> dict[str, float | None]:
    """Attack label -> robust accuracy: ``robust_accuracy`` first, then any ``attacks[]`` row it lacks.

    Rows are taken generically by ``name`` (suite attacks, rows added for breaks found outside the suite).
    """
    found: dict[str, float | None] = {
        str(name): float(acc) if is_number(acc) else None for name, acc in attack_accuracies(report).items()
    }
    for row in report.get("attacks") or []:
        if isinstance(row, dict) and row.get("name") is not None and str(row["name"]) not in found:
            acc = row.get("robust_accuracy")
            found[str(row["name"])] = float(acc) if is_number(acc) else None
    return found


def _class_key(row: Mapping[str, Any]) -> str:
    return str(row.get("class", row.get("name", "?")))


def _per_class(report: Mapping[str, Any]) -> dict[str, float | None]:
    rows = [r for r in report.get("per_class") or [] if isinstance(r, dict)]
    return {_class_key(r): float(r["robust_accuracy"]) if is_number(r.get("robust_accuracy")) else None for r in rows}


def load_classification_report(run_dir: Path) -> dict[str, Any]:
    """A run folder's classification ``report.json``; a one-line RunFolderError for other kinds of report.

    Recommender (``"task": "recsys"``) and language (``"task": "language"``) reports have other schemas and
    other headline numbers, so they are refused by name rather than as a malformed classification report.
    """
    path = Path(run_dir) / REPORT_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = None  # load_report names the problem
    task = raw.get("task") if isinstance(raw, dict) else None
    if task not in (None, "classification"):
        raise RunFolderError(
            f"{path}: a {task} report; only classification runs can be compared (see `sparring report` for this one)"
        )
    return load_report(path)


def compare_runs(run_dirs: Sequence[Path]) -> list[ThreatGroup]:
    """Load the runs' reports and group them by threat model (groups in order of first appearance).

    A run folder may also be given as the path of its ``report.json``. Labels are the run names (the folder
    name when a duplicate). Within a group the best worst-case robust accuracy among the *trustworthy* runs
    is marked (ties all marked); a group of one run has no best.

    Raises:
        RunFolderError: if ``run_dirs`` is empty, or a ``report.json`` is missing, malformed, or not a
            classification report.
    """
    if not run_dirs:
        raise RunFolderError("nothing to compare: give at least one run folder")
    dirs = [Path(d).parent if Path(d).is_file() else Path(d) for d in run_dirs]
    reports = [load_classification_report(d) for d in dirs]
    labels = [str(r.get("run_name") or d.name) for r, d in zip(reports, dirs, strict=True)]
    labels = [
        f"{label} ({d.name})" if labels.count(label) > 1 else label for label, d in zip(labels, dirs, strict=True)
    ]
    members: dict[tuple[Any, ...], list[int]] = {}
    for i, report in enumerate(reports):
        members.setdefault(threat_key(report.get("threat")), []).append(i)
    groups = []
    for indices in members.values():
        worst = {i: worst_case(reports[i]) for i in indices}
        ranked = [worst[i] for i in indices if worst[i] is not None and is_trustworthy(reports[i])]
        best = max(ranked) if ranked and len(indices) > 1 else None
        runs = [
            ComparedRun(
                label=labels[i],
                run_dir=dirs[i],
                report=reports[i],
                attacks=_attack_accuracies(reports[i]),
                per_class=_per_class(reports[i]),
                worst=worst[i],
                best=best is not None and worst[i] == best and is_trustworthy(reports[i]),
            )
            for i in indices
        ]
        attacks = list(dict.fromkeys(name for run in runs for name in run.attacks))
        classes: dict[str, str] = {}
        for i in indices:
            for row in reports[i].get("per_class") or []:
                if isinstance(row, dict):
                    classes.setdefault(_class_key(row), str(row.get("name", _class_key(row))))
        threat = reports[indices[0]].get("threat") or {}
        groups.append(
            ThreatGroup(
                threat=threat, heading=threat_heading(threat), runs=runs, attacks=attacks, classes=list(classes.items())
            )
        )
    return groups
