"""Summarise the answers exported from rating pages: mean rating per condition, inter-rater agreement
(Krippendorff's α, ordinal) and, per attack, a TOST equivalence check against the clean / clean controls.

See :mod:`sparring.rating` for the method, the bounds and what the result does and does not show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparring.errors import DataError, RunFolderError
from sparring.rating.page import CONTROL, GENERATOR, SCALES
from sparring.rating.stats import krippendorff_alpha, welch_tost

SUMMARY_GENERATOR = "sparring-rate-summary"
ALPHA = 0.05
EQUIVALENT = "equivalent to clean (imperceptible)"
NOT_EQUIVALENT = "not shown equivalent"
REFERENCE = "reference (clean vs clean)"
CAVEAT = ("Each rating is treated as independent (raters and images are not modelled): a screening check on the "
          "collected ratings, not a substitute for a preregistered study.")


@dataclass(frozen=True)
class Answers:
    """One exported answer file: its page, rater, scale and ``(pair, condition, rating)`` triples."""

    path: Path
    page_id: str
    rater: str
    scale: int
    ratings: list[tuple[str, str, int]]

    @property
    def identity(self) -> str:
        """Who rated: the rater id, or the file's name when the rater left it empty."""
        return self.rater or f"({self.path.name})"


def default_delta(scale: int) -> float:
    """The default equivalence bound: half a point on a 5-point scale, the same share of the range on others
    (0.75 on a 7-point scale)."""
    return 0.5 * (scale - 1) / 4


