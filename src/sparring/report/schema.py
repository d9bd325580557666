"""Reading and writing ``report.json``, the canonical record of a run, and the few facts every view derives.

The schema (version 1) is documented key by key in ``docs/report.md``. Readers are lenient: keys they do
not know are ignored, optional keys may be missing or ``null``. Only the keys every view needs are
required (:data:`REQUIRED_KEYS`), and :func:`load_report` checks them so the views never meet a half
report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sparring.errors import RunFolderError
from sparring.files import atomic_write_json

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"

# key -> (expected type(s), what it is called in an error message)
REQUIRED_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "objective": (str, "a string"),
    "threat": (dict, "an object"),
    "clean_accuracy": ((int, float), "a number"),
    "robust_accuracy": (dict, "an object"),
    "per_class": (list, "a list"),
    "eps_curve": (list, "a list"),
    "checks": (list, "a list"),
}


def load_report(path: Path) -> dict[str, Any]:
    """Read a ``report.json`` (or the one inside a run folder) and check its required keys.

    Raises:
        RunFolderError: (a :class:`~sparring.errors.SparringError`) if the file is missing, is not JSON, is
            not an object, or lacks a required key or gives it the wrong type.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: no such file; point at a run folder's report.json (written by `sparring eval`)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path}: not valid JSON ({err}); re-run the evaluation to rewrite it") from err
    except (UnicodeDecodeError, OSError) as err:
        raise RunFolderError(f"{path}: cannot be read ({err})") from err
    if not isinstance(report, dict):
        raise RunFolderError(f"{path}: the top level is {type(report).__name__}, not an object; not a sparring report")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    if missing:
        raise RunFolderError(f"{path}: missing required key(s) {', '.join(missing)}; not a sparring report")
    for key, (kind, described) in REQUIRED_KEYS.items():
        value = report[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RunFolderError(f"{path}: {key!r} must be {described}, got {type(value).__name__}")
    return report


def _to_builtin(value: Any) -> Any:
    """JSON fallback for numpy/torch scalars and arrays and paths."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(report: Mapping[str, Any], path: Path) -> None:
    """Write ``report`` as indented JSON, atomically (a reader never sees a half-written file).

    Floats are written as they are; numpy and torch scalars or arrays become numbers and lists.
    """
    atomic_write_json(path, report, ensure_ascii=False, default=_to_builtin)


# -- derived facts, shared by the HTML and terminal views ------------------------------------------------


def is_number(value: Any) -> bool:
    """True for finite-or-not ints and floats, False for bools, None and everything else."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def attack_accuracies(report: Mapping[str, Any]) -> dict[str, Any]:
    """Per-attack robust accuracy, without the ``worst_case`` entry."""
    return {name: acc for name, acc in report.get("robust_accuracy", {}).items() if name != "worst_case"}


#: How a report names the sources of breaks outside the suite (``attacks[].source``).
SOURCE_NOTES = {"eps_curve": "ε-curve attack at radii ≤ ε", "check_probes": "the checks' own attacks"}


def source_notes(report: Mapping[str, Any]) -> dict[str, str]:
    """Attack label → a short note on where its breaks come from: ``cascade`` for the suite's attacks, else what
    found them outside the suite (with the count when it broke something)."""
    notes: dict[str, str] = {}
    for row in report.get("attacks") or []:
        if not isinstance(row, dict) or "name" not in row:
            continue
        source = row.get("source", "suite")
        if source == "suite":
            notes[str(row["name"])] = "cascade"
        else:
            broken = row.get("broken")
            count = f": {broken} more broken" if is_number(broken) and broken else ": none more"
            notes[str(row["name"])] = SOURCE_NOTES.get(str(source), str(source)) + count
    return notes


def worst_case(report: Mapping[str, Any]) -> float | None:
    """The per-sample worst-case robust accuracy; the minimum over attacks if the report lacks it."""
    robust = report.get("robust_accuracy") or {}
    if is_number(robust.get("worst_case")):
        return float(robust["worst_case"])
    values = [float(v) for v in robust.values() if is_number(v)]
    return min(values) if values else None


def failed_checks(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checks whose ``passed`` is false (a ``null`` ``passed`` means skipped, not failed)."""
    return [check for check in report.get("checks", []) if isinstance(check, dict) and check.get("passed") is False]


def is_trustworthy(report: Mapping[str, Any]) -> bool:
    """The report's own ``trustworthy`` flag if present, else whether no check failed."""
    flag = report.get("trustworthy")
    if isinstance(flag, bool):
        return flag and not failed_checks(report)
    return not failed_checks(report)


def norm_symbol(norm: Any) -> str:
    """``"linf"`` -> ``"L∞"``, ``"l2"`` -> ``"L2"``; anything else unchanged."""
    text = str(norm)
    lowered = text.lower()
    if lowered in ("linf", "l_inf", "inf"):
        return "L∞"
    if len(lowered) == 2 and lowered[0] == "l" and lowered[1].isdigit():
        return "L" + lowered[1]
    return text


def format_eps(eps: Any) -> str:
    """ε as text: ``0.0314 (8/255)`` when it is a whole number of 255ths, else 4 significant digits."""
    if not is_number(eps):
        return "per-sample" if isinstance(eps, list | dict) else str(eps)
    eps = float(eps)
    if not math.isfinite(eps):
        return str(eps)
    text = f"{eps:.4g}"
    levels = eps * 255
    hundredths = eps * 100
    if 0 < levels < 255 and abs(levels - round(levels)) < 1e-6 and abs(hundredths - round(hundredths)) > 1e-9:
        text += f" ({round(levels)}/255)"
    return text


def format_threat(threat: Mapping[str, Any] | None) -> str:
    """One line: ``L∞ ε = 0.2``, with the box bounds if any."""
    if not threat:
        return "unknown threat model"
    text = f"{norm_symbol(threat.get('norm', '?'))} ε = {format_eps(threat.get('eps'))}"
    bounds = threat.get("bounds")
    if isinstance(bounds, list | tuple) and len(bounds) == 2 and all(is_number(b) for b in bounds):
        text += f", box [{bounds[0]:g}, {bounds[1]:g}]"
    return text


def format_accuracy(value: Any) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal; ``—`` when absent."""
    if not is_number(value):
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.1f}%"
