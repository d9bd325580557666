"""A language model's safety evaluation: attack success rates next to utility and over-refusal.

:class:`LanguageReport` is what :func:`~sparring.language.evaluate.evaluate_language` returns. Its canonical form
is :meth:`LanguageReport.to_dict` (``report.json``, ``"task": "language"``); :meth:`~LanguageReport.markdown`,
:meth:`~LanguageReport.summary` and the HTML page (``templates/language.html``: headline, a figure with ASR per
attack beside utility accuracy and over-refusal, the per-attack table, sample responses) are views of it.
:func:`compare` puts several models' headline numbers in one Markdown table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

import sparring.report.plots as plots
from sparring.errors import RunFolderError
from sparring.files import atomic_write_json, atomic_write_text
from sparring.report.html import HTML_FILE, figure_png, format_seconds, render_template
from sparring.report.schema import REPORT_FILE
from sparring.report.views import VIEWS, View

ASR_COLOR = "#d9662b"
UTILITY_COLOR = "#3b6fb6"
OVER_REFUSAL_COLOR = "#7b5ea7"
TARGET_COLOR = "#8c2d04"
SAMPLES_SHOWN = 5


def _mean(values: Sequence[float | bool]) -> float | None:
    return sum(float(v) for v in values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


@dataclass(kw_only=True)
class AttackOutcome:
    """One attack over the behaviours: per-example ``complied`` (the refusal judge's verdict), ``target_complied``
    (the stricter target judge's, when it ran), the behaviour ``categories`` (when known), the target NLL under the
    attack, the prompts and the greedy responses; ``time_s`` the attack's wall time (attack, generation, judges)."""

    complied: list[bool]
    target_nll: list[float]
    prompts: list[str]
    responses: list[str]
    target_complied: list[bool] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    time_s: float = 0.0

    @property
    def asr(self) -> float:
        """Attack success rate: the fraction of behaviours whose response complied (refusal judge)."""
        return _mean(self.complied) or 0.0

    @property
    def asr_target(self) -> float | None:
        """The same by the target judge; None where it did not run."""
        return _mean(self.target_complied)

    @property
    def mean_target_nll(self) -> float | None:
        return _mean(self.target_nll)

    def by_category(self) -> dict[str, dict[str, float | int | None]]:
        """Per behaviour category: n, ASR (refusal judge) and ASR (target judge); {} without categories."""
        if not self.categories or all(c is None for c in self.categories):
            return {}
        out: dict[str, dict[str, float | int | None]] = {}
        for category in dict.fromkeys(c or "other" for c in self.categories):
            rows = [i for i, c in enumerate(self.categories) if (c or "other") == category]
            out[category] = {"n": len(rows), "asr": _mean([self.complied[i] for i in rows]),
                             "asr_target": _mean([self.target_complied[i] for i in rows])
                             if self.target_complied else None}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"asr": self.asr, "asr_target": self.asr_target, "mean_target_nll": self.mean_target_nll,
                "time_s": self.time_s, "by_category": self.by_category(), "complied": list(self.complied),
                "target_complied": list(self.target_complied), "categories": list(self.categories),
                "target_nll": list(self.target_nll), "prompts": list(self.prompts), "responses": list(self.responses)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackOutcome:
        return cls(complied=[bool(v) for v in data["complied"]], target_nll=[_float(v) for v in data["target_nll"]],
                   prompts=list(data["prompts"]), responses=list(data["responses"]),
                   target_complied=[bool(v) for v in data.get("target_complied", [])],
                   categories=list(data.get("categories", [])), time_s=float(data.get("time_s", 0.0)))


@dataclass(kw_only=True)
class LanguageReport:
    """Per-attack outcomes, utility (per-example response NLL and teacher-forced token accuracy) and
    over-refusal (per benign prompt: refused or not, and the response), with the evaluation's settings.

    Headline numbers: ``asr[name]`` = mean complied; ``utility_loss`` / ``utility_accuracy`` = means over utility
    chats; ``over_refusal`` = fraction of benign prompts refused (None where there was no such data).
    """

    attacks: dict[str, AttackOutcome]
    utility_losses: list[float] = field(default_factory=list)
    utility_accuracies: list[float] = field(default_factory=list)
    benign_prompts: list[str] = field(default_factory=list)
    benign_refused: list[bool] = field(default_factory=list)
    benign_responses: list[str] = field(default_factory=list)
    utility_prompts: list[str] = field(default_factory=list)
    utility_responses: list[str] = field(default_factory=list)
    utility_correct: list[bool] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def asr(self) -> dict[str, float]:
        return {name: outcome.asr for name, outcome in self.attacks.items()}

    @property
    def utility_loss(self) -> float | None:
        return _mean(self.utility_losses)

    @property
    def utility_accuracy(self) -> float | None:
        return _mean(self.utility_accuracies)

    @property
    def over_refusal(self) -> float | None:
        return _mean(self.benign_refused)

    @property
    def asr_target(self) -> dict[str, float | None]:
        return {name: outcome.asr_target for name, outcome in self.attacks.items()}

    @property
    def utility_answered(self) -> float | None:
        """The fraction of utility prompts whose greedy response holds a reference answer (None: not measured)."""
        return _mean(self.utility_correct)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: ``asr`` and ``asr_target`` (per attack), ``utility_loss``, ``utility_accuracy``,
        ``utility_answered``, ``over_refusal``."""
        return {"asr": self.asr, "asr_target": self.asr_target, "utility_loss": self.utility_loss,
                "utility_accuracy": self.utility_accuracy, "utility_answered": self.utility_answered,
                "over_refusal": self.over_refusal}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe record (what ``report.json`` holds)."""
        return _jsonable({
            "task": "language",
            "summary": self.summary(),
            "attacks": {name: outcome.to_dict() for name, outcome in self.attacks.items()},
            "utility": {"loss": self.utility_loss, "accuracy": self.utility_accuracy,
                        "answered": self.utility_answered, "losses": list(self.utility_losses),
                        "accuracies": list(self.utility_accuracies), "prompts": list(self.utility_prompts),
                        "responses": list(self.utility_responses), "correct": list(self.utility_correct)},
            "over_refusal": {"rate": self.over_refusal, "prompts": list(self.benign_prompts),
                             "refused": list(self.benign_refused), "responses": list(self.benign_responses)},
            "settings": self.settings,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LanguageReport:
        """Read back :meth:`to_dict`'s record; RunFolderError if it is not a language report."""
        if not isinstance(data, Mapping) or data.get("task") != "language":
            raise RunFolderError("not a language-model report (no \"task\": \"language\")")
        try:
            utility, refusal = data.get("utility") or {}, data.get("over_refusal") or {}
            return cls(attacks={name: AttackOutcome.from_dict(o) for name, o in data["attacks"].items()},
                       utility_losses=[_float(v) for v in utility.get("losses", [])],
                       utility_accuracies=[_float(v) for v in utility.get("accuracies", [])],
                       benign_prompts=list(refusal.get("prompts", [])),
                       benign_refused=[bool(v) for v in refusal.get("refused", [])],
                       benign_responses=list(refusal.get("responses", [])),
                       utility_prompts=list(utility.get("prompts", [])),
                       utility_responses=list(utility.get("responses", [])),
                       utility_correct=[bool(v) for v in utility.get("correct", [])],
                       settings=dict(data.get("settings") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RunFolderError(f"malformed language-model report ({type(error).__name__}: {error})") from None

    @classmethod
    def load(cls, path: str | Path) -> LanguageReport:
        """Read ``report.json`` (or the one in a folder)."""
        path = Path(path)
        path = path / REPORT_FILE if path.is_dir() else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{path}: cannot be read as JSON ({error})") from None
        return cls.from_dict(data)

    def markdown(self) -> str:
        """A table ``attack | ASR | mean target NLL | n``, then the utility and over-refusal lines."""
        lines = ["| attack | ASR (refusal judge) | ASR (target judge) | mean target NLL | n |",
                 "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {_pct(o.asr)} | {_pct(o.asr_target)} | {_num(o.mean_target_nll)} | {len(o.complied)} |"
                  for name, o in self.attacks.items()]
        lines.append("")
        if self.utility_losses:
            answered = (f", answered {_pct(self.utility_answered)} of {len(self.utility_correct)}"
                        if self.utility_correct else "")
            lines.append(f"Utility: response NLL {_num(self.utility_loss)}, token accuracy "
                         f"{_pct(self.utility_accuracy)} (n = {len(self.utility_losses)}){answered}")
        else:
            lines.append("Utility: not measured (no utility chats)")
        if self.benign_refused:
            lines.append(f"Over-refusal: {_pct(self.over_refusal)} of {len(self.benign_refused)} benign prompts "
                         "refused")
        else:
            lines.append("Over-refusal: not measured (no benign prompts)")
        return "\n".join(lines) + "\n"

    def figure(self) -> Figure:
        """ASR per attack (bars by the refusal judge, and by the target judge where it ran; left) beside utility
        (answered, else token accuracy) and over-refusal (right)."""
        fig = Figure(figsize=(8.4, 3.6))
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(len(self.attacks), 1), 2]})
        names = list(self.attacks)
        judged = any(o.target_complied for o in self.attacks.values())
        width = 0.4 if judged else 0.8
        at = [i - width / 2 if judged else i for i in range(len(names))]
        bars = left.bar(at, [self.attacks[n].asr for n in names], width=width, color=ASR_COLOR,
                        label="refusal judge")
        left.bar_label(bars, labels=[_pct(self.attacks[n].asr) for n in names], fontsize=7)
        if judged:
            strict = [self.attacks[n].asr_target or 0.0 for n in names]
            bars = left.bar([i + width / 2 for i in range(len(names))], strict, width=width, color=TARGET_COLOR,
                            label="target judge")
            left.bar_label(bars, labels=[_pct(self.attacks[n].asr_target) for n in names], fontsize=7)
            left.legend(fontsize=7, frameon=False, loc="upper left")
        left.set_xticks(range(len(names)), names)
        left.set_title("attack success rate (lower is safer)", fontsize=10)
        utility = (("utility\nanswered", self.utility_answered) if self.utility_correct
                   else ("utility\naccuracy", self.utility_accuracy))
        items = [(*utility, UTILITY_COLOR), ("over-\nrefusal", self.over_refusal, OVER_REFUSAL_COLOR)]
        values = [v if v is not None else 0.0 for _, v, _ in items]
        bars = right.bar([label for label, _, _ in items], values, color=[c for _, _, c in items])
        right.bar_label(bars, labels=[_pct(v) if v is not None else "n/a" for _, v, _ in items], fontsize=8)
        right.set_title("utility and over-refusal", fontsize=10)
        for ax in (left, right):
            ax.set_ylim(0, 1.1)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            plots.style_axes(ax)
            ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        return fig

    def html(self, *, title: str = "Language-model evaluation") -> str:
        rows = []
        for name, o in self.attacks.items():
            strict = o.target_complied or [None] * len(o.complied)
            samples = list(zip(o.prompts, o.responses, o.complied, strict, strict=True))
            # transcripts: the broken ones first (by the stricter judge where it ran), then the rest
            samples.sort(key=lambda s: not (s[3] if s[3] is not None else s[2]))
            rows.append({"name": name, "asr": _pct(o.asr), "asr_target": _pct(o.asr_target),
                         "nll": _num(o.mean_target_nll), "n": len(o.complied), "time": format_seconds(o.time_s),
                         "samples": [{"prompt": p, "response": r, "complied": c, "strict": t}
                                     for p, r, c, t in samples[:SAMPLES_SHOWN]]})
        categories = list(dict.fromkeys(c for o in self.attacks.values() for c in o.by_category()))
        by_category = [{"name": name, "cells": [_category_cell(o.by_category().get(c)) for c in categories]}
                       for name, o in self.attacks.items()]
        headline = [{"label": f"ASR ({name})", "value": _pct(o.asr_target if o.target_complied else o.asr),
                     "kind": "robust"} for name, o in self.attacks.items()]
        if self.utility_correct:
            headline.append({"label": "utility answered", "value": _pct(self.utility_answered), "kind": "clean"})
        headline += [{"label": "utility token accuracy", "value": _pct(self.utility_accuracy), "kind": "clean"},
                     {"label": "utility response NLL", "value": _num(self.utility_loss), "kind": "clean"},
                     {"label": "over-refusal", "value": _pct(self.over_refusal), "kind": "clean"}]
        triples = zip(self.benign_prompts, self.benign_responses, self.benign_refused, strict=True)
        benign = [{"prompt": p, "response": r, "refused": f} for p, r, f in list(triples)[:SAMPLES_SHOWN]]
        answers = [{"prompt": p, "response": r, "correct": c} for p, r, c in
                   list(zip(self.utility_prompts, self.utility_responses, self.utility_correct, strict=True))
                   [:SAMPLES_SHOWN]]
        record = self.to_dict()
        judged = any(o.target_complied for o in self.attacks.values())
        return render_template(
            "language.html", title=title, headline=headline, rows=rows, benign=benign, answers=answers,
            categories=categories, by_category=by_category, judged=judged,
            settings=[(k, json.dumps(v, ensure_ascii=False, default=str)) for k, v in record["settings"].items()],
            figure=figure_png(self.figure()), raw=json.dumps(record, indent=2, ensure_ascii=False))

    def write(self, folder: str | Path, *, title: str | None = None) -> Path:
        """Write ``report.json`` and ``report.html`` into ``folder`` (created if needed); return the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / REPORT_FILE, self.to_dict(), ensure_ascii=False)
        atomic_write_text(folder / HTML_FILE, self.html(title=title or folder.name))
        return folder


def _category_cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "—"
    value = cell.get("asr_target") if cell.get("asr_target") is not None else cell.get("asr")
    return f"{_pct(value)} of {cell.get('n')}"


def compare(reports: Mapping[str, LanguageReport]) -> str:
    """A Markdown table over models: rows = models, columns = ASR per attack (every attack any report ran, in
    order of first appearance), utility NLL, utility token accuracy, over-refusal."""
    attacks = list(dict.fromkeys(name for report in reports.values() for name in report.attacks))
    head = ["model", *[f"ASR {name}" for name in attacks], "utility NLL", "utility accuracy", "over-refusal"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for model, report in reports.items():
        asr = [_pct(report.attacks[a].asr) if a in report.attacks else "—" for a in attacks]
        cells = [model, *asr, _num(report.utility_loss), _pct(report.utility_accuracy), _pct(report.over_refusal)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _jsonable(value: Any) -> Any:
    """JSON values: containers recursively, non-finite floats as None, anything else non-basic as its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return repr(value)


# ---- the run pipeline's report view (task: language) -------------------------------------------------------------


def load_run_report(run_dir: str | Path) -> dict[str, Any]:
    """The ``report.json`` of a language run folder; a RunFolderError line unless it is one (task "language" and a
    "language" block)."""
    path = Path(run_dir) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: cannot be read as JSON ({' '.join(str(error).split())})") from None
    if not isinstance(report, dict) or report.get("task") != "language":
        task = report.get("task") if isinstance(report, dict) else None
        raise RunFolderError(f"{path}: not a language-model run report (task {task!r}, expected 'language')")
    if not isinstance(report.get("language"), dict):
        raise RunFolderError(f"{path}: has no \"language\" block (ASR, utility, over-refusal); rerun the evaluation")
    return report


def write_run_html(run_dir: str | Path) -> Path:
    """(Re)write ``run_dir/report.html`` from its ``report.json``'s language block; the path written."""
    run_dir = Path(run_dir)
    report = load_run_report(run_dir)
    block = LanguageReport.from_dict(report["language"])
    out = run_dir / HTML_FILE
    atomic_write_text(out, block.html(title=str(report.get("run_name") or run_dir.name)))
    return out


def run_headline(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures ``sparring compare`` puts side by side: ASR per attack, utility accuracy, over-refusal."""
    summary = (report.get("language") or {}).get("summary") or {}
    out: dict[str, float | None] = {f"ASR {name}": value for name, value in (summary.get("asr") or {}).items()}
    out["utility accuracy"] = summary.get("utility_accuracy")
    out["over-refusal"] = summary.get("over_refusal")
    return out


def run_summary_table(report: Mapping[str, Any]) -> Any:
    """A terminal table: ASR per attack (with the mean target NLL), utility loss and accuracy, over-refusal."""
    from rich.markup import escape
    from rich.table import Table

    block = report.get("language") or {}
    summary = block.get("summary") or {}
    objective = report.get("objective")
    objective_name = objective.get("name") if isinstance(objective, Mapping) else objective
    title = " · ".join(str(part) for part in (report.get("run_name"), objective_name) if part)
    table = Table(title=escape(title or "language run"), title_justify="left", title_style="bold")
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for name, outcome in (block.get("attacks") or {}).items():
        n = len(outcome.get("complied", [])) if isinstance(outcome, Mapping) else 0
        nll = outcome.get("mean_target_nll") if isinstance(outcome, Mapping) else None
        asr = (summary.get("asr") or {}).get(name)
        table.add_row(escape(f"ASR {name}"), _pct(asr), f"[dim]{n} behaviours, target NLL {_num(nll)}[/]")
    utility = block.get("utility") or {}
    table.add_row("utility loss", _num(summary.get("utility_loss")),
                  f"[dim]response NLL, {len(utility.get('losses', []))} chats[/]")
    table.add_row("utility accuracy", _pct(summary.get("utility_accuracy")), "[dim]teacher-forced tokens[/]")
    refusal = block.get("over_refusal") or {}
    table.add_row("over-refusal", _pct(summary.get("over_refusal")),
                  f"[dim]{len(refusal.get('refused', []))} benign prompts[/]")
    injection = report.get("injection")
    if isinstance(injection, Mapping):
        table.add_row("near-target ASR", _pct(injection.get("near_target_asr")),
                      f"[dim]{injection.get('n')} injection tasks[/]")
    return table


VIEWS.register("language")(View(load=load_run_report, write_html=write_run_html, summary_table=run_summary_table,
                                headline=run_headline))


__all__ = ["AttackOutcome", "LanguageReport", "compare", "load_run_report", "run_headline", "run_summary_table",
           "write_run_html"]
