"""The streaming protocol: streams of stages, a learner trained stage by stage, evaluated after every stage and at
the end (arXiv 2605.06902's "streaming evaluation principle": the number that counts is the final deployed model's).

Streams (each stage: its training samples, in a seeded order, and its test samples):

* :func:`class_incremental`: classes arrive in stages (default 5 stages of 2 classes; order drawn from the seed).
  After stage k the model is tested on the classes seen so far.
* :func:`domain_shift`: all classes in every stage, each stage under a harder input shift. Stage k of S has severity
  s = k / (S − 1) and maps a ∈ [0, 1] to ``clip(0.5 + (1 − 0.5 s)(a − 0.5) + 0.15 s · (−1)^k + 0.1 s · n, 0, 1)``
  (contrast down to half, brightness shifted by up to ±0.15, Gaussian noise up to σ = 0.1; noise drawn once from
  the seed). Training and test samples are split across the stages; after stage k the model is tested on the
  domains seen so far.

Evaluation (:func:`evaluate_point`), on the model of that moment and the test samples seen so far (a seeded subset
of ``points`` per stage; the final model on every test sample):

* clean accuracy;
* robust accuracy under the white-box WB-Softmax attack (any core attack with the
  :class:`~sparring.streaming.wb_softmax.WBSoftmax` gradient source; default PGD-20) and under transfer: PGD-20 on
  an MLP (:func:`train_transfer_mlp`, trained with the library's Trainer on every sample the stream has shown up to
  that stage, offline: a stronger source than an MLP trained on the stream itself, which forgets old classes),
  its adversarial inputs judged on the ARTMAP;
* attack success: the fraction of the initially-correct points an attack breaks.

:func:`run_stream` trains one model through a stream with one defence (:mod:`sparring.streaming.selective`) and
returns a row per stage. Transfer inputs depend on the stage and the MLP only, so :func:`transfer_inputs` computes
them once per stream and every defence reuses them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.data import Dataset
from sparring.errors import ConfigError, DataError
from sparring.models.mlp import MLP
from sparring.objectives import build
from sparring.streaming.artmap import FuzzyARTMAP
from sparring.streaming.selective import StageDefence
from sparring.streaming.wb_softmax import WBSoftmax
from sparring.threat import ThreatModel
from sparring.train import TrainConfig, Trainer

StreamKind = Literal["class_incremental", "domain_shift"]


@dataclass(frozen=True)
class Stage:
    """One stage: training samples x (B, ...), y (B,) in stream order, and the test samples it introduces."""

    name: str
    x: Tensor
    y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass(frozen=True)
class Stream:
    """Stages in order, over inputs of ``input_shape`` in [0, 1] with ``num_classes`` classes."""

    name: str
    kind: StreamKind
    stages: list[Stage]
    num_classes: int
    input_shape: tuple[int, ...]

    def seen_test(self, stage: int) -> tuple[Tensor, Tensor]:
        """The test samples of stages 0..``stage``."""
        parts = self.stages[: stage + 1]
        return torch.cat([s.test_x for s in parts]), torch.cat([s.test_y for s in parts])

    def seen_train(self, stage: int) -> tuple[Tensor, Tensor]:
        """The training samples of stages 0..``stage`` (what the stream has shown so far)."""
        parts = self.stages[: stage + 1]
        return torch.cat([s.x for s in parts]), torch.cat([s.y for s in parts])


def class_incremental(train: Dataset, test: Dataset, *, classes_per_stage: int = 2, seed: int = 0) -> Stream:
    """Classes in stages of ``classes_per_stage`` (order drawn from ``seed``), samples shuffled within a stage."""
    k = train.num_classes
    if classes_per_stage < 1 or k % classes_per_stage:
        raise ConfigError(f"classes_per_stage must divide the {k} classes, got {classes_per_stage}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(k, generator=gen).tolist()
    stages = []
    for i in range(0, k, classes_per_stage):
        classes = torch.tensor(order[i:i + classes_per_stage])
        rows = torch.isin(train.y, classes).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=gen)]
        test_rows = torch.isin(test.y, classes).nonzero().squeeze(1)
        stages.append(Stage(name="classes " + ",".join(map(str, classes.tolist())), x=train.x[rows], y=train.y[rows],
                            test_x=test.x[test_rows], test_y=test.y[test_rows]))
    return Stream(name=f"{train.name}/class_incremental", kind="class_incremental", stages=stages, num_classes=k,
                  input_shape=tuple(train.input_shape))


def shift(x: Tensor, stage: int, stages: int, generator: torch.Generator) -> Tensor:
    """The input shift of ``stage`` of ``stages`` (see the module docstring); stage 0 is the identity."""
    s = stage / max(1, stages - 1)
    if s == 0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator)
    out = 0.5 + (1 - 0.5 * s) * (x - 0.5) + 0.15 * s * (-1) ** stage + 0.1 * s * noise
    return out.clamp(0.0, 1.0)


def domain_shift(train: Dataset, test: Dataset, *, stages: int = 5, seed: int = 0) -> Stream:
    """``stages`` stages of increasingly shifted inputs, every class in each; samples split evenly across stages."""
    if stages < 2:
        raise ConfigError(f"a domain-shift stream needs stages >= 2, got {stages}")
    if len(train.y) < stages or len(test.y) < stages:
        raise DataError(f"too few samples for {stages} stages")
    gen = torch.Generator().manual_seed(seed)
    train_parts = torch.randperm(len(train.y), generator=gen).tensor_split(stages)
    test_parts = torch.randperm(len(test.y), generator=gen).tensor_split(stages)
    out = []
    for k, (rows, test_rows) in enumerate(zip(train_parts, test_parts, strict=True)):
        out.append(Stage(name=f"shift {k / (stages - 1):.2f}", x=shift(train.x[rows], k, stages, gen), y=train.y[rows],
                         test_x=shift(test.x[test_rows], k, stages, gen), test_y=test.y[test_rows]))
    return Stream(name=f"{train.name}/domain_shift", kind="domain_shift", stages=out, num_classes=train.num_classes,
                  input_shape=tuple(train.input_shape))


def make_stream(kind: StreamKind, train: Dataset, test: Dataset, *, seed: int = 0) -> Stream:
    if kind == "class_incremental":
        return class_incremental(train, test, seed=seed)
    if kind == "domain_shift":
        return domain_shift(train, test, seed=seed)
    raise ConfigError(f"unknown stream kind {kind!r}: class_incremental or domain_shift")


# ------------------------------------------------------------------------------------------------ transfer source
def train_transfer_mlp(x: Tensor, y: Tensor, *, input_shape: tuple[int, ...], num_classes: int, epochs: int = 30,
                       hidden: Sequence[int] = (256, 256), seed: int = 0) -> nn.Module:
    """An MLP trained with standard training (the library's Trainer: SGD, cosine schedule) on ``x``, ``y``."""
    torch.manual_seed(seed)
    model = MLP(input_shape=input_shape, num_classes=num_classes, hidden=hidden)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                         seed=seed, progress=False)
    trainer = Trainer(model=model, objective=build("standard"), train=(x, y), config=config,
                      num_classes=num_classes)
    trainer.fit()
    return trainer.accelerator.unwrap_model(trainer.model).eval()


