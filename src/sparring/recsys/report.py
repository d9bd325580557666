"""Views of a recommender run's ``report.json`` (``"task": "recsys"``): the HTML page, its plots, a terminal table.

The page (``sparring/recsys/templates/recsys.html``, self-contained like the image path's) shows a headline
(Recall@20, NDCG@10, the worst post-attack target HR@k and its relative promotion), the ranking table and the
promotion table side by side, the mean target HR@K before and after each attack against K, and the training curves
(loss, cross-modal gradient cosine) from ``metrics.jsonl``. Registered as the ``recsys`` report view
(:data:`sparring.report.views.VIEWS`), which ``sparring report`` and ``sparring compare`` go through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, PercentFormatter
from rich.markup import escape
from rich.table import Table

import sparring.report.plots as plots
from sparring.errors import RunFolderError
from sparring.files import atomic_write_text
from sparring.report.html import HTML_FILE, METRICS_FILE, figure_png, format_seconds, read_metrics, render_template
from sparring.report.schema import REPORT_FILE, is_number
from sparring.report.views import VIEWS, View

BEFORE_COLOR = "0.25"
METHOD_COLORS = {"fgsm": "#3b6fb6", "pgd": "#d9662b"}
METHOD_STYLES = {"fgsm": ("-", "o"), "pgd": ("-.", "s")}  # distinguishable where the two coincide


# --------------------------------------------------------------------------- reading
def is_recsys_report(report: Any) -> bool:
    return isinstance(report, Mapping) and report.get("task") == "recsys"


def load_recsys_report(path: Path) -> dict[str, Any]:
    """Read a recommender run's ``report.json`` (or the one in a run folder); a RunFolderError if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path}: no such file; point at a recommender run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise RunFolderError(f"{path}: cannot be read as JSON ({err})") from None
    if not is_recsys_report(report):
        raise RunFolderError(f"{path}: not a recommender report (no \"task\": \"recsys\")")
    for key, kind in (("ranking", dict), ("promotion", list)):
        if not isinstance(report.get(key), kind):
            raise RunFolderError(f"{path}: {key!r} must be {'an object' if kind is dict else 'a list'}")
    return report


# --------------------------------------------------------------------------- derived numbers
def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if is_number(value) and math.isfinite(value) else "—"


def _pct(value: Any) -> str:
    return f"{value:+.1f}%" if is_number(value) else "—"


def _metric(ranking: Mapping[str, Any], name: str, k: int) -> tuple[str, Any]:
    """``name@k`` if reported, else ``name`` at the nearest reported K."""
    if f"{name}@{k}" in ranking:
        return f"{name}@{k}", ranking[f"{name}@{k}"]
    cuts = sorted(int(key.split("@")[1]) for key in ranking if key.startswith(f"{name}@"))
    if not cuts:
        return f"{name}@{k}", None
    near = min(cuts, key=lambda c: (abs(c - k), c))
    return f"{name}@{near}", ranking[f"{name}@{near}"]


