"""The report's plots, drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no global state).

Each function takes plain report data and returns a figure, or ``None`` when there is nothing to draw;
:func:`to_base64_png` turns a figure into the string an ``<img src="data:image/png;base64,...">`` embeds.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from sparring.report.schema import is_number, norm_symbol, worst_case

CLEAN_COLOR = "#3b6fb6"
ROBUST_COLOR = "#d9662b"
EVENT_COLOR = "#c0392b"
NOT_FOOLED_COLOR = "#2e7d32"
MAX_EXAMPLES = 8
# keys of metrics.jsonl that are bookkeeping, not curves
_NOT_CURVES = frozenset({"epoch", "step", "lr", "time_s", "event"})


def to_base64_png(fig: Figure, *, dpi: int = 100) -> str:
    """Render ``fig`` to PNG and return it base64-encoded (ASCII); no software metadata is embedded."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def style_axes(ax: Axes) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _accuracy_axis(ax: Axes) -> None:
    ax.set_ylim(0, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _finish_eps_axes(fig: Figure, ax: Axes, norm_label: str) -> Figure:
    """Labels, accuracy axis, style and legend shared by the ε-curve plots."""
    ax.set_xlabel(f"ε ({norm_label})")
    ax.set_ylabel("robust accuracy")
    _accuracy_axis(ax)
    style_axes(ax)
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _float(value: Any) -> float:
    return float(value) if is_number(value) else math.nan


def _curve(report: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    points = [p for p in report.get("eps_curve") or [] if isinstance(p, dict) and is_number(p.get("eps"))]
    points.sort(key=lambda p: p["eps"])
    return [float(p["eps"]) for p in points], [_float(p.get("robust_accuracy")) for p in points]


def eps_curve_figure(report: Mapping[str, Any]) -> Figure | None:
    """Robust accuracy against ε, with clean accuracy and the evaluated ε marked."""
    eps, acc = _curve(report)
    if not eps:
        return None
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    ax.plot(eps, acc, marker="o", color=ROBUST_COLOR, label="robust accuracy")
    if is_number(report.get("clean_accuracy")):
        ax.axhline(report["clean_accuracy"], color=CLEAN_COLOR, linestyle="--", linewidth=1, label="clean accuracy")
    threat = report.get("threat") or {}
    evaluated, robust = threat.get("eps"), worst_case(report)
    if is_number(evaluated):
        ax.axvline(evaluated, color="0.35", linestyle=":", linewidth=1)
        if robust is not None:
            ax.plot(
                [evaluated],
                [robust],
                marker="*",
                markersize=14,
                color="black",
                linestyle="none",
                label=f"evaluated ε = {evaluated:g} (worst case)",
            )
    return _finish_eps_axes(fig, ax, norm_symbol(threat.get("norm", "?")))


def per_class_figure(report: Mapping[str, Any], *, max_labels: int = 40) -> Figure | None:
    """Clean and robust accuracy per class, as paired bars."""
    rows = [row for row in report.get("per_class") or [] if isinstance(row, dict)]
    if not rows:
        return None
    names = [str(row.get("name", row.get("class", i))) for i, row in enumerate(rows)]
    clean = [_float(row.get("clean_accuracy")) for row in rows]
    robust = [_float(row.get("robust_accuracy")) for row in rows]
    positions = np.arange(len(rows))
    fig = Figure(figsize=(min(16.0, max(6.4, 0.42 * len(rows) + 1.5)), 3.8))
    ax = fig.add_subplot()
    ax.bar(positions - 0.2, clean, width=0.4, color=CLEAN_COLOR, label="clean")
    ax.bar(positions + 0.2, robust, width=0.4, color=ROBUST_COLOR, label="robust")
    if len(rows) <= max_labels:
        ax.set_xticks(positions, names, rotation=0 if max(map(len, names)) * len(rows) <= 60 else 60, fontsize=8)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    _accuracy_axis(ax)
    style_axes(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _events(metrics: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    found: set[tuple[float, str]] = set()
    for event in events:
        if isinstance(event, dict) and is_number(event.get("epoch")):
            found.add((float(event["epoch"]), str(event.get("kind", "event"))))
    for row in metrics:
        if isinstance(row.get("event"), str) and is_number(row.get("epoch")):
            found.add((float(row["epoch"]), row["event"]))
    return sorted(found)


def training_figure(
    metrics: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]] = (),
    *,
    panels: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> Figure | None:
    """Training curves from ``metrics.jsonl`` rows: losses, accuracies, other ``val_*`` metrics, against epoch.

    ``events`` are the report's ``training.events`` (``{"epoch", "kind"}``); they and any ``"event"`` rows
    are drawn as vertical lines, red for catastrophic overfitting. ``panels`` (title, metric names) replaces the
    default grouping (a domain's own curves, e.g. a recommender's cross-modal cosines); absent names are skipped.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, row in enumerate(metrics):
        x = float(row["epoch"]) if is_number(row.get("epoch")) else float(index + 1)
        for key, value in row.items():
            if key in _NOT_CURVES or not is_number(value):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(x)
            ys.append(float(value))
    if panels is None:
        grouped: list[tuple[str, list[str]]] = [
            ("loss", [k for k in series if "loss" in k]),
            ("accuracy", [k for k in series if "acc" in k and "loss" not in k]),
        ]
        used = {k for _, keys in grouped for k in keys}
        grouped.append(("other validation metrics", [k for k in series if k.startswith("val_") and k not in used]))
    else:
        grouped = [(title, [k for k in keys if k in series]) for title, keys in panels]
    panels = [(title, keys) for title, keys in grouped if keys]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels) + 0.6, 3.6))
    marked = _events(metrics, events)
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key in keys:
            xs, ys = series[key]
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=key)
        for n, (epoch, kind) in enumerate(marked):
            overfit = "overfit" in kind
            ax.axvline(
                epoch,
                color=EVENT_COLOR if overfit else "0.5",
                linestyle="--",
                linewidth=1,
                label=kind.replace("_", " ") if i == 0 and kind not in {k for _, k in marked[:n]} else None,
            )
        if title == "accuracy":
            _accuracy_axis(ax)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        style_axes(ax)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _image(x: np.ndarray) -> np.ndarray:
    """(C,H,W) -> what imshow wants: (H,W) for one channel, (H,W,3) for three."""
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def examples_figure(examples: Mapping[str, np.ndarray], class_names: Sequence[str] = ()) -> Figure | None:
    """Clean, adversarial and amplified perturbation images, one column per example (up to 8).

    ``examples`` holds ``clean`` and ``adv`` (N,C,H,W) in [0, 1] with C of 1 or 3, and ``labels``,
    ``clean_pred``, ``adv_pred`` (N,). The perturbation is drawn centred at grey and scaled so the largest
    change over the shown examples reaches black or white; the factor is in the row label.
    """
    clean = np.asarray(examples["clean"], dtype=np.float32)[:MAX_EXAMPLES]
    adv = np.asarray(examples["adv"], dtype=np.float32)[:MAX_EXAMPLES]
    if clean.ndim != 4 or clean.shape != adv.shape or clean.shape[1] not in (1, 3) or len(clean) == 0:
        return None
    n = len(clean)
    labels = np.asarray(examples.get("labels", np.full(n, -1)))[:n]
    clean_pred = np.asarray(examples.get("clean_pred", np.full(n, -1)))[:n]
    adv_pred = np.asarray(examples.get("adv_pred", np.full(n, -1)))[:n]

    def name(k: Any) -> str:
        k = int(k)
        return str(class_names[k]) if 0 <= k < len(class_names) else str(k)

    delta = adv - clean
    peak = float(np.abs(delta).max())
    gain = 0.5 / peak if peak > 0 else 1.0
    rows = [
        ("clean", np.clip(clean, 0, 1)),
        ("adversarial", np.clip(adv, 0, 1)),
        (f"perturbation\n×{gain:.3g}", np.clip(0.5 + gain * delta, 0, 1)),
    ]
    # A fixed layout in inches (tight_layout over 24 axes is slow): images 1 inch wide, their height by aspect.
    side, gap, title = 1.0, 0.12, 0.42
    tall = side * min(2.0, max(0.25, clean.shape[2] / clean.shape[3]))
    width, height = 0.45 + n * side + (n - 1) * gap + 0.05, title + 3 * tall + 2 * title + 0.05
    fig = Figure(figsize=(width, height))
    grid = {
        "left": 0.45 / width,
        "right": 1 - 0.05 / width,
        "top": 1 - title / height,
        "bottom": 0.05 / height,
        "wspace": gap / side,
        "hspace": title / tall,
    }
    axes = fig.subplots(3, n, squeeze=False, gridspec_kw=grid)
    for r, (row_label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_image(images[c]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_label, fontsize=8)
            if r == 0:
                ok = clean_pred[c] == labels[c]
                ax.set_title(
                    f"true {name(labels[c])}\npred {name(clean_pred[c])}",
                    fontsize=8,
                    color="black" if ok else EVENT_COLOR,
                )
            elif r == 1:
                fooled = adv_pred[c] != labels[c]
                ax.set_title(f"pred {name(adv_pred[c])}", fontsize=8, color=EVENT_COLOR if fooled else NOT_FOOLED_COLOR)
    return fig


#: The perceptual metrics the report's box plot draws (those present), with their axis labels.
PERCEPTUAL_PANELS = {"l2": "L2 of the perturbation", "psnr": "PSNR (dB)", "ssim": "SSIM"}


def perceptual_figure(report: Mapping[str, Any]) -> Figure | None:
    """Box plots of L2, PSNR and SSIM per source of breaks, from report.json's ``perceptual.by_attack`` stats: the box
    spans p25–p75 with the median, the whiskers p10–p90, the dots are the min and max. ``None`` when no source broke
    a point (or the report has no perceptual block)."""
    block = report.get("perceptual")
    by_attack = block.get("by_attack") if isinstance(block, Mapping) else None
    if not isinstance(by_attack, Mapping):
        return None
    panels = []
    for metric, label in PERCEPTUAL_PANELS.items():
        boxes = []
        for attack, stats in by_attack.items():
            s = stats.get(metric) if isinstance(stats, Mapping) else None
            if not isinstance(s, Mapping) or not s.get("count") or not all(
                    is_number(s.get(k)) for k in ("median", "p10", "p90", "min", "max")):
                continue
            quartiles = is_number(s.get("p25")) and is_number(s.get("p75"))
            q1, q3 = (s["p25"], s["p75"]) if quartiles else (s["p10"], s["p90"])
            boxes.append({"label": f"{attack}\n(n={s['count']})", "med": s["median"], "q1": q1, "q3": q3,
                          "whislo": s["p10"], "whishi": s["p90"], "fliers": [s["min"], s["max"]]})
        if boxes:
            panels.append((label, boxes))
    if not panels:
        return None
    width = max(2.6, 0.9 * max(len(boxes) for _, boxes in panels) + 1.2)
    fig = Figure(figsize=(width * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, boxes) in zip(axes, panels, strict=True):
        ax.bxp(boxes, showfliers=True, widths=0.5, patch_artist=True,
               boxprops={"facecolor": ROBUST_COLOR, "alpha": 0.45}, medianprops={"color": "black"},
               flierprops={"marker": "o", "markersize": 3, "markerfacecolor": "black"})
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
        style_axes(ax)
    fig.tight_layout()
    return fig


def class_namer(class_names: Sequence[str]) -> Any:
    def name(k: Any) -> str:
        k = int(k)
        return str(class_names[k]) if 0 <= k < len(class_names) else str(k)

    return name


def comparison_figure(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> Figure | None:
    """The ε-curves of several runs overlaid, each run's evaluated ε marked with a star.

    The runs must share a norm (group them by threat first, as ``compare_runs`` does): ε under different norms
    are different units and never share an axis. Raises ValueError otherwise.
    """
    drawn = [(label, report, *_curve(report)) for label, report in runs]
    drawn = [item for item in drawn if item[2]]
    if not drawn:
        return None
    norms = {norm_symbol((report.get("threat") or {}).get("norm", "?")) for _, report, _, _ in drawn}
    if len(norms) > 1:
        raise ValueError(f"comparison_figure: runs under norms {', '.join(sorted(norms))} cannot share axes")
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    for label, report, eps, acc in drawn:
        (line,) = ax.plot(eps, acc, marker="o", markersize=4, label=label)
        evaluated, robust = (report.get("threat") or {}).get("eps"), worst_case(report)
        if is_number(evaluated) and robust is not None:
            ax.plot([evaluated], [robust], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    return _finish_eps_axes(fig, ax, ", ".join(sorted(norms)))
