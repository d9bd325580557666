"""Long-tail metrics in every training report: per-class train counts, head / medium / tail, HTML and terminal."""

from __future__ import annotations

import json

import pytest

from sparring.config import parse_config
from sparring.evaluate import long_tail_summary
from sparring.experiment import run_experiment
from sparring.report import load_report
from sparring.report.terminal import summary_table


def rows(clean: list[float], robust: list[float]) -> list[dict]:
    return [{"class": c, "n": 10, "clean_accuracy": a, "robust_accuracy": r}
            for c, (a, r) in enumerate(zip(clean, robust, strict=True))]


def test_groups_by_training_frequency_rank() -> None:
    counts = [5, 100, 50, 20, 10, 80, 2, 40, 30, 60]  # unsorted on purpose
    per_class = rows([c / 100 for c in counts], [c / 200 for c in counts])
    summary = long_tail_summary(per_class, counts)
    assert summary["head"]["classes"] == [1, 5, 9] and summary["tail"]["classes"] == [4, 0, 6]
    assert summary["medium"]["classes"] == [2, 7, 8, 3]
    assert summary["tail"]["train_samples"] == 17 and summary["imbalance_ratio"] == 50
    assert summary["tail"]["clean"] == pytest.approx((0.1 + 0.05 + 0.02) / 3)
    assert summary["head"]["robust"] == pytest.approx((0.5 + 0.4 + 0.3) / 3)


def test_no_groups_without_a_long_tail() -> None:
    assert long_tail_summary(rows([1.0] * 4, [0.5] * 4), [10] * 4) is None
    assert long_tail_summary(rows([1.0] * 4, [0.5] * 4), [137, 130, 126, 131]) is None  # digits' natural spread
    assert long_tail_summary(rows([1.0] * 4, [0.5] * 4), [20, 15, 12, 10]) is not None
    assert long_tail_summary(rows([1.0] * 4, [0.5] * 4), None) is None
    assert long_tail_summary(rows([1.0] * 4, [0.5] * 4), [10, 5]) is None


def test_long_tailed_run_reports_groups(tmp_path, single_thread) -> None:
    config = parse_config({
        "seed": 1,
        "data": {"source": "digits", "long_tail": {"imbalance_ratio": 10}},
        "model": {"name": "mlp", "hidden": [32]},
        "objective": {"name": "robustlt", "base": {"name": "pgd_at", "threat": {"eps": 0.1},
                                                   "attack": {"name": "pgd", "steps": 2, "keep_best": False,
                                                              "score": False}}},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "val_size": 64, "val_attack_steps": 2},
        "eval": {"attacks": ["fgsm"], "eps_curve": [0.0, 0.1], "max_samples": 120},
    })
    run_experiment(config, tmp_path / "run", progress=False)
    report = load_report(tmp_path / "run")
    counts = [row["train_count"] for row in report["per_class"]]
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1)
    tail = report["long_tail"]["tail"]
    assert tail["classes"] == [7, 8, 9] and 0.0 <= tail["robust"] <= tail["clean"] <= 1.0
    assert report["long_tail"]["tail80"]["classes"] == list(range(2, 10))  # RobustLT's tail beside ours
    shots = report["long_tail"]["shots"]
    assert shots["scale"] == pytest.approx(counts[0] / 500) and "s = n_max / 500" in shots["rule"]
    assert sorted(shots["many"]["classes"] + shots["medium"]["classes"] + shots["few"]["classes"]) == list(range(10))
    multipliers = report["objective_config"]["budget_multipliers"]
    assert multipliers[-1] > 1.0 > multipliers[0]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Long tail (imbalance ratio" in html and "tail classes robust" in html
    assert "tail, rarest 80% (RobustLT)" in html and "few-shot (&lt; " in html and "s = n_max / 500" in html
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics[-1]["robustlt_eps"]) == 10
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(summary_table(report))
    text = console.export_text()
    assert "tail robust" in text and "rarest 80% of classes" in text
