"""How a point-cloud run's report draws its adversarial examples: clean and adversarial clouds as 3-D scatter plots.

Registered in :data:`sparring.report.html.EXAMPLE_FIGURES` (``clouds``): any classifier report whose
``examples.npz`` holds floating (N, P, 3) arrays gets this figure, whatever its task says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from sparring.report.html import EXAMPLE_FIGURES, ExampleFigure
from sparring.report.plots import CLEAN_COLOR, EVENT_COLOR, NOT_FOOLED_COLOR, class_namer

MAX_CLOUD_EXAMPLES = 5
#: A point of an adversarial cloud counts as changed when it moved farther than this.
CLOUD_CHANGE_TOL = 1e-6


def is_point_clouds(array: np.ndarray) -> bool:
    """Whether ``array`` is laid out as a batch of xyz point clouds: floating (N,P,3)."""
    return array.ndim == 3 and array.shape[2] == 3 and np.issubdtype(array.dtype, np.floating)


def _cloud_problem(clean: np.ndarray, adv: np.ndarray) -> str | None:
    if clean.shape != adv.shape or clean.size == 0:
        return f"clean {clean.shape} / adv {adv.shape} are not matching (N,P,3) point clouds; no example plot."
    return None


def cloud_examples_figure(examples: Mapping[str, np.ndarray], class_names: Sequence[str] = ()) -> Figure | None:
    """Clean and adversarial point clouds as 3-D scatter plots, one column per example (up to 5).

    ``examples`` holds ``clean`` and ``adv`` (N,P,3) xyz, and ``labels``, ``clean_pred``, ``adv_pred`` (N,).
    Both rows of a column share the view and the axis limits. In the adversarial row the points that changed
    (moved farther than :data:`CLOUD_CHANGE_TOL`: perturbed, dropped as a duplicate of another point, or
    added) are drawn larger in red, the rest in grey; its title gives their count and largest displacement.
    Returns ``None`` unless ``clean`` and ``adv`` are non-empty (N,P,3) arrays of the same shape.
    """
    clean = np.asarray(examples["clean"])
    adv = np.asarray(examples["adv"])
    if clean.ndim != 3 or clean.shape != adv.shape or clean.shape[2] != 3 or clean.size == 0:
        return None
    clean = clean[:MAX_CLOUD_EXAMPLES].astype(np.float64)
    adv = adv[:MAX_CLOUD_EXAMPLES].astype(np.float64)
    n = len(clean)
    labels = np.asarray(examples.get("labels", np.full(n, -1)))[:n]
    clean_pred = np.asarray(examples.get("clean_pred", np.full(n, -1)))[:n]
    adv_pred = np.asarray(examples.get("adv_pred", np.full(n, -1)))[:n]
    name = class_namer(class_names)

    # A fixed layout in inches (tight_layout over 3-D axes is slow): square panels, titles above each.
    side, gap, title = 1.6, 0.1, 0.36
    width, height = 0.3 + n * side + (n - 1) * gap + 0.05, 2 * (title + side) + 0.05
    fig = Figure(figsize=(width, height))
    grid = {
        "left": 0.3 / width,
        "right": 1 - 0.05 / width,
        "top": 1 - title / height,
        "bottom": 0.05 / height,
        "wspace": gap / side,
        "hspace": title / side,
    }
    axes = fig.subplots(2, n, squeeze=False, subplot_kw={"projection": "3d"}, gridspec_kw=grid)
    fig.text(0.1 / width, 1 - (title + side / 2) / height, "clean", rotation=90, va="center", fontsize=8)
    fig.text(0.1 / width, (0.05 + side / 2) / height, "adversarial", rotation=90, va="center", fontsize=8)
    for c in range(n):
        finite = np.isfinite(clean[c]).all(axis=1) & np.isfinite(adv[c]).all(axis=1)
        shift = np.linalg.norm(np.where(finite[:, None], adv[c] - clean[c], 0.0), axis=1)
        changed = ~finite | (shift > CLOUD_CHANGE_TOL)
        both = np.concatenate([clean[c][finite], adv[c][finite]])
        lim = float(np.abs(both).max()) if both.size else 1.0
        lim = lim * 1.05 if lim > 0 else 1.0
        ok = clean_pred[c] == labels[c]
        fooled = adv_pred[c] != labels[c]
        peak = float(shift[changed & finite].max()) if (changed & finite).any() else 0.0
        panels = [
            (axes[0][c], f"true {name(labels[c])}\npred {name(clean_pred[c])}", "black" if ok else EVENT_COLOR),
            (
                axes[1][c],
                f"pred {name(adv_pred[c])}\n{int(changed.sum())} changed, max {peak:.2g}",
                EVENT_COLOR if fooled else NOT_FOOLED_COLOR,
            ),
        ]
        for r, (ax, text, color) in enumerate(panels):
            ax.view_init(elev=20, azim=-60)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_zlim(-lim, lim)
            ax.set_box_aspect((1, 1, 1), zoom=1.5)
            ax.set_axis_off()
            ax.set_title(text, fontsize=8, color=color, pad=0)
            if r == 0:
                points = clean[c]
                ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=1.5, c=CLEAN_COLOR, linewidths=0, label="clean")
                continue
            kept, moved = adv[c][~changed], adv[c][changed & finite]
            ax.scatter(kept[:, 0], kept[:, 1], kept[:, 2], s=1.5, c="0.55", linewidths=0, label="unchanged")
            if len(moved):
                ax.scatter(
                    moved[:, 0],
                    moved[:, 1],
                    moved[:, 2],
                    s=9,
                    c=EVENT_COLOR,
                    linewidths=0,
                    depthshade=False,
                    label="changed",
                )
    return fig


EXAMPLE_FIGURES.register("clouds")(ExampleFigure(
    accepts=is_point_clouds, problem=_cloud_problem, figure=cloud_examples_figure,
    title="clean and adversarial point clouds",
    caption="Top: clean point clouds with true label and prediction. Bottom: adversarial clouds with their "
            "prediction (red: fooled); points the attack moved, dropped or added are red and larger, with their "
            "count and largest displacement.",
))

__all__ = ["CLOUD_CHANGE_TOL", "MAX_CLOUD_EXAMPLES", "cloud_examples_figure", "is_point_clouds"]
