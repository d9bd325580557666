"""Experiment trackers through accelerate: TensorBoard event files and a local MLflow file store hold the
training metrics, the per-class robust accuracy and the ε-curve of a real (tiny) evaluation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from sparring.errors import ConfigError
from sparring.runtime import trackers

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

EPS_CURVE = [0.0, 0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """The evaluation part of report.json, from sparring's own evaluate on a tiny MLP and 40 digits."""
    from _eval_fixtures import digits_points, mlp

    from sparring.attacks import PGD
    from sparring.evaluate import evaluate
    from sparring.threat import LinfBall

    torch.manual_seed(0)
    x, y = digits_points(40)
    evaluation = evaluate(mlp().eval(), (x, y), LinfBall(eps=0.1), suite=[PGD(steps=3)], eps_curve=EPS_CURVE,
                          batch_size=40, curve_attack=PGD(steps=3))
    return evaluation.to_dict()


@pytest.fixture
def accelerator(tmp_path: Path):
    """A CPU accelerator logging to TensorBoard and MLflow under ``tmp_path/run``; accelerate's state reset."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    names = ["tensorboard", "MLflow", "tensorboard"]  # case and repeats do not matter
    acc = Accelerator(cpu=True, **trackers.accelerator_kwargs(names, tmp_path / "run"))
    yield acc
    trackers.finish(acc)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def test_check_trackers_rejects_unknown_and_missing() -> None:
    assert trackers.check_trackers(["TensorBoard", "mlflow", "tensorboard"]) == ["tensorboard", "mlflow"]
    assert trackers.check_trackers(None) == [] and trackers.accelerator_kwargs([], None) == {}
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        trackers.check_trackers(["neptune"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="wandb is not installed; run pip install wandb"):
            trackers.check_trackers(["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="run folder"):
        trackers.accelerator_kwargs(["tensorboard"], None)


def test_no_tracker_is_a_no_op(tmp_path: Path, report: dict[str, Any]) -> None:
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    acc = Accelerator(cpu=True, **trackers.accelerator_kwargs(None, tmp_path))
    trackers.start(acc, project="p", config={"a": 1})
    trackers.log_epoch(acc, {"epoch": 0, "train_loss": 1.0})
    trackers.log_evaluation(acc, report, step=1)
    trackers.finish(acc)
    assert not any(tmp_path.iterdir())


def test_tensorboard_and_mlflow_hold_metrics_tables_and_curve(
    accelerator: Accelerator, report: dict[str, Any], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    config = {"train": {"lr": 0.1, "milestones": [0.5, 0.75], "restore_best": None}, "seed": 0}
    trackers.start(accelerator, project="digits", config=config, run_name="tiny")
    for epoch in range(2):
        record = {"epoch": epoch, "step": 3 * (epoch + 1), "lr": 0.1, "train_loss": 2.0 - epoch,
                  "val_robust_accuracy": 0.1 * epoch, "note": "not a number"}
        trackers.log_epoch(accelerator, record, step=epoch)
    trackers.log_evaluation(accelerator, report, step=2)
    trackers.finish(accelerator)
    trackers.finish(accelerator)  # twice is harmless

    # TensorBoard: scalars, per-class scalars, the ε-curve stepped by index, text tables and figures
    events = EventAccumulator(str(run / "trackers" / "digits"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert [e.value for e in events.Scalars("train/loss")] == [2.0, 1.0]
    assert events.Scalars("eval/clean_accuracy")[0].value == pytest.approx(report["clean_accuracy"])
    robust = report["robust_accuracy"]["worst_case"]
    assert events.Scalars("eval/robust_accuracy")[0].value == pytest.approx(robust)
    row = report["per_class"][3]
    assert events.Scalars("per_class/robust/3")[0].value == pytest.approx(row["robust_accuracy"])
    curve = events.Scalars("eps_curve/robust_accuracy")
    assert [e.step for e in curve] == list(range(len(EPS_CURVE)))
    assert [e.value for e in curve] == pytest.approx([p["robust_accuracy"] for p in report["eps_curve"]])
    assert [e.value for e in events.Scalars("eps_curve/eps")] == pytest.approx(EPS_CURVE)
    assert "note" not in tags["scalars"]
    assert {"eval/eps_curve", "eval/per_class"} <= set(tags["images"])
    assert any("eval/per_class" in tag for tag in tags["tensors"])  # add_text is stored as a tensor summary

    # MLflow: one run in the local file store with params, metric histories and the table artifacts
    client = MlflowClient(tracking_uri=trackers.mlflow_uri(run))
    experiment = client.get_experiment_by_name("digits")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == "tiny" and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.lr"] == "0.1" and mlrun.data.params["train.restore_best"] == "null"
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0)]
    assert mlrun.data.metrics["per_class/robust/3"] == pytest.approx(row["robust_accuracy"])
    curve = client.get_metric_history(mlrun.info.run_id, "eps_curve/robust_accuracy")
    assert sorted(m.step for m in curve) == list(range(len(EPS_CURVE)))
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id, "eval")}
    assert {"eval/per_class.json", "eval/eps_curve.json", "eval/eps_curve.png", "eval/per_class.png"} <= artifacts
    table = _load_json(client.download_artifacts(mlrun.info.run_id, "eval/per_class.json", str(tmp_path)))
    assert table["columns"][:2] == ["class", "name"] and len(table["data"]) == len(report["per_class"])
    robust_col = table["columns"].index("robust_accuracy")
    assert table["data"][3][robust_col] == pytest.approx(row["robust_accuracy"])
    assert (run / "trackers" / "mlruns").is_dir() and sorted(p.name for p in run.iterdir()) == ["trackers"]


def test_log_evaluation_takes_an_evaluation_object(accelerator: Accelerator, report: dict[str, Any]) -> None:
    class Wrapped:  # duck-typed like sparring.evaluate.Evaluation
        def to_dict(self) -> dict[str, Any]:
            return report

    trackers.start(accelerator, project="again")
    trackers.log_evaluation(accelerator, Wrapped(), step=0)
    assert "eval/robust_accuracy" in trackers.evaluation_scalars(report)


def _load_json(path: str) -> Any:
    import json

    return json.loads(Path(path).read_text())


def test_a_configured_run_logs_epochs_and_its_evaluation_to_tensorboard(tmp_path: Path) -> None:
    """``train.trackers`` in a run config: the Trainer logs every epoch and the run its evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sparring.config import parse_config
    from sparring.experiment import run_experiment

    config = parse_config({
        "name": "tiny", "data": {"source": "digits"}, "model": {"name": "mlp"},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 0.003, "val_size": 32,
                  "trackers": ["tensorboard"]},
        "eval": {"threat": {"eps": 0.1}, "suite": "fast", "max_samples": 32, "eps_curve": [0.0, 0.1]},
    })
    run_experiment(config, tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "trackers" / "tiny")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    assert 0.0 <= events.Scalars("eval/robust_accuracy")[0].value <= events.Scalars("eval/clean_accuracy")[0].value
    assert len(events.Scalars("eps_curve/robust_accuracy")) == 2
    assert "trackers:\n  - tensorboard" in (tmp_path / "run" / "config.yaml").read_text()
