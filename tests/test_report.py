"""The report layer: report.json I/O, the HTML page, the comparison page and the terminal table."""

from __future__ import annotations

import io
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from sparring.errors import SparringError
from sparring.report import load_report, summary_table, write_comparison, write_html, write_json
from sparring.report.schema import format_eps, is_trustworthy, worst_case

DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def fake_report(**overrides: Any) -> dict[str, Any]:
    """A report.json per schema version 1."""
    report: dict[str, Any] = {
        "schema_version": 1,
        "sparring_version": "0.1.0",
        "created_at": "2026-11-21T22:50:00+00:00",
        "run_name": "pgd_at",
        "objective": "pgd_at",
        "objective_config": {"name": "pgd_at", "threat": {"norm": "linf", "eps": 0.2}, "attack": {"name": "pgd"}},
        "model": {"name": "small_cnn", "parameters": 56234},
        "data": {
            "name": "digits",
            "n_train": 1347,
            "n_eval": 450,
            "num_classes": 3,
            "class_names": ["zero", "one", "two"],
        },
        "threat": {"norm": "linf", "eps": 0.2, "bounds": [0.0, 1.0]},
        "clean_accuracy": 0.97,
        "robust_accuracy": {"fgsm": 0.61, "pgd": 0.523, "worst_case": 0.49},
        "balanced_accuracy": {"clean": 0.965, "robust": 0.48},
        "per_class": [
            {"class": k, "name": name, "n": 15, "clean_accuracy": 0.9 + 0.03 * k, "robust_accuracy": 0.4 + 0.1 * k}
            for k, name in enumerate(["zero", "one", "two"])
        ],
        "eps_curve": [{"eps": e, "robust_accuracy": 0.97 - 2 * e} for e in (0.0, 0.1, 0.2, 0.3)],
        "attacks": [
            {
                "name": "pgd",
                "settings": {"steps": 20, "restarts": 1, "loss": "ce"},
                "robust_accuracy": 0.523,
                "time_s": 1.3,
                "queries": 21,
            },
        ],
        "checks": [
            {"name": "eps_zero_matches_clean", "passed": True, "detail": "robust accuracy at eps=0 equals clean"},
            {"name": "large_eps_breaks_model", "passed": True, "detail": "robust accuracy at eps=1 is 0.000"},
        ],
        "trustworthy": True,
        "training": {
            "epochs": 3,
            "time_s": 50.0,
            "best_epoch": 2,
            "stopped_early": False,
            "events": [{"epoch": 2, "kind": "catastrophic_overfitting", "detail": "PGD accuracy collapsed"}],
        },
        "timing": {"eval_s": 12.3},
        "long_tail": {"some": "future key"},
    }
    report.update(overrides)
    return report


