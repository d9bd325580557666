"""Point clouds through the YAML path: configs, ``run_experiment`` and its report, the point-set threat."""

from __future__ import annotations

import json

import pytest
import torch

from sparring.attacks import PGD
from sparring.config import parse_config
from sparring.errors import ConfigError
from sparring.evaluate import evaluate
from sparring.experiment import run_experiment
from sparring.models import build_model
from sparring.points import PointSet, procedural_shapes
from sparring.points.attacks import PointDrop
from sparring.threat import LinfBall

# The run test trains MAPR without the feature stage: its cost is the evaluation checks (1000 Square queries),
# not the features, whose path through a model and an attack has its own tests (test_points_defences).
INTRINSIC = False


def config(**eval_section: object) -> dict[str, object]:
    return {
        "name": "tiny_points",
        "data": {"source": "shapes"},
        "model": {"name": "pointnet", "width": 8, "intrinsic": INTRINSIC},
        "objective": {"name": "mapr"},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.003, "weight_decay": 0.0,
                  "val_size": 16, "val_attack_steps": 1},
        "eval": {"threat": {"norm": "linf", "eps": 0.02, "bounds": None}, "max_samples": 12,
                 "attacks": [{"name": "pgd", "steps": 2}], "eps_curve": [0.0, 0.02], **eval_section},
    }


def test_point_cloud_run_writes_per_class_report_and_cloud_picture(tmp_path):
    report = run_experiment(parse_config(config()), tmp_path / "run", progress=False)
    assert report is not None
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(saved["per_class"]) == 10 and saved["threat"]["bounds"] is None
    html = (tmp_path / "run" / "report.html").read_text()
    assert "point cloud" in html.lower() and "data:image/png;base64" in html
    weights = json.loads((tmp_path / "run" / "checkpoints" / "model.json").read_text())
    assert weights["settings"] == {"width": 8, "intrinsic": INTRINSIC}


def test_point_set_threat_from_yaml():
    cfg = parse_config(config(threat={"norm": "points", "eps": 13, "radius": 0.0},
                              attacks=[{"name": "point_drop", "iterations": 2}], eps_curve=[0, 13]))
    threat = cfg.eval_threat(cfg.build_objective())
    assert isinstance(threat, PointSet) and threat.bounds is None and threat.eps == 13


@pytest.mark.parametrize(
    ("eval_section", "words"),
    [
        ({"threat": {"norm": "points", "eps": 5}}, "needs a norm-ball threat"),  # the default APGD suite
        ({"attacks": ["point_drop"]}, "needs the point-set threat"),
        ({"threat": {"norm": "linf", "eps": 0.1, "radius": 0.1}}, "radius applies to norm: points"),
        ({"threat": {"norm": "points", "eps": -1}}, "greater than or equal to 0"),
    ],
)
def test_mismatched_threats_and_attacks_are_config_errors(eval_section, words):
    raw = config()
    raw["eval"] = {**raw["eval"], **eval_section}  # type: ignore[dict-item]
    if "attacks" not in eval_section and eval_section.get("threat", {}).get("norm") == "points":
        raw["eval"].pop("attacks")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=words):
        parse_config(raw)


def test_evaluate_under_the_point_set_threat():
    data = procedural_shapes(n_per_class=4, num_points=64, seed=0, classes=["sphere", "cube", "cone"])
    torch.manual_seed(0)
    model = build_model("pointnet", input_shape=(64, 3), num_classes=3, width=8).eval()
    evaluation = evaluate(model, (data.x, data.y), PointSet(eps=8), suite=[PointDrop(iterations=2)],
                          eps_curve=[0, 4, 8])
    report = evaluation.to_dict()
    curve = [row["robust_accuracy"] for row in report["eps_curve"]]
    assert curve[0] == pytest.approx(report["clean_accuracy"]) and curve == sorted(curve, reverse=True)
    skipped = {c["name"]: c for c in report["checks"] if c["passed"] is None}
    assert {"black_box_not_stronger", "large_eps_breaks_model"} <= set(skipped)
    with pytest.raises(ConfigError, match="needs a norm-ball threat"):
        evaluate(model, (data.x, data.y), PointSet(eps=8), suite=[PGD(steps=2)])
    with pytest.raises(ConfigError, match="needs the point-set threat"):
        evaluate(model, (data.x, data.y), LinfBall(eps=0.1, bounds=None), suite=[PointDrop()])


def test_the_example_point_cloud_config_is_valid():
    from pathlib import Path

    from sparring.config import load_any_config
    from sparring.points.task import PointsRunConfig

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "pointcloud_mapr.yaml"
    cfg = load_any_config(path)
    assert isinstance(cfg, PointsRunConfig) and cfg.task == "points"
    assert cfg.model.settings()["intrinsic"] is True and cfg.build_objective().name == "mapr"


def test_the_points_task_runs_with_point_cloud_defaults(tmp_path):
    """`task: points` alone picks the shapes, PointNet and a box-free threat; its report says task points."""
    from sparring.config import load_any_config

    path = tmp_path / "points.yaml"
    path.write_text("task: points\nmodel: {width: 8}\nobjective: {name: mapr}\n"
                    "train: {epochs: 1, batch_size: 128, val_size: 16, val_attack_steps: 1}\n"
                    "eval: {suite: fast, max_samples: 8, eps_curve: [0.02]}\n")
    cfg = load_any_config(path)  # `model:` names no architecture: PointNet all the same
    assert (cfg.data.source, cfg.model.name, cfg.eval.threat.bounds) == ("shapes", "pointnet", None)
    report = run_experiment(cfg, tmp_path / "run", progress=False)
    assert report["task"] == "points" and report["threat"]["bounds"] is None
    assert (tmp_path / "run" / "report.html").is_file()
