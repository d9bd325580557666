"""The core's run task: classifiers of images and feature vectors (``task: classification``, the default).

config → data (:func:`load_run_data`, long-tail subsampling) → model (:func:`make_model`) → the Trainer with the
objective, robust validation each epoch → the evaluation suite, ε-curve and checks → report.json's accuracy,
per-class, ε-curve and check blocks, ``examples.npz``. The point-cloud domain's ``points`` task is this one with
point-cloud defaults (:mod:`sparring.points.task`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import sparring.runtime.trackers as trackers
from sparring.config import RunConfig, check_run_config
from sparring.data import Dataset, load_data, long_tail
from sparring.detectors.base import Detector
from sparring.detectors.evaluation import calibrated_detector, load_detector
from sparring.errors import ConfigError
from sparring.evaluate import build_report, describe_data, evaluate, parameters, write_examples
from sparring.files import atomic_write_json
from sparring.models import build_model, with_normalization
from sparring.objectives import Objective
from sparring.runtime.checkpoint import load_weights, save_weights
from sparring.tasks import TASKS, Job, Notify, Task
from sparring.train import TrainConfig, Trainer, TrainResult


def load_run_data(config: RunConfig) -> tuple[Dataset, Dataset]:
    spec = config.data
    train, test = load_data(
        spec.source, root=spec.root, test_fraction=spec.test_fraction, seed=config.seed, num_classes=spec.num_classes
    )
    if spec.long_tail is not None:
        train = long_tail(train, imbalance_ratio=spec.long_tail.imbalance_ratio, seed=config.seed)
    return train, test


def make_model(config: RunConfig, data: Dataset) -> nn.Module:
    torch.manual_seed(config.seed)  # weight initialization is part of the run's seed
    model = build_model(
        config.model.name, input_shape=data.input_shape, num_classes=data.num_classes, **config.model.settings()
    )
    if config.model.normalize is not None:
        model = with_normalization(model, config.model.normalize.mean, config.model.normalize.std)
    return model


def resolved_config(config: RunConfig, objective: Objective, train_cfg: TrainConfig) -> dict[str, Any]:
    """The config with every default filled in; running it again reproduces the run."""
    resolved = config.model_dump(mode="json")
    resolved["objective"] = objective.describe()
    resolved["train"] = train_cfg.settings()
    return resolved


def save_model(model: nn.Module, folder: Path, *, config: RunConfig, data: Dataset) -> None:
    """``model.safetensors`` plus ``model.json`` saying how to rebuild the architecture."""
    save_weights(model, folder / "model.safetensors")
    atomic_write_json(folder / "model.json", {
        "name": config.model.name, "settings": config.model.settings(),
        "normalize": config.model.normalize.model_dump() if config.model.normalize else None,
        "input_shape": list(data.input_shape), "num_classes": data.num_classes,
    })


class ClassificationJob(Job):
    def __init__(self, config: RunConfig, *, task: str) -> None:
        self.config, self.task = config, task
        self.train_data, self.test_data = load_run_data(config)
        self.model = make_model(config, self.train_data)
        self.objective = config.build_objective()
        self.train_cfg = config.build_train()
        self.eval_threat = config.eval_threat(self.objective)
        self.trainer: Trainer | None = None
        self.result: TrainResult | None = None

    def resolved(self) -> dict[str, Any]:
        return resolved_config(self.config, self.objective, self.train_cfg)

    def headline(self) -> str:
        return f"training {self.config.model.name} with {self.objective.name} on {self.train_data.name}"

    def train(self, out: Path, *, resume: bool, progress: bool) -> None:
        self.train_cfg.progress = progress
        self.trainer = Trainer(
            model=self.model, objective=self.objective, train=(self.train_data.x, self.train_data.y),
            val=(self.test_data.x, self.test_data.y), config=self.train_cfg, val_threat=self.eval_threat,
            out_dir=out, num_classes=self.train_data.num_classes,
        )
        if self.train_cfg.trackers:
            trackers.start(self.trainer.accelerator, project=self.config.name or out.name, run_name=out.name,
                           config=self.resolved())
        self.result = self.trainer.fit(resume=resume)
        self.model = self.trainer.accelerator.unwrap_model(self.trainer.model, keep_torch_compile=False)

    def save_model(self, folder: Path) -> None:
        save_model(self.model, folder, config=self.config, data=self.train_data)

    def load_trained(self, folder: Path) -> None:
        load_weights(self.model, folder / "model.safetensors")

    def detector(self, out: Path, notify: Notify) -> tuple[Detector | None, dict[str, Any] | None]:
        """``eval.detector``: read from ``out/detector`` when an earlier (interrupted) evaluation saved it, else fitted
        on the training split minus ``calibration`` held-out points, calibrated on those attacked, and saved."""
        spec = self.config.eval.detector
        if spec is None:
            return None, None
        folder = out / "detector"
        if (folder / "detector.json").is_file():
            return load_detector(folder, self.model), None
        notify(f"fitting the {spec.name} detector on layer {spec.layer}")
        x, y = self.train_data.x, self.train_data.y
        if spec.calibration >= len(x):
            raise ConfigError(f"eval.detector.calibration ({spec.calibration}) must be below the {len(x)} "
                              "training points")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.config.seed))
        calib, fit = order[:spec.calibration], order[spec.calibration:]
        device = next(self.model.parameters()).device
        calibration_attack, _ = spec.build_attacks()
        detector, record = calibrated_detector(
            spec.name, self.model, layer=spec.layer, fit_x=x[fit].to(device), calib_x=x[calib].to(device),
            calib_y=y[calib].to(device), threat=self.eval_threat, attack=calibration_attack, fit_steps=spec.fit_steps,
            fpr=spec.fpr, settings=spec.settings, seed=self.config.seed,
        )
        detector.save(folder)  # type: ignore[attr-defined]
        return detector, record

    def evaluate(self, out: Path, *, progress: bool, notify: Notify) -> dict[str, Any] | None:
        config = self.config
        detector, fitted = self.detector(out, notify)
        evaluation = evaluate(
            self.model, self.test_data, self.eval_threat, suite=config.build_suite(),
            eps_curve=config.eval.eps_curve, batch_size=config.eval.batch_size, max_samples=config.eval.max_samples,
            seed=config.seed, precision=config.eval.precision, state_dir=out / "eval_state", notify=notify,
            progress=progress, detector=detector,
            detector_attack=config.eval.detector.build_attacks()[1] if config.eval.detector else None,
            detector_lambdas=config.eval.detector.lambdas if config.eval.detector else (),
            detector_radii=config.eval.detector.radii if config.eval.detector else (),
        )
        if evaluation.detection is not None and fitted is not None:
            evaluation.detection["fit"] = fitted
        report = build_report(
            evaluation, run_name=config.name or out.name, objective=self.objective.describe(),
            model={"name": config.model.name, "parameters": parameters(self.model)},
            data=describe_data(self.train_data, self.test_data, evaluation), training=self.result, task=self.task,
        )
        if self.trainer is not None and self.result is not None:
            trackers.log_evaluation(self.trainer.accelerator, report, step=len(self.result.history))
        write_examples(out, evaluation)
        return report

    def threat(self) -> dict[str, Any] | None:
        return dict(self.eval_threat.describe())

    def close(self) -> None:
        if self.trainer is not None:
            trackers.finish(self.trainer.accelerator)


@TASKS.register("classification")
class ClassificationTask(Task):
    """Classifiers of images and feature vectors (the default task)."""

    name = "classification"
    config_type = RunConfig
    view = "classification"

    def check(self, config: RunConfig) -> None:
        check_run_config(config)

    def prepare(self, config: RunConfig) -> ClassificationJob:
        return ClassificationJob(config, task=self.name)


__all__ = ["ClassificationJob", "ClassificationTask", "load_run_data", "make_model", "resolved_config", "save_model"]