def load_answers(path: Path) -> Answers:
    """Read and check one answer file exported by a rating page.

    Raises:
        DataError: not JSON, not written by a sparring rating page, or a field missing or out of range.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file (an answers file is JSON exported by a rating page)") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno}): pass the "
                        "answers exported by a rating page") from err
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        raise DataError(f'{path} is not an answers file of a sparring rating page (no "generator": "{GENERATOR}")')
    page_id, rater, scale, answers = (data.get(k) for k in ("page_id", "rater", "scale", "answers"))
    if not isinstance(page_id, str) or not page_id:
        raise DataError(f"{path}: page_id must be a non-empty string")
    if rater is None:
        rater = ""
    if not isinstance(rater, str):
        raise DataError(f"{path}: rater must be a string, got {type(rater).__name__}")
    if not _is_int(scale) or scale not in SCALES:
        raise DataError(f"{path}: scale must be 5 or 7, got {scale!r}")
    if not isinstance(answers, list):
        raise DataError(f"{path}: answers must be a list")
    ratings: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for k, answer in enumerate(answers):
        where = f"{path}: answers[{k}]"
        if not isinstance(answer, dict):
            raise DataError(f"{where} must be an object with pair, condition and rating")
        pair, condition, rating = answer.get("pair"), answer.get("condition"), answer.get("rating")
        if not isinstance(pair, str) or not pair or not isinstance(condition, str) or not condition:
            raise DataError(f"{where}: pair and condition must be non-empty strings")
        if rating is None:
            continue  # not rated
        if not _is_int(rating) or not 1 <= rating <= scale:
            raise DataError(f"{where}: rating must be a whole number from 1 to {scale}, got {rating!r}")
        if pair in seen:
            raise DataError(f"{where}: pair {pair} is rated twice")
        seen.add(pair)
        ratings.append((pair, condition, int(rating)))
    return Answers(path, page_id, rater.strip(), int(scale), ratings)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def summarize(paths: Sequence[Path], *, delta: float | None = None, alpha: float = ALPHA) -> dict[str, Any]:
    """The summary of answer files (JSON-ready): per condition n, mean ± sd and, for every condition but the
    controls, a Welch TOST of its ratings against the control ratings within ``±delta`` Likert points (default
    :func:`default_delta`) at ``alpha``; Krippendorff's α (ordinal) over pairs × raters.

    Raises:
        DataError: no file, a malformed file, files of different scales, the same rater on the same page twice,
            a pair whose condition differs between files, or no rating at all.
    """
    if not paths:
        raise DataError("name at least one answers file (JSON exported by a rating page)")
    files = [load_answers(p) for p in paths]
    scale = _one_scale(files)
    delta = default_delta(scale) if delta is None else float(delta)
    if not 0 < delta < scale - 1:
        raise DataError(f"--delta must be between 0 and {scale - 1} Likert points, got {delta:g}")
    if not 0 < alpha < 0.5:
        raise DataError(f"--alpha must be between 0 and 0.5, got {alpha:g}")
    _check_raters(files)
    by_condition: dict[str, list[int]] = {}
    raters_of: dict[str, set[str]] = {}
    units: dict[tuple[str, str], dict[str, int]] = {}
    conditions_of: dict[tuple[str, str], tuple[str, Path]] = {}
    for f in files:
        for pair, condition, rating in f.ratings:
            unit = (f.page_id, pair)
            known = conditions_of.setdefault(unit, (condition, f.path))
            if known[0] != condition:
                raise DataError(f"{f.path}: pair {pair} of page {f.page_id} is {condition!r}, but {known[0]!r} in "
                                f"{known[1]}: these answers do not come from the same page")
            by_condition.setdefault(condition, []).append(rating)
            raters_of.setdefault(condition, set()).add(f"{f.page_id}/{f.identity}")
            units.setdefault(unit, {})[f"{f.page_id}/{f.identity}"] = rating
    if not by_condition:
        raise DataError("the answers files hold no rating")
    control = by_condition.get(CONTROL, [])
    rows = []
    for condition in sorted(by_condition, key=lambda c: (c != CONTROL, c)):
        values = np.asarray(by_condition[condition], dtype=float)
        row: dict[str, Any] = {
            "condition": condition, "n_ratings": len(values), "n_raters": len(raters_of[condition]),
            "n_pairs": sum(1 for c, _ in conditions_of.values() if c == condition),
            "mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
        }
        if condition == CONTROL:
            row["equivalence"], row["verdict"] = None, REFERENCE
        elif len(control) < 2 or len(values) < 2:
            row["equivalence"] = None
            row["verdict"] = f"not tested: needs 2+ ratings here and of {CONTROL} pairs"
        else:
            test = welch_tost(values, control, delta, alpha)
            row["equivalence"] = test.as_dict()
            row["verdict"] = EQUIVALENT if test.equivalent else NOT_EQUIVALENT
        rows.append(row)
    pairable = sum(1 for by_rater in units.values() if len(by_rater) >= 2)
    agreement = krippendorff_alpha(units, level="ordinal", values=range(1, scale + 1))
    return {
        "generator": SUMMARY_GENERATOR,
        "scale": scale,
        "files": [str(f.path) for f in files],
        "pages": sorted({f.page_id for f in files}),
        "raters": len(files),
        "conditions": rows,
        "bounds": {"delta": delta, "alpha": alpha, "scale": scale, "statement": bounds_statement(delta, alpha, scale)},
        "agreement": {
            "krippendorff_alpha_ordinal": agreement, "pairs_rated_by_two_or_more": pairable, "raters": len(files),
            "note": None if agreement is not None else "undefined: needs pairs rated by two or more raters, with "
            "some variation in the ratings",
        },
        "caveat": CAVEAT,
    }


def bounds_statement(delta: float, alpha: float, scale: int) -> str:
    """The equivalence test and its bounds in words."""
    return (f"Equivalence: two one-sided Welch t-tests (TOST) at α = {alpha:g} of each attack's mean rating minus "
            f"the clean/clean control pairs' mean rating, within bounds ±{delta:g} on the 1-{scale} scale (the "
            f"{100 * (1 - 2 * alpha):g}% confidence interval of the difference must lie inside "
            f"[-{delta:g}, +{delta:g}]).")


def _one_scale(files: Sequence[Answers]) -> int:
    scales = {f.scale for f in files}
    if len(scales) > 1:
        listing = ", ".join(f"{f.path.name}: {f.scale}" for f in files)
        raise DataError(f"the answers files use different scales ({listing}): summarise each scale on its own")
    return scales.pop()


def _check_raters(files: Sequence[Answers]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for f in files:
        key = (f.page_id, f.identity)
        if key in seen:
            raise DataError(f"{seen[key]} and {f.path} are both rater {f.identity!r} on page {f.page_id}: pass one "
                            "file per rater (the latest export)")
        seen[key] = f.path


def format_number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def summary_table(summary: dict[str, Any]) -> Any:
    """The summary as a rich table: one row per condition."""
    from rich.table import Table

    scale, bounds = summary["scale"], summary["bounds"]
    table = Table(title=f"Ratings: how different do the two images look? (1 = identical … {scale} = very different)")
    for name, justify in (("condition", "left"), ("ratings", "right"), ("raters", "right"), ("mean ± sd", "right"),
                          (f"Δ vs control [{100 * (1 - 2 * bounds['alpha']):g}% CI]", "right"), ("p (TOST)", "right"),
                          ("result", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in summary["conditions"]:
        test = row["equivalence"]
        sd = f" ± {format_number(row['sd'])}" if row["sd"] is not None else ""
        difference = "—"
        if test:
            difference = f"{test['difference']:+.2f}"
            if test["ci"]:
                difference += f" [{test['ci'][0]:+.2f}, {test['ci'][1]:+.2f}]"
        table.add_row(
            row["condition"], str(row["n_ratings"]), str(row["n_raters"]), f"{format_number(row['mean'])}{sd}",
            difference, _format_p(test["p"]) if test and test["p"] is not None else "—", row["verdict"],
        )
    return table


def _format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The lines printed under the table: the bounds, the agreement and the caveat."""
    agreement = summary["agreement"]
    alpha = agreement["krippendorff_alpha_ordinal"]
    said = (f"{alpha:.3f}" if alpha is not None else agreement["note"])
    return [
        summary["bounds"]["statement"],
        f"Inter-rater agreement: Krippendorff's α (ordinal) = {said} ({agreement['raters']} rater(s), "
        f"{agreement['pairs_rated_by_two_or_more']} pair(s) rated by two or more).",
        summary["caveat"],
    ]


def write_summary_json(summary: dict[str, Any], path: Path) -> None:
    """Write the summary as JSON; an existing file is replaced only if it is a summary sparring wrote."""
    from sparring.files import atomic_write_json

    path = Path(path)
    if path.exists() and not _is_summary(path):
        raise RunFolderError(f"{path} exists and is not a rating summary written by sparring; it is left alone: "
                             "remove it or choose another --json")
    atomic_write_json(path, summary, ensure_ascii=False)


def _is_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == SUMMARY_GENERATOR
