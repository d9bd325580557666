"""The main job: config → data → model → training → evaluation → run folder.

A run folder always holds the resolved ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (with the
final ``model.safetensors`` and ``model.json``), ``report.json``, ``report.html`` and ``examples.npz``, and
sparring's marker ``.sparring-run.json``; while a process writes it, its lock (:mod:`sparring.runtime.run_folder`).
``--overwrite`` clears only marked folders, and only the files sparring wrote. ``run_demo`` trains a
standard and a PGD-AT small CNN on the embedded digits and writes a comparison page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from sparring.attacks import Attack
from sparring.config import RunConfig, load_config
from sparring.data import Dataset, load_data, long_tail
from sparring.errors import RunFolderError, SparringError
from sparring.evaluate import Evaluation, evaluate, long_tail_summary
from sparring.files import atomic_write_json, atomic_write_text
from sparring.models import build_model, with_normalization
from sparring.models.fit import check_model_accepts
from sparring.objectives import Objective
from sparring.report import write_comparison, write_html, write_json
from sparring.runtime import trackers
from sparring.runtime.checkpoint import save_weights
from sparring.runtime.distributed import broadcast, is_main_process
from sparring.runtime.run_folder import MARKER, RunFolder, folder_lock, not_ours
from sparring.threat import ThreatModel
from sparring.train import TrainConfig, Trainer, TrainResult
from sparring.version import __version__

log = logging.getLogger(__name__)
Notify = Callable[[str], None]


def check_run_dir(out: Path, *, resume: bool = False) -> None:
    """Refuse, reading only, a path that is a file or a non-empty folder sparring did not create.

    A folder is sparring's by its marker (``.sparring-run.json``), never by the names of its files. For
    ``resume``, a folder an older sparring wrote (``checkpoints/latest.json`` or ``eval_state/manifest.json``,
    no marker) is accepted too: :func:`prepare_run_dir` marks it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder; choose another --out")
    folder = RunFolder(out)
    if folder.is_empty() or folder.is_sparring() or (resume and _older_sparring(out)):
        return
    raise RunFolderError(not_ours(out))


def prepare_run_dir(out: Path, *, overwrite: bool = False, resume: bool = False, kind: str = "run") -> Path:
    """Make ``out`` ready for a run without ever deleting something sparring did not write.

    An existing non-empty folder is an error unless ``resume`` (continue it) or ``overwrite`` (clear sparring's
    files in it, only if it carries sparring's marker; other files stay, with a warning). The folder gets a
    fresh marker of ``kind``. The caller holds the folder's lock (:func:`claim_run_dir` does both).
    """
    out = Path(out)
    check_run_dir(out, resume=resume)
    folder = RunFolder(out)
    if resume:  # a marked folder without checkpoints (killed before its first one) starts again from epoch 0
        if kind == "run" and not (out / "checkpoints").is_dir() and not folder.is_sparring():
            raise RunFolderError(f"cannot resume: {out} has no checkpoints/ folder")
        if not folder.is_sparring():
            log.warning("%s was written by an older sparring (no %s); marking it as a sparring %s folder",
                        out, MARKER, kind)
            RunFolder.create(out, kind=kind)
        return out
    if not folder.is_empty():
        if not overwrite:
            what = "demo" if kind == "demo" else "run"
            raise RunFolderError(f"{what} folder {out} already exists; pass --overwrite to replace it or choose --out")
        kept = folder.clear_ours()
        if kept:
            log.warning("--overwrite left %d file(s) in %s that sparring did not write: %s", len(kept), out,
                        ", ".join(kept))
    RunFolder.create(out, kind=kind)
    return out


