"""The HTML views: one run's ``report.html`` and a page comparing several runs.

Pages are self-contained (inline CSS, plots as base64 PNG, no external URL) so they can be mailed,
attached to a pull request or opened offline. The Python side builds plain view data; the jinja2
templates in ``templates/`` only lay it out. Optional inputs (``metrics.jsonl``, ``examples.npz``,
``training``, empty lists) leave a short note in place of their section instead of failing the page.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined, select_autoescape

import sparring.report.plots as plots
from sparring.errors import RunFolderError
from sparring.files import atomic_write_text
from sparring.registry import Registry
from sparring.report.compare import ComparedRun, ThreatGroup, compare_runs
from sparring.report.schema import (
    REPORT_FILE,
    attack_accuracies,
    failed_checks,
    format_accuracy,
    format_eps,
    format_threat,
    is_number,
    is_trustworthy,
    load_report,
    source_notes,
    worst_case,
)

HTML_FILE = "report.html"
METRICS_FILE = "metrics.jsonl"
EXAMPLES_FILE = "examples.npz"
COMPARISON_FILE = "comparison.html"
# In the head of every comparison page: what lets a later write recognise a page it may replace.
COMPARISON_MARKER = '<meta name="generator" content="sparring compare">'


@cache
def _environment(package: str | None = None) -> Environment:
    loader = PackageLoader("sparring.report", "templates")
    env = Environment(
        # a domain's own templates first (they extend the shared base.html)
        loader=loader if package is None else ChoiceLoader([PackageLoader(package, "templates"), loader]),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = format_accuracy
    return env


def render_template(template: str, *, package: str | None = None, **context: Any) -> str:
    """Render one of ``sparring/report/templates`` (shared by every domain's report page), or with ``package`` one
    of that package's ``templates/`` (a domain's page, which may extend the shared ones)."""
    return _environment(package).get_template(template).render(**context)


def figure_png(fig: Any) -> str | None:
    """A matplotlib Figure as base64 PNG for an ``<img>``; None stays None (a plot with nothing to show)."""
    return None if fig is None else plots.to_base64_png(fig)


def format_seconds(seconds: Any) -> str:
    """``12.3 s``, ``4.2 min`` or ``1.5 h``; ``—`` when absent."""
    if not is_number(seconds):
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- optional run-folder files ------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of ``metrics.jsonl`` and a note about skipped lines (``([], None)`` if the file is absent).

    Lines that are not JSON objects (say, a line cut short when a run was killed) are skipped, not fatal.
    """
    if not path.is_file():
        return [], None
    rows: list[dict[str, Any]] = []
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, (f"{bad} malformed line(s) of {path.name} were skipped." if bad else None)


@dataclass(frozen=True)
class ExampleFigure:
    """A layout of ``examples.npz`` the report draws: which ``clean`` arrays it ``accepts``, the ``problem`` with a
    (clean, adv) pair it accepts but cannot draw (None: none), the ``figure`` and its title and caption. Images are
    the core's; a domain registers its own (the point clouds' ``clouds``)."""

    accepts: Callable[[np.ndarray], bool]
    problem: Callable[[np.ndarray, np.ndarray], str | None]
    figure: Callable[[Mapping[str, np.ndarray], Sequence[str]], Any]
    title: str
    caption: str


EXAMPLE_FIGURES: Registry[ExampleFigure] = Registry("example figure")


def _image_problem(clean: np.ndarray, adv: np.ndarray) -> str | None:
    if clean.shape != adv.shape or clean.shape[1] not in (1, 3) or len(clean) == 0:
        return f"clean {clean.shape} / adv {adv.shape} are not (N,1|3,H,W) images; no example grid."
    return None


EXAMPLE_FIGURES.register("images")(ExampleFigure(
    accepts=lambda clean: clean.ndim == 4, problem=_image_problem, figure=plots.examples_figure,
    title="clean, adversarial and perturbation images",
    caption="Top: clean inputs with true label and prediction. Middle: adversarial inputs with their prediction "
            "(red: fooled). Bottom: the perturbation, amplified and centred at grey.",
))