# ------------------------------------------------------------------------------------------------------ evaluation
@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How each checkpoint of a stream is evaluated.

    Attributes:
        threat: the perturbation set (e.g. ``LinfBall(eps=0.2)`` on digits).
        attack: the white-box attack on the ARTMAP (default PGD-20 with the WB-Softmax gradient source, τ = 0.002,
            early stop: a point leaves at its first real break; the same robust mask, fewer queries).
        transfer_attack: the attack on the transfer MLP (default PGD-20, autograd, last iterate).
        points: test samples per intermediate stage (a seeded subset of those seen so far; the final model is
            evaluated on every test sample). None: all of them.
        transfer_epochs: epochs of each stage's transfer MLP; 0 skips the transfer evaluation.
    """

    threat: ThreatModel
    attack: Attack = field(default_factory=lambda: PGD(steps=20, gradients=WBSoftmax(tau=0.002), early_stop=True))
    transfer_attack: Attack = field(default_factory=lambda: PGD(steps=20, keep_best=False))
    points: int | None = 100
    transfer_epochs: int = 20


@dataclass(frozen=True)
class Probe:
    """The test points of one checkpoint and, when there is a transfer source, their transfer adversarial inputs."""

    stage: int
    x: Tensor
    y: Tensor
    x_transfer: Tensor | None = None
    transfer_accuracy: float | None = None


def probes(stream: Stream, settings: EvalSettings, *, seed: int = 0) -> list[Probe]:
    """One probe per stage: the seen test samples (a subset of ``settings.points`` except at the last stage) and,
    with ``transfer_epochs > 0``, PGD inputs from an MLP trained on the samples seen so far."""
    out = []
    last = len(stream.stages) - 1
    for k in range(len(stream.stages)):
        x, y = stream.seen_test(k)
        if k < last and settings.points is not None and len(y) > settings.points:
            rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + k))[: settings.points]
            x, y = x[rows], y[rows]
        if settings.transfer_epochs <= 0:
            out.append(Probe(stage=k, x=x, y=y))
            continue
        train_x, train_y = stream.seen_train(k)
        mlp = train_transfer_mlp(train_x, train_y, input_shape=stream.input_shape, num_classes=stream.num_classes,
                                 epochs=settings.transfer_epochs, seed=seed)
        with torch.no_grad():
            accuracy = float((mlp(x).argmax(1) == y).float().mean())
        result = settings.transfer_attack(mlp, x, y, settings.threat, generator=torch.Generator().manual_seed(seed))
        out.append(Probe(stage=k, x=x, y=y, x_transfer=result.x_adv, transfer_accuracy=accuracy))
    return out


def evaluate_point(model: FuzzyARTMAP, probe: Probe, settings: EvalSettings, *, seed: int = 0) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``probe``, WB-Softmax and transfer attack success (fractions of the
    initially-correct points broken)."""
    x, y = probe.x, probe.y
    correct = model.predict(x) == y
    row: dict[str, Any] = {"points": len(y), "categories": model.num_categories,
                           "clean_accuracy": float(correct.float().mean())}
    started = time.perf_counter()
    robust_wb = correct.clone()
    if bool(correct.any()):
        result = settings.attack(model, x[correct], y[correct], settings.threat,
                                 generator=torch.Generator().manual_seed(seed))
        robust_wb[correct] = ~result.success
    row["robust_accuracy_wb_softmax"] = float(robust_wb.float().mean())
    row["wb_softmax_success"] = _success(correct, robust_wb)
    row["attack_s"] = time.perf_counter() - started
    if probe.x_transfer is not None:
        robust_transfer = correct & (model.predict(probe.x_transfer) == y)
        row["robust_accuracy_transfer"] = float(robust_transfer.float().mean())
        row["transfer_success"] = _success(correct, robust_transfer)
        row["robust_accuracy_worst"] = float((robust_wb & robust_transfer).float().mean())
        row["transfer_source_accuracy"] = probe.transfer_accuracy
    return row