def make_run(run_dir: Path, *, metrics: bool = True, examples: bool = True, **overrides: Any) -> Path:
    """A run folder with report.json and, optionally, metrics.jsonl and examples.npz (1×8×8 images)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(fake_report(**overrides), run_dir / "report.json")
    if metrics:
        rows = [
            {
                "epoch": e,
                "step": 7 * e,
                "lr": 0.05,
                "train_loss": 2.0 / e,
                "train_accuracy": 0.5 + 0.1 * e,
                "val_clean_accuracy": 0.6 + 0.1 * e,
                "val_robust_accuracy": 0.2 + 0.1 * e,
                "time_s": 4.2,
            }
            for e in (1, 2, 3)
        ]
        lines = [json.dumps(row) for row in rows] + [json.dumps({"epoch": 2, "event": "catastrophic_overfitting"})]
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if examples:
        rng = np.random.default_rng(0)
        clean = rng.random((10, 1, 8, 8), dtype=np.float32)
        adv = np.clip(clean + rng.uniform(-0.2, 0.2, clean.shape), 0, 1).astype(np.float32)
        labels = np.arange(10) % 3
        np.savez(
            run_dir / "examples.npz", clean=clean, adv=adv, labels=labels, clean_pred=labels, adv_pred=(labels + 1) % 3
        )
    return run_dir


def without_images(html: str) -> str:
    return DATA_URI.sub("data:image/png;base64,", html)


def test_write_html_full_run(tmp_path: Path) -> None:
    out = write_html(make_run(tmp_path / "run"))
    assert out == tmp_path / "run" / "report.html"
    html = out.read_text(encoding="utf-8")
    text = without_images(html)
    for expected in (
        "pgd_at",
        "small_cnn",
        "digits",
        "L∞ ε = 0.2",
        "97.0%",
        "61.0%",
        "52.3%",
        "49.0%",
        "48.0%",
        "eps_zero_matches_clean",
        "steps=20",
        "catastrophic overfitting",
        "All 2 checks passed",
    ):
        assert expected in text, expected
    assert "not trustworthy" not in text
    images = DATA_URI.findall(html)
    assert len(images) == 4  # ε-curve, per class, training curves, example grid
    assert all(len(image) > 1000 for image in images)
    assert "http" not in text.lower()  # self-contained: no external URL
    assert "<script" not in text and "<link" not in text
    assert not list(tmp_path.glob("run/.*.tmp"))  # the atomic write cleaned up


def test_failed_check_makes_the_banner_red(tmp_path: Path) -> None:
    checks = [
        {"name": "eps_zero_matches_clean", "passed": True, "detail": "fine"},
        {"name": "blackbox_not_better", "passed": False, "detail": "Square beats APGD by 12 points"},
    ]
    run = make_run(tmp_path / "run", metrics=False, examples=False, checks=checks, trustworthy=False)
    text = without_images(write_html(run).read_text(encoding="utf-8"))
    assert "banner bad" in text
    assert "This number is not trustworthy" in text
    assert "blackbox_not_better: Square beats APGD by 12 points" in text
    assert "✗ FAIL" in text and "✓ pass" in text


def test_missing_optional_parts_still_render(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        metrics=False,
        examples=False,
        training=None,
        eps_curve=[],
        per_class=[],
        checks=[],
        attacks=[],
        balanced_accuracy=None,
        model=None,
        data=None,
    )
    html = write_html(run).read_text(encoding="utf-8")
    assert not DATA_URI.search(html)
    assert "Evaluation-only run" in html
    assert "No checks were run" in html
    assert "97.0%" in html and "49.0%" in html


def test_non_image_examples_and_bad_metrics_lines_are_skipped(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", examples=False)
    np.savez(run / "examples.npz", clean=np.zeros((4, 5)), adv=np.ones((4, 5)), labels=np.zeros(4))
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 4, "train_lo')  # a line cut short by a killed run
    html = write_html(run).read_text(encoding="utf-8")
    assert len(DATA_URI.findall(html)) == 3  # no example grid
    assert "1 malformed line(s) of metrics.jsonl were skipped" in html


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({"objective": "x"}), "missing required key(s) threat, clean_accuracy"),
        (json.dumps(fake_report(per_class={"0": 1.0})), "'per_class' must be a list"),
        (json.dumps(fake_report(clean_accuracy=True)), "'clean_accuracy' must be a number"),
    ],
)
def test_load_report_rejects_bad_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SparringError, match=re.escape(message)) as info:
        load_report(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_write_json_round_trips_atomically(tmp_path: Path) -> None:
    report = fake_report(clean_accuracy=np.float32(0.5), eps_curve=[{"eps": np.float64(0.1), "robust_accuracy": 0.3}])
    path = tmp_path / "sub" / "report.json"
    write_json(report, path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith('{\n  "schema_version": 1,')
    loaded = load_report(path)
    assert loaded["clean_accuracy"] == 0.5
    assert loaded["eps_curve"][0]["eps"] == 0.1
    assert load_report(tmp_path / "sub") == loaded  # a run folder works too
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_write_comparison_of_two_runs(tmp_path: Path) -> None:
    run_a = make_run(tmp_path / "runs" / "a", metrics=False, examples=False)
    worse = {"fgsm": 0.2, "pgd": 0.1, "worst_case": 0.05}
    run_b = make_run(
        tmp_path / "runs" / "b",
        metrics=False,
        examples=False,
        run_name="standard",
        objective="standard",
        robust_accuracy=worse,
        trustworthy=False,
        checks=[{"name": "gradients_finite", "passed": False, "detail": "NaN gradients"}],
    )
    write_html(run_a)
    out = write_comparison([run_a, run_b], tmp_path / "pages" / "compare.html")
    html = out.read_text(encoding="utf-8")
    text = without_images(html)
    assert 'href="../runs/a/report.html"' in text
    assert 'href="../runs/b/report.json"' in text  # b has no report.html yet
    for expected in ("pgd_at", "standard", "49.0%", "5.0%", "48.0%", "gradients_finite", "✗ no", "✓ yes"):
        assert expected in text, expected
    assert len(DATA_URI.findall(html)) == 1
    assert "http" not in text.lower()
    with pytest.raises(SparringError):
        write_comparison([], tmp_path / "empty.html")


def test_summary_table_renders() -> None:
    failed = {"name": "large_eps_breaks_model", "passed": False, "detail": "accuracy 0.40 at eps=1 [bold]"}
    report = fake_report(checks=[*fake_report()["checks"], failed], trustworthy=False)
    console = Console(record=True, width=120, color_system="truecolor", file=io.StringIO())
    console.print(summary_table(report))
    text = console.export_text(clear=False)
    for expected in (
        "97.0%",
        "robust after fgsm",
        "61.0%",
        "robust: worst case",
        "49.0%",
        "✓ eps_zero_matches_clean",
        "✗ large_eps_breaks_model",
        "accuracy 0.40 at eps=1 [bold]",
        "not trustworthy",
    ):
        assert expected in text, expected
    styled = console.export_text(styles=True)
    assert "\x1b[" in styled  # coloured


def test_derived_facts() -> None:
    assert worst_case(fake_report()) == 0.49
    assert worst_case(fake_report(robust_accuracy={"a": 0.3, "b": 0.2})) == 0.2  # no worst_case key: the minimum
    assert worst_case(fake_report(robust_accuracy={})) is None
    assert is_trustworthy(fake_report())
    assert not is_trustworthy(fake_report(trustworthy=False))
    assert not is_trustworthy(fake_report(trustworthy=None, checks=[{"name": "x", "passed": False}]))
    assert format_eps(8 / 255) == "0.03137 (8/255)"
    assert format_eps(0.2) == "0.2"


def test_templates_ship_with_the_package() -> None:
    templates = files("sparring.report") / "templates"
    for name in ("base.html", "report.html", "comparison.html"):
        assert (templates / name).is_file(), name