@contextlib.contextmanager
def claim_run_dir(out: Path, *, kind: str = "run", overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold ``out`` for this run: refuse a foreign folder, take its lock, prepare it; the lock goes on exit.

    Under ``torch.distributed`` rank 0 does this and every rank learns its verdict (no rank waits forever
    for a rank 0 that refused).
    """
    out = Path(out)
    with contextlib.ExitStack() as stack:
        failure: Exception | None = None
        if is_main_process():
            try:
                check_run_dir(out, resume=resume)  # before the lock: nothing is written into a foreign folder
                stack.enter_context(folder_lock(out))
                prepare_run_dir(out, overwrite=overwrite, resume=resume, kind=kind)
            except (SparringError, OSError) as exc:
                failure = exc
        message = broadcast(None if failure is None else str(failure))  # also a barrier
        if failure is not None:
            raise failure
        if message is not None:
            raise RunFolderError(message)
        yield out


def _older_sparring(out: Path) -> bool:
    return (out / "checkpoints" / "latest.json").is_file() or (out / "eval_state" / "manifest.json").is_file()


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


def run_experiment(
    config: RunConfig,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    evaluate_after: bool = True,
    progress: bool = True,
    notify: Notify | None = None,
) -> dict[str, Any] | None:
    """Train (and evaluate) as configured; returns the report dict (None when ``evaluate_after`` is off)."""
    notify = notify or (lambda message: None)
    train_data, test_data = load_run_data(config)
    model = make_model(config, train_data)
    objective = config.build_objective()
    train_cfg = config.build_train()
    train_cfg.progress = progress
    threat = config.eval_threat(objective)
    main = is_main_process()  # under torchrun / accelerate launch: rank 0 writes, every rank trains and evaluates
    resolved = resolved_yaml(config, objective, train_cfg)
    with claim_run_dir(out, kind="run", overwrite=overwrite, resume=resume) as out:
        if main and not (resume and (out / "config.yaml").is_file()):
            atomic_write_text(out / "config.yaml", resolved)
        notify(f"training {config.model.name} with {objective.name} on {train_data.name} → {out}")
        trainer = Trainer(
            model=model, objective=objective, train=(train_data.x, train_data.y), val=(test_data.x, test_data.y),
            config=train_cfg, val_threat=threat, out_dir=out, num_classes=train_data.num_classes,
        )
        if train_cfg.trackers:
            trackers.start(trainer.accelerator, project=config.name or out.name, run_name=out.name,
                           config=yaml.safe_load(resolved))
        try:
            result = trainer.fit(resume=resume)
            model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
            if main:
                save_model(model, out / "checkpoints", config=config, data=train_data)
            if not evaluate_after:
                return None
            notify("evaluating")
            evaluation = evaluate(
                model, test_data, threat, suite=config.build_suite(), eps_curve=config.eval.eps_curve,
                batch_size=config.eval.batch_size, max_samples=config.eval.max_samples, seed=config.seed,
                precision=config.eval.precision, state_dir=out / "eval_state", notify=notify,
                progress=progress and main,
            )
            if not main:
                return None
            report = build_report(
                evaluation, run_name=config.name or out.name, objective=objective.describe(),
                model={"name": config.model.name, "parameters": _parameters(model)},
                data=_describe_data(train_data, test_data, evaluation), training=result,
            )
            trackers.log_evaluation(trainer.accelerator, report, step=len(result.history))
            write_run_report(out, report, evaluation)
            return report
        finally:
            trackers.finish(trainer.accelerator)


def resolved_yaml(config: RunConfig, objective: Objective, train_cfg: TrainConfig) -> str:
    """The config with every default filled in; running it again reproduces the run."""
    resolved = config.model_dump(mode="json")
    resolved["objective"] = objective.describe()
    resolved["train"] = {k: v for k, v in dataclasses.asdict(train_cfg).items() if k != "progress"}
    resolved["train"]["milestones"] = list(train_cfg.milestones)
    resolved["train"]["trackers"] = list(train_cfg.trackers)
    return yaml.safe_dump(resolved, sort_keys=False)


def build_report(
    evaluation: Evaluation,
    *,
    run_name: str,
    objective: dict[str, Any] | None,
    model: dict[str, Any],
    data: dict[str, Any],
    training: TrainResult | None,
) -> dict[str, Any]:
    """Assemble report.json (schema in docs/report.md)."""
    summary = evaluation.to_dict()
    counts = data.get("train_class_counts")
    if counts is not None and len(counts) == len(summary["per_class"]):
        for row, count in zip(summary["per_class"], counts, strict=True):
            row["train_count"] = int(count)
    return {
        "schema_version": 1,
        "sparring_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_name": run_name,
        "objective": objective["name"] if objective else "none (evaluation only)",
        "objective_config": objective,
        "model": model,
        "data": data,
        **summary,
        "long_tail": long_tail_summary(summary["per_class"], counts),
        "training": training.summary() if training is not None else None,
    }


def write_run_report(out: Path, report: dict[str, Any], evaluation: Evaluation) -> None:
    write_json(report, out / "report.json")
    np.savez_compressed(out / "examples.npz", **{k: v.numpy() for k, v in evaluation.examples.items()})
    write_html(out)


def save_model(model: nn.Module, folder: Path, *, config: RunConfig, data: Dataset) -> None:
    """``model.safetensors`` plus ``model.json`` saying how to rebuild the architecture."""
    save_weights(model, folder / "model.safetensors")
    atomic_write_json(folder / "model.json", {
        "name": config.model.name, "settings": config.model.settings(),
        "normalize": config.model.normalize.model_dump() if config.model.normalize else None,
        "input_shape": list(data.input_shape), "num_classes": data.num_classes,
    })


def evaluate_model(
    model: nn.Module,
    test_data: Dataset,
    threat: ThreatModel,
    out: Path,
    *,
    model_name: str,
    suite: str | list[Attack] = "standard",
    eps_curve: list[float] | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    precision: str = "fp32",
    overwrite: bool = False,
    notify: Notify | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """``sparring eval``: evaluate a given model and write a run folder (no training section).

    The evaluation state goes to ``out/eval_state`` as batches finish: the same command run again on
    the same ``out`` continues where it stopped. Under ``torch.distributed`` every rank evaluates its
    shard and rank 0 writes the folder (other ranks return None).
    """
    out = Path(out)
    check_model_accepts(model, test_data)  # one line naming both shapes, before any folder is touched
    resuming = (out / "eval_state" / "manifest.json").is_file() and not overwrite
    with claim_run_dir(out, kind="eval", overwrite=overwrite, resume=resuming):
        if resuming and notify is not None and is_main_process():
            notify(f"resuming the evaluation in {out / 'eval_state'}")
        evaluation = evaluate(
            model, test_data, threat, suite=suite, eps_curve=eps_curve, max_samples=max_samples,
            batch_size=batch_size, seed=seed, precision=precision, state_dir=out / "eval_state", notify=notify,
            progress=progress,
        )
        if not is_main_process():
            return None
        report = build_report(
            evaluation, run_name=out.name, objective=None,
            model={"name": model_name, "parameters": _parameters(model)},
            data=_describe_data(None, test_data, evaluation), training=None,
        )
        write_run_report(out, report, evaluation)
        return report


def run_demo(out: Path, *, overwrite: bool = False, progress: bool = True, notify: Notify | None = None) -> Path:
    """Train a standard and a PGD-AT small CNN on digits; one run folder each plus ``comparison.html``."""
    with claim_run_dir(Path(out), kind="demo", overwrite=overwrite) as out:
        runs = []
        for name in ("standard", "pgd_at"):
            config = load_config(demo_config_path(name))
            run_experiment(config, out / name, progress=progress, notify=notify)
            runs.append(out / name)
        return write_comparison(runs, out / "comparison.html")


def demo_config_path(name: str) -> Path:
    """Path of a config shipped with the package (``sparring/configs/demo_<name>.yaml``)."""
    return Path(str(resources.files("sparring") / "configs" / f"demo_{name}.yaml"))



def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _describe_data(train: Dataset | None, test: Dataset, evaluation: Evaluation) -> dict[str, Any]:
    return {
        "name": test.name,
        "n_train": len(train) if train is not None else None,
        "n_eval": len(evaluation.labels),
        "num_classes": test.num_classes,
        "class_names": list(test.class_names),
        "train_class_counts": train.class_counts().tolist() if train is not None else None,
        **({"layout": test.layout} if test.layout else {}),
    }


__all__ = ["run_experiment", "run_demo", "evaluate_model", "prepare_run_dir", "claim_run_dir", "check_run_dir",
           "build_report"]