def _success(correct: Tensor, robust: Tensor) -> float:
    n = int(correct.sum())
    return float((correct & ~robust).sum()) / n if n else math.nan


def run_stream(stream: Stream, defence: StageDefence, settings: EvalSettings, *, probes_: Sequence[Probe],
               artmap: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Train a fresh :class:`FuzzyARTMAP` (settings ``artmap``) through ``stream`` with ``defence``, evaluating after
    every stage on ``probes_`` (from :func:`probes`). Returns ``{"stages": [row per stage], "final": last row}``."""
    if len(probes_) != len(stream.stages):
        raise ConfigError(f"{len(probes_)} probes for {len(stream.stages)} stages")
    model = FuzzyARTMAP(input_shape=stream.input_shape, num_classes=stream.num_classes, **(artmap or {}))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k, (stage, probe) in enumerate(zip(stream.stages, probes_, strict=True)):
        started = time.perf_counter()
        counts = defence(model, stage.x, stage.y, generator=gen)
        fit_s = time.perf_counter() - started
        row = {"stage": k, "name": stage.name, "fit_s": fit_s, **counts, **evaluate_point(model, probe, settings,
                                                                                           seed=seed)}
        rows.append(row)
    return {"defence": defence.name, "stages": rows, "final": rows[-1], "model": model}