def example_figure_for(clean: np.ndarray) -> ExampleFigure | None:
    """The registered figure that draws ``clean``'s layout (None: tabular rows, tokens, embeddings)."""
    return next((f for name in EXAMPLE_FIGURES.names() if (f := EXAMPLE_FIGURES.get(name)).accepts(clean)), None)


def read_examples(path: Path) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The arrays of ``examples.npz`` if a registered :class:`ExampleFigure` draws them, else ``None`` and the
    reason (if any): (N,1|3,H,W) images, floating (N,P,3) point clouds, ``clean`` and ``adv`` of the same shape.
    Other layouts (tabular rows, tokens, embeddings) give neither a figure nor a note.
    """
    if not path.is_file():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return None, f"{path.name} could not be read ({err}); no example grid."
    missing = [key for key in ("clean", "adv") if key not in arrays]
    if missing:
        return None, f"{path.name} lacks {', '.join(missing)}; no example grid."
    drawer = example_figure_for(arrays["clean"])
    if drawer is None:
        return None, None  # no figure for this layout, nothing wrong
    problem = drawer.problem(arrays["clean"], arrays["adv"])
    return (None, f"{path.name}: {problem}") if problem else (arrays, None)


def _examples(examples: Mapping[str, np.ndarray] | None,
              class_names: Sequence[str]) -> tuple[str | None, ExampleFigure | None]:
    """The example figure (base64 PNG or ``None``) and the entry that drew it."""
    if examples is None or "clean" not in examples or "adv" not in examples:
        return None, None
    drawer = example_figure_for(np.asarray(examples["clean"]))
    if drawer is None:
        return None, None
    return figure_png(drawer.figure(examples, class_names)), drawer


# -- one run -------------------------------------------------------------------------------------------


def _trust(report: Mapping[str, Any]) -> dict[str, Any]:
    checks = [c for c in report.get("checks", []) if isinstance(c, dict)]
    failed = failed_checks(report)
    if not is_trustworthy(report):
        reasons = [f"{c.get('name', 'check')}: {c.get('detail') or 'failed'}" for c in failed]
        return {
            "level": "bad",
            "title": "This number is not trustworthy",
            "reasons": reasons or ["the evaluation marked this report untrustworthy"],
        }
    if not checks:
        return {
            "level": "warn",
            "title": "No checks were run",
            "reasons": ["nothing verified that the attacks are not fooled by gradient masking"],
        }
    passed = sum(1 for c in checks if c.get("passed") is True)
    skipped = len(checks) - passed
    text = f"All {passed} checks passed" + (f" ({skipped} skipped)" if skipped else "")
    return {"level": "ok", "title": text + ": the robust accuracy is trustworthy", "reasons": []}


def _headline(report: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = [{"label": "clean", "value": format_accuracy(report.get("clean_accuracy")), "kind": "clean"}]
    notes = source_notes(report)
    rows += [
        {"label": f"robust after {name}" + (f" ({notes[name]})" if notes.get(name, "cascade") != "cascade" else ""),
         "value": format_accuracy(acc), "kind": "attack"}
        for name, acc in attack_accuracies(report).items()
    ]
    rows.append(
        {
            "label": "robust: worst case over attacks (per sample)",
            "value": format_accuracy(worst_case(report)),
            "kind": "worst",
        }
    )
    balanced = report.get("balanced_accuracy")
    if isinstance(balanced, dict):
        rows += [
            {"label": f"balanced {name}", "value": format_accuracy(acc), "kind": "balanced"}
            for name, acc in balanced.items()
        ]
    tail = (report.get("long_tail") or {}).get("tail") if isinstance(report.get("long_tail"), dict) else None
    if isinstance(tail, dict):
        rows += [
            {"label": f"tail classes {name}", "value": format_accuracy(tail.get(name)), "kind": "balanced"}
            for name in ("clean", "robust")
        ]
    tail80 = (report.get("long_tail") or {}).get("tail80") if isinstance(report.get("long_tail"), dict) else None
    if isinstance(tail80, dict):
        rows.append({"label": "tail classes robust, rarest 80% (RobustLT)",
                     "value": format_accuracy(tail80.get("robust")), "kind": "balanced"})
    return rows


def _long_tail(report: Mapping[str, Any]) -> dict[str, Any] | None:
    summary = report.get("long_tail")
    if not isinstance(summary, dict):
        return None
    rows = [
        {
            "group": group,
            "classes": ", ".join(str(c) for c in summary[group].get("classes", [])),
            "train": str(summary[group].get("train_samples", "—")),
            "clean": format_accuracy(summary[group].get("clean")),
            "robust": format_accuracy(summary[group].get("robust")),
        }
        for group in ("head", "medium", "tail")
        if isinstance(summary.get(group), dict)
    ]
    if not rows:
        return None
    ratio = summary.get("imbalance_ratio")
    return {"rows": rows, "ratio": f"{ratio:.3g}" if is_number(ratio) else "—", **_paper_groups(summary)}


def _paper_groups(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The papers' groups beside ours: RobustLT's rarest-80% tail and the many / medium / few-shot split."""

    def row(label: str, group: Any) -> dict[str, str]:
        return {
            "group": label,
            "classes": ", ".join(str(c) for c in group.get("classes", [])) or "none",
            "train": str(group.get("train_samples", "—")),
            "clean": format_accuracy(group.get("clean")),
            "robust": format_accuracy(group.get("robust")),
        }

    rows = []
    tail80 = summary.get("tail80")
    if isinstance(tail80, dict):
        rows.append(row(f"tail, rarest {100 * float(tail80.get('fraction', 0.8)):.0f}% (RobustLT)", tail80))
    shots = summary.get("shots")
    rule = ""
    if isinstance(shots, dict):
        many, few = shots.get("many_above"), shots.get("few_below")
        bounds = {
            "many": f"> {many:.4g}" if is_number(many) else "",
            "medium": f"{few:.4g} – {many:.4g}" if is_number(many) and is_number(few) else "",
            "few": f"< {few:.4g}" if is_number(few) else "",
        }
        rows += [row(f"{name}-shot ({bounds[name]} training examples)", shots[name])
                 for name in ("many", "medium", "few") if isinstance(shots.get(name), dict)]
        rule = str(shots.get("rule") or "")
    return {"paper_rows": rows, "shot_rule": rule}