def worst_promotion(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The promotion row with the highest mean post-attack HR@k (the attacker's best case)."""
    rows = [r for r in report.get("promotion") or [] if isinstance(r, dict)]
    scored = [(r["hr_after"].get(str(r.get("k"))), r) for r in rows if isinstance(r.get("hr_after"), dict)]
    scored = [(v, r) for v, r in scored if is_number(v)]
    if not scored:
        return None
    return max(scored, key=lambda pair: pair[0])[1]


def _headline(report: Mapping[str, Any]) -> list[dict[str, str]]:
    ranking = report.get("ranking") or {}
    recall_name, recall = _metric(ranking, "recall", 20)
    ndcg_name, ndcg = _metric(ranking, "ndcg", 10)
    items = [{"label": recall_name.replace("recall", "Recall"), "value": _fmt(recall), "kind": "clean"},
             {"label": ndcg_name.replace("ndcg", "NDCG"), "value": _fmt(ndcg), "kind": "clean"}]
    worst = worst_promotion(report)
    if worst is not None:
        k = str(worst.get("k"))
        where = f"{worst.get('method')} ε={worst.get('eps'):g}, {worst.get('kind', 'random')} targets"
        items.append({"label": f"worst post-attack target HR@{k} ({where})",
                      "value": _fmt(worst["hr_after"].get(k)), "kind": "robust"})
        items.append({"label": f"its relative promotion (clean HR@{k} {_fmt(worst['hr_before'].get(k))})",
                      "value": _pct(worst.get("relative_promotion")), "kind": "robust"})
    return items


def _ranking_rows(ranking: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns recall / ndcg / precision / map, one row per K."""
    names = ["recall", "ndcg", "precision", "map"]
    cuts = sorted({int(key.split("@")[1]) for key in ranking if "@" in key and key.split("@")[1].isdigit()})
    rows = [{"k": k, "values": [_fmt(ranking.get(f"{n}@{k}")) for n in names]} for k in cuts]
    return names, rows


def _promotion_rows(report: Mapping[str, Any]) -> list[dict[str, str]]:
    worst = worst_promotion(report)
    rows = []
    for r in report.get("promotion") or []:
        if not isinstance(r, dict):
            continue
        k = str(r.get("k"))
        before, after = (r.get(h) or {} for h in ("hr_before", "hr_after"))
        rows.append({
            "kind": str(r.get("kind", "random")), "method": str(r.get("method")),
            "eps": f"{r.get('eps'):g}" if is_number(r.get("eps")) else "—", "k": k,
            "before": _fmt(before.get(k)), "after": _fmt(after.get(k)), "gain": _fmt(r.get("hr_gain")),
            "relative": _pct(r.get("relative_promotion")), "rank": _fmt(r.get("mean_rank_change"), 1),
            "cosine": _fmt(r.get("cross_modal_cosine"), 3), "worst": r is worst,
            "note": str(r.get("note") or ""),
        })
    return rows


def _meta(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    objective = report.get("objective")
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    data = report.get("data") if isinstance(report.get("data"), dict) else {}
    params = model.get("parameters")
    meta = [
        ("objective", str(objective.get("name") if isinstance(objective, dict) else objective)),
        ("model", str(model.get("name", "?")) + (f" ({params:,} parameters)" if is_number(params) else "")),
        ("data", f"{data.get('name', '?')}, {data.get('users', '?')} users, {data.get('items', '?')} items, "
                 f"{data.get('train', '?')} train / {data.get('test', '?')} test interactions"),
    ]
    timing = report.get("timing") if isinstance(report.get("timing"), dict) else {}
    if is_number(timing.get("total_s")):
        meta.append(("run time", format_seconds(timing["total_s"])))
    for key in ("created_at", "sparring_version"):
        if report.get(key):
            meta.append((key.replace("_at", "").replace("_version", ""), str(report[key])))
    return meta


# --------------------------------------------------------------------------- plots
def promotion_figure(report: Mapping[str, Any]) -> Figure | None:
    """Mean target HR@K against K (log axis): the clean curve and one post-attack curve per method and ε,
    one panel per target kind."""
    rows = [r for r in report.get("promotion") or []
            if isinstance(r, dict) and isinstance(r.get("hr_before"), dict) and isinstance(r.get("hr_after"), dict)]
    if not rows:
        return None
    kinds = list(dict.fromkeys(str(r.get("kind", "random")) for r in rows))
    fig = Figure(figsize=(5.6 * len(kinds) + 0.4, 3.9))
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        mine = [r for r in rows if str(r.get("kind", "random")) == kind]
        ks, before = _hr_curve(mine[0]["hr_before"])
        ax.plot(ks, before, color=BEFORE_COLOR, linestyle="--", marker="o", markersize=4, label="before (clean)")
        eps_values = sorted({float(r["eps"]) for r in mine if is_number(r.get("eps"))})
        for r in mine:
            ks_a, after = _hr_curve(r["hr_after"])
            shade = _shade(float(r["eps"]) if is_number(r.get("eps")) else 0.0, eps_values)
            color = METHOD_COLORS.get(str(r.get("method")), "#6a3d9a")
            line, marker = METHOD_STYLES.get(str(r.get("method")), ("-", "o"))
            ax.plot(ks_a, after, color=color, alpha=shade, linestyle=line, marker=marker, markersize=3,
                    label=f"after {r.get('method')} ε={r.get('eps'):g}")
        ax.axvline(float(mine[0].get("k", ks[-1])), color="0.6", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(int(k)) for k in ks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.03)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("K")
        ax.set_ylabel("mean target HR@K over anchors")
        ax.set_title(f"{kind} targets", fontsize=10)
        plots.style_axes(ax)
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _hr_curve(hr: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    points = sorted((float(k), float(v)) for k, v in hr.items() if is_number(v) and str(k).isdigit())
    return [k for k, _ in points], [v for _, v in points]


def _shade(eps: float, values: Sequence[float]) -> float:
    """Opacity growing with ε (0.35 for the smallest, 1 for the largest)."""
    if len(values) < 2:
        return 1.0
    return 0.35 + 0.65 * (values.index(eps) / (len(values) - 1)) if eps in values else 1.0


def training_figure(metrics: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Per-epoch losses (loss, objective_loss, adv_bpr) and, for UAT-MC / APR, the cross-modal cosines.

    ``metrics.jsonl`` is the Trainer's (``train_loss``, ``train_objective_loss``, the objective's batch metrics as
    ``train_<name>``, its epoch-hook metrics unprefixed); the unprefixed names of older run folders are drawn too.
    """
    return plots.training_figure(metrics, panels=[
        ("loss", ("train_loss", "train_objective_loss", "train_adv_bpr", "loss", "objective_loss", "adv_bpr")),
        ("cross-modal cosine (visual vs text)",
         ("train_grad_cosine", "train_delta_cosine", "grad_cosine", "delta_cosine")),
    ])


# --------------------------------------------------------------------------- HTML
def render_recsys_report(
    report: Mapping[str, Any], *, metrics: Sequence[Mapping[str, Any]] = (), title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The HTML text of a recommender run's page."""
    names, ranking_rows = _ranking_rows(report.get("ranking") or {})
    training = report.get("training") if isinstance(report.get("training"), dict) else {}
    promotion = [r for r in report.get("promotion") or [] if isinstance(r, dict)]
    context = {
        "title": title or str(report.get("run_name") or "recommender run"),
        "meta": _meta(report),
        "headline": _headline(report),
        "ranking_names": names,
        "ranking_rows": ranking_rows,
        "users": _fmt(report.get("ranking", {}).get("users"), 0),
        "promotion_rows": _promotion_rows(report),
        "anchors": str(promotion[0].get("anchors", "—")) if promotion else "—",
        "training": [(k, str(v)) for k, v in (
            ("epochs", training.get("epochs")), ("final loss", _fmt(training.get("final_loss"))),
            ("lr", training.get("lr")), ("reg_weight", training.get("reg_weight")),
            ("training time", format_seconds(training.get("time_s"))),
        ) if v is not None],
        "objective_config": json.dumps(report.get("objective"), indent=2, ensure_ascii=False),
        "raw": json.dumps(report, indent=2, ensure_ascii=False, default=str),
        "notes": list(notes),
        "img": {
            "promotion": figure_png(promotion_figure(report)),
            "training": figure_png(training_figure(metrics)),
        },
    }
    return render_template("recsys.html", package="sparring.recsys", **context)


def write_recsys_html(run_dir: Path) -> Path:
    """Render ``run_dir/report.html`` from ``report.json`` and ``metrics.jsonl`` (if present); return its path."""
    run_dir = Path(run_dir)
    report = load_recsys_report(run_dir / REPORT_FILE)
    metrics, note = read_metrics(run_dir / METRICS_FILE)
    html = render_recsys_report(report, metrics=metrics, title=str(report.get("run_name") or run_dir.name),
                                notes=[note] if note else [])
    out = run_dir / HTML_FILE
    atomic_write_text(out, html)
    return out


# --------------------------------------------------------------------------- terminal
def summary_table(report: Mapping[str, Any]) -> Table:
    """Ranking quality, then each promotion attack's target HR@k before → after and relative promotion."""
    objective = report.get("objective")
    name = objective.get("name") if isinstance(objective, dict) else objective
    table = Table(title=escape(f"{report.get('run_name', 'run')} · {name} · ranking and promotion"),
                  title_justify="left", title_style="bold", caption_style="none")
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for row in _headline(report)[:2]:
        table.add_row(row["label"], row["value"], "[dim]test, full ranking[/]")
    rows = _promotion_rows(report)
    if rows:
        table.add_section()
        for r in rows:
            label = f"{r['method']} ε={r['eps']} ({r['kind']})"
            style = "[bold]{}[/]" if r["worst"] else "{}"
            table.add_row(escape(label), style.format(f"HR@{r['k']} {r['before']} → {r['after']}"),
                          f"relative promotion {r['relative']}" + (" [bold red](worst)[/]" if r["worst"] else ""))
    table.caption = f"[dim]{len(rows)} promotion attack(s); higher post-attack HR means a weaker defence[/]"
    table.caption_justify = "left"
    return table


def headline(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures ``sparring compare`` puts side by side: Recall@20, NDCG@20 (or the nearest reported K) and the
    worst post-attack target HR@k (None without promotion attacks)."""
    ranking = report.get("ranking") if isinstance(report.get("ranking"), Mapping) else {}
    recall_name, recall = _metric(ranking, "recall", 20)
    ndcg_name, ndcg = _metric(ranking, "ndcg", 20)
    worst = worst_promotion(report)
    hr = worst["hr_after"].get(str(worst.get("k"))) if worst is not None else None
    return {recall_name.replace("recall", "Recall"): recall if is_number(recall) else None,
            ndcg_name.replace("ndcg", "NDCG"): ndcg if is_number(ndcg) else None,
            "worst post-attack HR@k": hr if is_number(hr) else None}


RECSYS = VIEWS.register("recsys")(View(load=load_recsys_report, write_html=write_recsys_html,
                                       summary_table=summary_table, headline=headline))


__all__ = ["RECSYS", "headline", "is_recsys_report", "load_recsys_report", "promotion_figure",
           "render_recsys_report", "summary_table", "training_figure", "write_recsys_html"]
