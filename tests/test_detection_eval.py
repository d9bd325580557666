"""Detection evaluation: the detector-aware gradient source, ``evaluate(..., detector=...)``, its check and report
section, and the YAML / CLI path (``eval.detector``, ``sparring eval --detector``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _eval_fixtures import digits_mlp, digits_points
from torch import Tensor, nn

from sparring.attacks import PGD
from sparring.data import load_data
from sparring.detectors import DetectorAware, evaluate_detection
from sparring.detectors.base import Detector
from sparring.detectors.evaluation import calibrated_detector, load_detector
from sparring.evaluate import evaluate
from sparring.losses import cross_entropy
from sparring.report.html import render_report
from sparring.threat import LinfBall


class SquaredNorm(Detector):
    """A stand-in detector: s(x) = ‖x‖², flagged above a fixed threshold."""

    name = "squared_norm"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def score(self, x: Tensor) -> Tensor:
        return x.detach().flatten(1).pow(2).sum(1)

    def soft_score(self, x: Tensor) -> Tensor:
        return x.flatten(1).pow(2).sum(1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}


def test_detector_aware_gradient_is_the_loss_gradient_minus_lambda_times_the_soft_score_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    plain = DetectorAware(SquaredNorm(1.0), 0.0)(model, x, cross_entropy, y)
    step = DetectorAware(SquaredNorm(1.0), 0.5)(model, x, cross_entropy, y)
    torch.testing.assert_close(step.grad, plain.grad - 0.5 * 2 * x)
    torch.testing.assert_close(step.loss, plain.loss - 0.5 * x.pow(2).sum(1))
    assert not model.weight.requires_grad or model.weight.grad is None


@pytest.fixture(scope="module")
def sae_setup() -> dict[str, Any]:
    model = digits_mlp()
    train, _ = load_data("digits")
    threat = LinfBall(eps=0.1)
    detector, record = calibrated_detector(
        "sae", model, layer="2", fit_x=train.x[200:], calib_x=train.x[:120], calib_y=train.y[:120], threat=threat,
        attack=PGD(steps=5), fit_steps=150, settings={"n_features": 64, "k": 8, "top_features": 8}, seed=0,
    )
    return {"model": model, "detector": detector, "record": record, "threat": threat}


def test_evaluate_with_a_detector_reports_each_attack_and_the_adaptive_sweep(sae_setup: dict[str, Any]) -> None:
    x, y = digits_points(48)
    evaluation = evaluate(
        sae_setup["model"], (x, y), sae_setup["threat"], suite=[PGD(steps=5)], eps_curve=[], batch_size=24,
        detector=sae_setup["detector"], detector_attack=PGD(steps=5), detector_lambdas=(0.0, 1.0, 10.0),
        progress=False,
    )
    det = evaluation.detection
    assert det is not None
    assert [row["name"] for row in det["attacks"]] == ["pgd"]
    at_eps = [row for row in det["adaptive"] if row["eps_fraction"] == 1.0]
    assert [row["lambda"] for row in at_eps] == [0.0, 1.0, 10.0]
    assert [(row["lambda"], row["eps_fraction"]) for row in det["adaptive"][3:]] == [
        (1.0, 0.25), (10.0, 0.25), (1.0, 0.5), (10.0, 0.5)]  # every λ > 0 at smaller radii too
    for row in det["attacks"] + det["adaptive"]:
        assert row["evaded"] <= row["fooled"] <= row["attacked"]
        assert row["detection_aware_robust_accuracy"] >= row["robust_accuracy_without_detector"]
        if row["fooled"]:
            assert 0.0 <= row["auroc"] <= 1.0
    # any break counts: the worst case over every attack and λ is at most each one's figure
    assert det["detection_aware_robust_accuracy"] <= det["detection_aware_robust_accuracy_non_adaptive"]
    assert det["detection_aware_robust_accuracy"] <= min(r["detection_aware_robust_accuracy"] for r in det["adaptive"])
    assert det["clean_accuracy"] == pytest.approx(evaluation.clean_accuracy)
    check = next(c for c in evaluation.checks if c["name"] == "detector_adaptive")
    assert check["passed"] is True and "λ" in check["detail"]
    report = json.loads(json.dumps(evaluation.to_dict(), default=float))
    html = render_report({**report, "run_name": "det"})
    assert 'id="detection"' in html and "adaptive" in html


def test_a_detector_tested_only_non_adaptively_fails_its_check(sae_setup: dict[str, Any]) -> None:
    x, y = digits_points(24)
    evaluation = evaluate(sae_setup["model"], (x, y), sae_setup["threat"], suite=[PGD(steps=3)], eps_curve=[],
                          detector=sae_setup["detector"], detector_lambdas=(), progress=False)
    check = next(c for c in evaluation.checks if c["name"] == "detector_adaptive")
    assert check["passed"] is False and "upper bound" in check["detail"]
    assert not evaluation.trustworthy
    assert evaluation.detection is not None and evaluation.detection["adaptive"] == []
    html = render_report({**json.loads(json.dumps(evaluation.to_dict(), default=float)), "run_name": "det"})
    assert "Tested only non-adaptively" in html


class SecondCoordinate(SquaredNorm):
    """A stand-in detector: s(x) = x₂."""

    def score(self, x: Tensor) -> Tensor:
        return x.detach()[:, 1]

    def soft_score(self, x: Tensor) -> Tensor:
        return x[:, 1]


def test_an_adaptive_attack_evades_a_detector_the_plain_attack_trips() -> None:
    """The class flips at 2x₁ + x₂ = 0 and the detector flags x₂ > 0.1: PGD raises both coordinates and is caught;
    with the detector term it raises x₁ and lowers x₂."""
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 1.0], [-2.0, -1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[-0.2, -0.25], [-0.3, -0.1], [-0.25, -0.2]])
    y = torch.ones(3, dtype=torch.long)  # class 1 while 2x₁ + x₂ < 0
    threat = LinfBall(eps=1.0, bounds=None)
    result = evaluate_detection(model, x, y, threat, SecondCoordinate(threshold=0.1),
                                attacks=[("pgd", PGD(steps=20, random_start=False))],
                                adaptive=PGD(steps=20, random_start=False), lambdas=(0.0, 5.0), radii=())
    plain, (_, aware) = result["attacks"][0], result["adaptive"]
    assert plain["fooled"] == 3 and plain["evaded"] == 0
    assert aware["fooled"] == 3 and aware["evaded"] == 3
    assert result["detection_aware_robust_accuracy_non_adaptive"] == 1.0
    assert result["detection_aware_robust_accuracy"] == 0.0


def test_yaml_detector_run_and_cli_eval_with_the_saved_detector(tmp_path: Path, monkeypatch, capsys) -> None:
    from test_cli import run_main

    config = {
        "seed": 0, "data": {"source": "digits"}, "model": {"name": "mlp", "hidden": [32]},
        "objective": {"name": "standard"}, "train": {"epochs": 2, "batch_size": 64},
        "eval": {"threat": {"norm": "linf", "eps": 0.1}, "attacks": [{"name": "pgd", "steps": 3}], "eps_curve": [],
                 "max_samples": 40,
                 "detector": {"layer": "net.2", "calibration": 80, "fit_steps": 60,
                              "settings": {"n_features": 64, "k": 8, "top_features": 8},
                              "calibration_attack": {"name": "pgd", "steps": 3},
                              "adaptive": {"name": "pgd", "steps": 3}, "lambdas": [0, 1], "radii": [0.5]}},
    }
    (tmp_path / "det.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_main(["run", "det.yaml", "--out", "run", "--quiet"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert [(r["lambda"], r["eps_fraction"]) for r in report["detection"]["adaptive"]] == [(0, 1), (1, 1), (1, 0.5)]
    assert report["detection"]["fit"]["calibration_points"] == 80
    assert (run / "detector" / "detector.json").is_file()
    assert 'id="detection"' in (run / "report.html").read_text()

    code, _, err = run_main([
        "eval", "--model", "run", "--data", "digits", "--eps", "0.1", "--attacks", "pgd", "--eps-curve", "0.1",
        "--max-samples", "30", "--detector", "run/detector", "--detector-lambdas", "none", "--out", "eval", "--quiet",
    ], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert evaluated["detection"]["adaptive_tested"] is False
    assert any(c["name"] == "detector_adaptive" and c["passed"] is False for c in evaluated["checks"])

    code, _, err = run_main(["eval", "--model", "run", "--data", "digits", "--eps", "0.1", "--detector", ".",
                             "--out", "bad", "--quiet"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "no saved detector" in err and len(err.strip().splitlines()) == 1


def test_load_detector_round_trip(sae_setup: dict[str, Any], tmp_path: Path) -> None:
    sae_setup["detector"].save(tmp_path / "d")
    loaded = load_detector(tmp_path / "d", sae_setup["model"])
    x, _ = digits_points(16)
    torch.testing.assert_close(loaded.score(x), sae_setup["detector"].score(x))
    assert loaded.threshold == sae_setup["detector"].threshold