def _meta(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta = [("objective", str(report.get("objective")))]
    model = report.get("model")
    if isinstance(model, dict):
        params = model.get("parameters")
        meta.append(("model", str(model.get("name", "?")) + (f" ({params:,} parameters)" if is_number(params) else "")))
    data = report.get("data")
    if isinstance(data, dict):
        parts = [str(data.get("name", "?"))]
        parts += [
            f"{data[k]:,} {label}"
            for k, label in (("n_train", "train"), ("n_eval", "eval"), ("num_classes", "classes"))
            if is_number(data.get(k))
        ]
        meta.append(("data", ", ".join(parts)))
    meta.append(("threat", format_threat(report.get("threat"))))
    timing = report.get("timing")
    if isinstance(timing, dict) and is_number(timing.get("eval_s")):
        meta.append(("evaluation time", format_seconds(timing["eval_s"])))
    if report.get("created_at"):
        meta.append(("created", str(report["created_at"])))
    if report.get("sparring_version"):
        meta.append(("sparring", str(report["sparring_version"])))
    return meta


def _checks(report: Mapping[str, Any]) -> list[dict[str, str]]:
    status = {True: "pass", False: "fail"}
    return [
        {
            "name": str(c.get("name", "?")),
            "status": status.get(c.get("passed"), "skip"),
            "detail": str(c.get("detail") or ""),
        }
        for c in report.get("checks", [])
        if isinstance(c, dict)
    ]


def _attacks(report: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for attack in report.get("attacks") or []:
        if not isinstance(attack, dict):
            continue
        settings = attack.get("settings")
        text = ", ".join(f"{k}={v}" for k, v in settings.items()) if isinstance(settings, dict) else str(settings or "")
        queries = attack.get("queries")
        attacked, broken = attack.get("attacked"), attack.get("broken")
        rows.append(
            {
                "name": str(attack.get("name", "?")) + (" (black-box)" if attack.get("black_box") else ""),
                "attacked": f"{attacked:,}" if is_number(attacked) else "—",
                "broken": f"{broken:,}" if is_number(broken) else "—",
                "settings": text,
                "robust": format_accuracy(attack.get("robust_accuracy")),
                "time": format_seconds(attack.get("time_s")),
                "queries": f"{queries:,}" if is_number(queries) else "—",
            }
        )
    return rows


def _per_class(report: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = [r for r in report.get("per_class", []) if isinstance(r, dict)]
    robust = [r.get("robust_accuracy") for r in rows if is_number(r.get("robust_accuracy"))]
    lowest = min(robust) if robust else None
    return [
        {
            "cls": str(r.get("class", "")),
            "name": str(r.get("name", r.get("class", ""))),
            "n": str(r.get("n", "—")),
            "train": str(r.get("train_count", "—")),
            "clean": format_accuracy(r.get("clean_accuracy")),
            "robust": format_accuracy(r.get("robust_accuracy")),
            "lowest": lowest is not None and r.get("robust_accuracy") == lowest,
        }
        for r in rows
    ]


def _training(report: Mapping[str, Any]) -> dict[str, Any] | None:
    training = report.get("training")
    if not isinstance(training, dict):
        return None
    items = [
        ("epochs", training.get("epochs")),
        ("training time", format_seconds(training.get("time_s"))),
        ("best epoch", training.get("best_epoch")),
        ("stopped early", training.get("stopped_early")),
    ]
    items = [(k, "yes" if v is True else "no" if v is False else str(v)) for k, v in items if v is not None]
    events = [
        {
            "epoch": str(e.get("epoch", "?")),
            "kind": str(e.get("kind", "?")).replace("_", " "),
            "detail": str(e.get("detail") or ""),
        }
        for e in training.get("events") or []
        if isinstance(e, dict)
    ]
    return {"items": items, "events": events}


#: How the report names the perceptual metrics of report.json's ``perceptual`` block.
PERCEPTUAL_LABELS = {"l0": "L0", "l1": "L1", "l2": "L2", "linf": "L∞", "psnr": "PSNR (dB)", "ssim": "SSIM",
                     "ms_ssim": "MS-SSIM", "lpips": "LPIPS"}


def _perceptual_number(metric: str, value: Any) -> str:
    if not is_number(value):
        return "—"
    if metric == "l0":
        return f"{value:.0f}"
    if metric == "psnr":
        return f"{value:.1f}"
    return f"{value:.3f}" if metric in ("ssim", "ms_ssim", "lpips") else f"{value:.3g}"


def _perceptual(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Perceptibility table: per source of breaks, median [p10–p90] of each metric (None: no such block)."""
    block = report.get("perceptual")
    if not isinstance(block, dict):
        return None
    by_attack = block.get("by_attack") if isinstance(block.get("by_attack"), dict) else {}
    metrics = [m for m in block.get("metrics") or [] if isinstance(m, str)]
    rows = []
    for attack, stats in by_attack.items():
        if not isinstance(stats, dict):
            continue
        found = [stats[m] if isinstance(stats.get(m), dict) else {} for m in metrics]
        n = max((int(f["count"]) for f in found if is_number(f.get("count"))), default=0)
        cells = [f"{_perceptual_number(m, f.get('median'))} [{_perceptual_number(m, f.get('p10'))}–"
                 f"{_perceptual_number(m, f.get('p90'))}]" if f.get("count") else "—"
                 for m, f in zip(metrics, found, strict=True)]
        rows.append({"attack": str(attack), "n": f"{n:,}", "cells": cells, "broke": n > 0})
    return {"metrics": [PERCEPTUAL_LABELS.get(m, m) for m in metrics], "rows": rows,
            "any": any(row["broke"] for row in rows), "notes": [str(n) for n in block.get("notes") or []]}


def _detection(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Detection section: per attack (non-adaptive, then the adaptive sweep) AUROC, TPR at 1% / 5% FPR and the
    detection-aware robust accuracy; the summary figures (None: no detector was evaluated)."""
    block = report.get("detection")
    if not isinstance(block, dict):
        return None

    def number(value: Any, digits: int = 3) -> str:
        return f"{value:.{digits}f}" if is_number(value) else "—"

    rows = []
    for kind, entries in (("non-adaptive", block.get("attacks")), ("adaptive", block.get("adaptive"))):
        for row in entries if isinstance(entries, list) else []:
            if not isinstance(row, dict):
                continue
            lam = row.get("lambda")
            rows.append({
                "kind": kind, "attack": str(row.get("name")), "lambda": f"{lam:g}" if is_number(lam) else "",
                "fooled": row.get("fooled"), "evaded": row.get("evaded"), "auroc": number(row.get("auroc")),
                "tpr1": number(row.get("tpr_at_1fpr")), "tpr5": number(row.get("tpr_at_5fpr")),
                "ra": format_accuracy(row.get("robust_accuracy_without_detector")),
                "det_ra": format_accuracy(row.get("detection_aware_robust_accuracy")),
            })
    detector = block.get("detector") if isinstance(block.get("detector"), dict) else {}
    return {
        "rows": rows, "adaptive_tested": bool(block.get("adaptive_tested")),
        "detector": ", ".join(f"{k} {v}" for k, v in detector.items() if k not in ("selected",) and v is not None),
        "clean_flagged": format_accuracy(block.get("clean_flagged")),
        "clean_unflagged": format_accuracy(block.get("clean_accuracy_unflagged")),
        "non_adaptive": format_accuracy(block.get("detection_aware_robust_accuracy_non_adaptive")),
        "adaptive": format_accuracy(block.get("detection_aware_robust_accuracy")),
        "without": format_accuracy(block.get("robust_accuracy_without_detector")),
    }


def render_report(
    report: Mapping[str, Any],
    *,
    metrics: Sequence[Mapping[str, Any]] = (),
    examples: Mapping[str, np.ndarray] | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The HTML text of one run's report (see :func:`write_html` for the file version)."""
    data = report.get("data") if isinstance(report.get("data"), dict) else {}
    class_names = [str(n) for n in data.get("class_names") or []]
    training = report.get("training") if isinstance(report.get("training"), dict) else {}
    threat = report.get("threat") or {}
    examples_img, drawer = _examples(examples, class_names)
    context = {
        "title": title or str(report.get("run_name") or report.get("objective")),
        "meta": _meta(report),
        "trust": _trust(report),
        "clean": format_accuracy(report.get("clean_accuracy")),
        "worst": format_accuracy(worst_case(report)),
        "threat": format_threat(threat),
        "eps": format_eps(threat.get("eps")),
        "headline": _headline(report),
        "checks": _checks(report),
        "attacks": _attacks(report),
        "suite": report.get("suite"),
        "per_class": _per_class(report),
        "long_tail": _long_tail(report),
        "training": _training(report),
        "perceptual": _perceptual(report),
        "detection": _detection(report),
        "objective_config": json.dumps(report.get("objective_config"), indent=2, ensure_ascii=False)
        if report.get("objective_config") is not None
        else None,
        "raw": json.dumps(report, indent=2, ensure_ascii=False, default=str),
        "notes": list(notes),
        "img": {
            "eps_curve": figure_png(plots.eps_curve_figure(report)),
            "per_class": figure_png(plots.per_class_figure(report)),
            "training": figure_png(plots.training_figure(metrics, training.get("events") or [])),
            "examples": examples_img,
            "perceptual": figure_png(plots.perceptual_figure(report)),
        },
        "examples_title": drawer.title if drawer else "",
        "examples_caption": drawer.caption if drawer else "",
    }
    return render_template("report.html", **context)


def write_html(run_dir: Path) -> Path:
    """Render ``run_dir/report.html`` from ``report.json`` and, if present, ``metrics.jsonl`` and
    ``examples.npz``; return its path.

    Raises:
        RunFolderError: if ``report.json`` is missing or malformed (see :func:`load_report`).
    """
    run_dir = Path(run_dir)
    report = load_report(run_dir / REPORT_FILE)
    metrics, metrics_note = read_metrics(run_dir / METRICS_FILE)
    examples, examples_note = read_examples(run_dir / EXAMPLES_FILE)
    notes = [n for n in (metrics_note, examples_note) if n]
    html = render_report(
        report, metrics=metrics, examples=examples, title=str(report.get("run_name") or run_dir.name), notes=notes
    )
    out = run_dir / HTML_FILE
    atomic_write_text(out, html)
    return out


# -- several runs ---------------------------------------------------------------------------------------


def _link(run_dir: Path, page_dir: Path) -> str:
    """Relative URL from the comparison page to the run's report.html (report.json if not rendered)."""
    target = run_dir / HTML_FILE
    if not target.is_file():
        target = run_dir / REPORT_FILE
    relative = os.path.relpath(target.resolve(), page_dir.resolve())
    return quote(Path(relative).as_posix())


def is_comparison_page(path: Path) -> bool:
    """Whether ``path`` is a comparison page sparring wrote (its head carries :data:`COMPARISON_MARKER`)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8192)
    except OSError:
        return False
    return COMPARISON_MARKER.encode() in head


def _class_cells(group: ThreatGroup, run: ComparedRun) -> list[dict[str, Any]]:
    """The per-class cells of one run: one per class of the group, the run's weakest marked."""
    scored = [v for v in run.per_class.values() if v is not None]
    lowest = min(scored) if scored else None
    return [
        {
            "value": format_accuracy(run.per_class.get(key)),
            "lowest": lowest is not None and run.per_class.get(key) == lowest,
        }
        for key, _ in group.classes
    ]


def _group_view(index: int, group: ThreatGroup, page_dir: Path) -> dict[str, Any]:
    rows = []
    for run in group.runs:
        model = run.report.get("model") if isinstance(run.report.get("model"), dict) else {}
        rows.append(
            {
                "label": run.label,
                "href": _link(run.run_dir, page_dir),
                "objective": str(run.report.get("objective")),
                "model": str(model.get("name", "—")),
                "clean": format_accuracy(run.report.get("clean_accuracy")),
                "attacks": [format_accuracy(run.attacks.get(name)) for name in group.attacks],
                "worst": format_accuracy(run.worst),
                "best": run.best,
                "balanced": format_accuracy(run.balanced_robust),
                "trustworthy": run.trustworthy,
                "failed": run.failed,
                "classes": _class_cells(group, run) if group.class_columns else [],
                "lowest": [f"{name}: {format_accuracy(acc)}" for name, acc in group.lowest_classes(run)],
            }
        )
    labelled = [(run.label, run.report) for run in group.runs]
    return {
        "id": f"threat-{index + 1}",
        "heading": group.heading,
        "attacks": group.attacks,
        "classes": [name for _, name in group.classes] if group.class_columns else [],
        "class_columns": group.class_columns,
        "has_classes": bool(group.classes),
        "ranked": len(group.runs) > 1,
        "rows": rows,
        "curves": figure_png(plots.comparison_figure(labelled)),
    }


def render_comparison(groups: Sequence[ThreatGroup], *, page_dir: Path, title: str = "Run comparison") -> str:
    """The HTML text of the comparison page for :func:`~sparring.report.compare.compare_runs`'s groups.

    ``page_dir`` is the folder the page will live in (the run links are relative to it).
    """
    return render_template(
        "comparison.html",
        title=title,
        n_runs=sum(len(group.runs) for group in groups),
        groups=[_group_view(i, group, Path(page_dir)) for i, group in enumerate(groups)],
    )


def comparison_path(out: Path) -> Path:
    """Where a comparison page goes: ``out`` (a folder gets ``comparison.html``); a RunFolderError if a file is
    there that sparring compare did not write (it is never overwritten)."""
    out = Path(out)
    if out.is_dir():
        out = out / COMPARISON_FILE
    if out.exists() and not (out.is_file() and is_comparison_page(out)):
        raise RunFolderError(
            f"{out} exists and is not a comparison page written by sparring; choose another output path or remove it"
        )
    return out


def write_comparison(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write one HTML page comparing runs, grouped by threat model; return its path.

    Runs evaluated under different threat models (norm, ε, box: see :func:`~sparring.report.compare.threat_key`)
    go to different sections and are never ranked against each other. Each section has a table (objective,
    model, clean, robust after each attack, worst case, balanced robust, trustworthy; the best trustworthy
    worst case in bold), robust accuracy per class, and the runs' ε-curves on shared axes. ``out`` is the
    page's path (or a folder, which gets ``comparison.html``). Links are relative, so the page keeps working
    when the folders move together.

    Raises:
        RunFolderError: if ``run_dirs`` is empty, a run's ``report.json`` is missing, malformed or not a
            classification report, or ``out`` exists and is not a comparison page written by sparring (a file
            sparring did not write is never overwritten).
    """
    groups = compare_runs(run_dirs)
    out = comparison_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_comparison(groups, page_dir=out.parent))
    return out
