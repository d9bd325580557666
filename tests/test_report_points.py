"""The report's point-cloud example figure: clean and adversarial clouds as 3-D scatter plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from test_report import DATA_URI, fake_report, make_run, without_images

from sparring.points.report import cloud_examples_figure
from sparring.report import write_html
from sparring.report.html import read_examples, render_report
from sparring.report.plots import EVENT_COLOR

N_POINTS = 64


def clouds(n: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` clouds of N_POINTS in the unit ball; the attack moved rows 0-2, dropped row 5 (now a copy of row 6)
    and added row 9 far away, in every cloud but the last, which it left unchanged."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(n, N_POINTS, 3))
    clean /= np.linalg.norm(clean, axis=-1, keepdims=True).max(axis=1, keepdims=True)
    adv = clean.copy()
    adv[:-1, :3] += 0.01
    adv[:-1, 5] = adv[:-1, 6]
    adv[:-1, 9] = [0.9, 0.0, 0.0]
    labels = np.arange(n) % 3
    return {
        "clean": clean.astype(np.float32),
        "adv": adv.astype(np.float32),
        "labels": labels,
        "clean_pred": labels,
        "adv_pred": (labels + 1) % 3,
    }


def changed_rows(examples: dict[str, np.ndarray], k: int) -> int:
    return int((np.linalg.norm(examples["adv"][k] - examples["clean"][k], axis=-1) > 1e-6).sum())


def test_cloud_figure_highlights_changed_points() -> None:
    examples = clouds()
    fig = cloud_examples_figure(examples, ["a", "b", "c"])
    assert fig is not None
    axes = fig.get_axes()
    assert len(axes) == 2 * 3
    assert all(ax.name == "3d" for ax in axes)
    top, bottom = axes[:3], axes[3:]
    red = to_rgba(EVENT_COLOR)
    for k, (clean_ax, adv_ax) in enumerate(zip(top, bottom, strict=True)):
        assert clean_ax.get_xlim() == adv_ax.get_xlim() and clean_ax.get_zlim() == adv_ax.get_zlim()
        assert (clean_ax.elev, clean_ax.azim) == (adv_ax.elev, adv_ax.azim)
        assert "true " in clean_ax.get_title() and "pred " in clean_ax.get_title()
        n_changed = changed_rows(examples, k)
        assert f"{n_changed} changed" in adv_ax.get_title()
        by_label = {c.get_label(): c for c in adv_ax.collections}
        if n_changed:
            highlight = by_label["changed"]
            assert len(highlight.get_offsets()) == n_changed == 5  # 3 moved, 1 dropped, 1 added
            assert tuple(highlight.get_facecolor()[0]) == pytest.approx(red)
            assert highlight.get_sizes()[0] > by_label["unchanged"].get_sizes()[0]
        else:
            assert "changed" not in by_label
        assert len(by_label["unchanged"].get_offsets()) == N_POINTS - n_changed
    assert bottom[0].get_title().startswith("pred b")  # fooled: named by class_names


@pytest.mark.parametrize(
    ("clean_shape", "adv_shape"),
    [((3, 64, 2), (3, 64, 2)), ((3, 64, 3), (3, 60, 3)), ((0, 64, 3), (0, 64, 3)), ((3, 192), (3, 192))],
)
def test_cloud_figure_refuses_bad_shapes(clean_shape: tuple[int, ...], adv_shape: tuple[int, ...]) -> None:
    examples = {"clean": np.zeros(clean_shape, np.float32), "adv": np.zeros(adv_shape, np.float32)}
    assert cloud_examples_figure(examples) is None


def test_report_of_a_point_cloud_run_shows_the_clouds(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", examples=False)
    np.savez(run / "examples.npz", **clouds(4))
    html = write_html(run).read_text(encoding="utf-8")
    images = DATA_URI.findall(html)
    assert len(images) == 4  # ε-curve, per class, training curves, the clouds
    assert all(len(image) > 1000 for image in images)
    text = without_images(html)
    assert 'alt="clean and adversarial point clouds"' in text
    assert "perturbation images" not in text
    assert "<img" in text.split('id="examples"')[1].split("</section>")[0]


def test_images_still_get_the_image_grid(tmp_path: Path) -> None:
    html = write_html(make_run(tmp_path / "run")).read_text(encoding="utf-8")
    assert len(DATA_URI.findall(html)) == 4
    assert 'alt="clean, adversarial and perturbation images"' in html
    assert "point clouds" not in without_images(html)


def test_read_examples_sorts_clouds_images_and_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "examples.npz"

    def read(clean: np.ndarray, adv: np.ndarray) -> tuple[bool, str | None]:
        np.savez(path, clean=clean, adv=adv, labels=np.zeros(len(clean), np.int64))
        arrays, note = read_examples(path)
        return arrays is not None, note

    cloud = clouds(2)
    assert read(cloud["clean"], cloud["adv"]) == (True, None)
    assert read(np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 1, 8, 8), np.float32)) == (True, None)
    ok, note = read(cloud["clean"], cloud["adv"][:, :10])
    assert not ok and note is not None and "(N,P,3) point clouds" in note
    ok, note = read(np.zeros((2, 2, 8, 8), np.float32), np.zeros((2, 2, 8, 8), np.float32))
    assert not ok and note is not None and "images" in note
    for other in (np.zeros((4, 5)), np.zeros(4), np.zeros((4, 7, 3), np.int64), np.zeros((4, 7, 16), np.float32)):
        assert read(other, other) == (False, None)  # tabular, 1-D, tokens, embeddings: no figure, no note


def test_render_report_picks_the_figure_by_layout() -> None:
    report = fake_report(eps_curve=[], per_class=[])
    html = render_report(report, examples=clouds(2))
    assert len(DATA_URI.findall(html)) == 1
    assert "point clouds" in without_images(html)
    tabular = {"clean": np.zeros((4, 5)), "adv": np.ones((4, 5))}
    assert not DATA_URI.search(render_report(report, examples=tabular))
