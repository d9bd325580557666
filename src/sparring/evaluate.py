"""Evaluation: clean and robust accuracy, per attack and per-sample worst case, per class, ε-curves, checks.

``evaluate(model, data, threat)`` runs an attack suite as a cascade (see :mod:`sparring.attacks.cascade`;
default ``standard``: APGD-CE → APGD-T → Square, AutoAttack's order and budgets): each attack only runs
on the points still robust, and a point counts as robust only if every attack failed on it.

**Every break counts.** Any point broken at a radius ≤ ε by any attack the evaluation ran counts as broken in
the headline worst case: the suite's attacks, the ε-curve's attack at the radii up to ε, and the attacks the
checks run on their probe points. Each broken point is attributed to the first of these that broke it
(``broken_by``; the report has a row per source). The ε-curve always includes ε; a point broken at ε is broken
at every larger ε, so each radius only attacks the points still robust. The curve is monotone and passes
through the headline at ε by construction.

**How visible each break is.** Every point broken at a radius ≤ ε by the suite or the ε-curve gets its perceptual
metrics against its clean input (:mod:`sparring.perceptual`: ℓ0/ℓ1/ℓ2/ℓ∞ of the perturbation; PSNR, SSIM and
MS-SSIM for images; LPIPS only from a local backbone), and the report gives their distribution per source
(``perceptual``).

The points are split into fixed batches, each with its own generators seeded by ``(seed, batch)``, so an
evaluation can be resumed from its state folder and sharded across processes with identical numbers
(:mod:`sparring.runtime.eval_state`). The attacks draw their random numbers from per-sample streams keyed by
``(seed, attack, global index of the point)`` (:mod:`sparring.attacks.rng`), so a point's outcome does not depend
on the batch size or on its batch mates either. Checks (:mod:`sparring.checks`) never change a number: they mark it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

import sparring.checks as checks_
import sparring.perceptual as perceptual_
from sparring.attacks import APGD, Attack, Square
from sparring.attacks.base import PRECISIONS, row_mask
from sparring.attacks.cascade import NOT_BROKEN, Cascade, as_cascade, check_attacks_fit
from sparring.attacks.fmn import FMN, check_norm
from sparring.attacks.rng import SampleStreams
from sparring.context import conv_layout, device_of, frozen_model
from sparring.data import Dataset
from sparring.detectors.base import Detector
from sparring.detectors.evaluation import DEFAULT_LAMBDAS, DEFAULT_RADII, evaluate_detection
from sparring.errors import ConfigError, DataError
from sparring.progress import EvalBars, interactive
from sparring.report import write_html, write_json
from sparring.report.views import header
from sparring.runtime.distributed import Record, broadcast, gather_records, my_batches, world
from sparring.runtime.eval_state import EvalState, batch_generator, fingerprint
from sparring.threat import ThreatModel

if TYPE_CHECKING:
    from sparring.train import TrainResult

log = logging.getLogger(__name__)

WRONG = -2  # broken_by code of a point the model misclassifies without attack
CHECK_SQUARE_QUERIES = 1000  # budget of the black-box check when the suite has no black-box attack
CHECK_STREAM = 10**9  # the checks' generator, apart from every batch's
CURVE_SOURCE = "eps_curve"  # the label of breaks the ε-curve's attack found at radii ≤ ε that the suite missed
PROBE_SOURCE = "check_probes"  # the label of breaks the checks' own attacks found at radius ≤ ε


def default_curve_attack() -> Attack:
    """APGD on the CW margin, 20 steps: cheap, and it does not saturate like CE on confident models."""
    return APGD(loss="margin", steps=20)


def default_eps_curve(eps: float, points: int = 9) -> list[float]:
    """``points`` radii from 0 to 2ε (the evaluated ε included)."""
    return [2 * eps * i / (points - 1) for i in range(points)]


@dataclass
class Evaluation:
    """Per-sample outcomes and summaries; ``to_dict`` gives the report.json fields.

    ``robust[label]`` is the robust mask after the sources of breaks up to ``label`` (cumulative): the
    suite's attacks in order, then ``eps_curve`` and ``check_probes`` (breaks at radii ≤ ε the suite missed);
    ``worst_case`` is the mask after all of them. ``broken_by`` is per point the index of the source that
    broke it (into :attr:`sources`), −1 if none did, −2 if the clean input is already misclassified.
    ``perturbation`` holds per point each perceptual metric of its adversarial input (NaN where none was kept),
    ``perceptual`` their distributions per source (report.json's ``perceptual``).
    """

    threat: ThreatModel
    suite: str
    labels: Tensor
    clean_correct: Tensor
    broken_by: Tensor
    robust: dict[str, Tensor]
    worst_case: Tensor
    attacks: list[dict[str, Any]]
    eps_curve: list[dict[str, float]]
    checks: list[dict[str, Any]]
    class_names: list[str]
    examples: dict[str, Tensor] = field(default_factory=dict)
    data_name: str = "data"
    time_s: float = 0.0
    suite_time_s: float = 0.0
    curve_time_s: float = 0.0
    perceptual: dict[str, Any] | None = None
    perturbation: dict[str, Tensor] = field(default_factory=dict)
    detection: dict[str, Any] | None = None

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.worst_case.float().mean())

    @property
    def trustworthy(self) -> bool:
        return all(c["passed"] is not False for c in self.checks)

    @property
    def sources(self) -> list[str]:
        """The labels ``broken_by`` indexes: the suite's attacks, then ``eps_curve`` and ``check_probes``."""
        return list(self.robust)

    def found_by(self) -> list[str | None]:
        """Per point, the label of the source that broke it; ``"clean"`` if misclassified unattacked, else None."""
        names = source_codes([row["name"] for row in self.attacks if row["source"] == "suite"])
        return ["clean" if b == WRONG else None if b < 0 else names[b] for b in self.broken_by.tolist()]

    def save(self, folder: Path | str, *, run_name: str | None = None, model_name: str = "model") -> Path:
        """Write ``report.json``, ``examples.npz`` and ``report.html`` into ``folder`` (created if needed; an
        existing report there is replaced, nothing else is touched); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"name": self.data_name, "n_train": None, "n_eval": len(self.labels),
                "num_classes": len(self.class_names), "class_names": list(self.class_names), "train_class_counts": None}
        report = build_report(self, run_name=run_name or folder.name, objective=None, model={"name": model_name},
                              data=data, training=None)
        write_run_report(folder, report, self)
        return folder

    def per_class(self) -> list[dict[str, Any]]:
        rows = []
        for c, name in enumerate(self.class_names):
            mask = self.labels == c
            n = int(mask.sum())
            rows.append({
                "class": c,
                "name": name,
                "n": n,
                "clean_accuracy": float(self.clean_correct[mask].float().mean()) if n else None,
                "robust_accuracy": float(self.worst_case[mask].float().mean()) if n else None,
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        per_class = self.per_class()
        present = [r for r in per_class if r["n"]]
        return {
            "threat": self.threat.describe(),
            "suite": self.suite,
            "n_samples": len(self.labels),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": {**{k: float(v.float().mean()) for k, v in self.robust.items()},
                                "worst_case": self.robust_accuracy},
            "balanced_accuracy": {
                "clean": sum(r["clean_accuracy"] for r in present) / max(len(present), 1),
                "robust": sum(r["robust_accuracy"] for r in present) / max(len(present), 1),
            },
            "per_class": per_class,
            "eps_curve": self.eps_curve,
            "attacks": self.attacks,
            "breaks_outside_suite": {row["name"]: row["broken"] for row in self.attacks if row["source"] != "suite"},
            "checks": self.checks,
            "trustworthy": self.trustworthy,
            "timing": {"eval_s": self.time_s, "suite_s": self.suite_time_s, "eps_curve_s": self.curve_time_s},
            "perceptual": self.perceptual,
            "detection": self.detection,
        }


LONG_TAIL_MIN_RATIO = 2.0  # the imbalance from which a report shows head / medium / tail groups
#: RobustLT's "tail": the rarest 80% of the classes by training count.
TAIL_FRACTION = 0.8
#: Many-shot above 100 training examples, few-shot below 20, medium in between (Liu et al.'s OLTR split, used on
#: CIFAR-100-LT by MCAT's code), at a head of :data:`SHOT_REFERENCE_HEAD` examples.
SHOT_THRESHOLDS = (100.0, 20.0)
#: CIFAR-100-LT's head class count (500), the data set those thresholds are used on: on another data set they are
#: scaled by ``n_max / 500`` (s = 1 on CIFAR-100-LT, 10 on CIFAR-10-LT, 0.8 on MNIST-1D-LT, ~0.27 on digits-LT).
SHOT_REFERENCE_HEAD = 500.0


def _group(per_class: list[dict[str, Any]], class_counts: Sequence[int], members: list[int]) -> dict[str, Any]:
    """One group's classes, training samples and mean per-class clean / robust accuracy (None when none evaluated)."""
    present = [per_class[c] for c in members if per_class[c]["n"]]
    return {
        "classes": members,
        "train_samples": int(sum(class_counts[c] for c in members)),
        "clean": sum(r["clean_accuracy"] for r in present) / len(present) if present else None,
        "robust": sum(r["robust_accuracy"] for r in present) / len(present) if present else None,
    }


def _by_frequency(class_counts: Sequence[int]) -> list[int]:
    """Class indices, most frequent first (ties by index)."""
    return sorted(range(len(class_counts)), key=lambda c: (-int(class_counts[c]), c))


def tail_fraction_group(
    per_class: list[dict[str, Any]], class_counts: Sequence[int], fraction: float = TAIL_FRACTION
) -> dict[str, Any]:
    """The rarest ``round(fraction · K)`` classes (at least 1) by training count: RobustLT's tail at 0.8.

    On CIFAR-10-LT that is classes 2..9 (every class but the two most frequent). Returns :func:`_group`'s dict
    plus ``fraction``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"tail fraction must be in (0, 1], got {fraction}")
    k = len(class_counts)
    size = min(k, max(1, round(fraction * k)))
    members = _by_frequency(class_counts)[k - size:]
    return {**_group(per_class, class_counts, members), "fraction": fraction}


def shot_thresholds(
    class_counts: Sequence[int], *, reference_head: float | None = SHOT_REFERENCE_HEAD,
    thresholds: tuple[float, float] = SHOT_THRESHOLDS,
) -> tuple[float, float, float]:
    """``(many_above, few_below, scale)``: the many- / few-shot thresholds scaled by ``s = n_max / reference_head``
    (``reference_head=None``: ``s = 1``, the thresholds as given)."""
    many, few = (float(t) for t in thresholds)
    if not many >= few > 0:
        raise ConfigError(f"shot thresholds must satisfy many >= few > 0, got {thresholds}")
    if reference_head is not None and not reference_head > 0:
        raise ConfigError(f"reference_head must be > 0 or None, got {reference_head}")
    scale = 1.0 if reference_head is None else max(class_counts) / float(reference_head)
    return many * scale, few * scale, scale


def shot_groups(
    per_class: list[dict[str, Any]], class_counts: Sequence[int], *,
    reference_head: float | None = SHOT_REFERENCE_HEAD, thresholds: tuple[float, float] = SHOT_THRESHOLDS,
) -> dict[str, Any]:
    """Many- / medium- / few-shot groups by training count: many ``n_c > T_many``, medium ``T_few ≤ n_c ≤ T_many``,
    few ``n_c < T_few``, with ``(T_many, T_few)`` from :func:`shot_thresholds` (stated in the result, with the rule).

    A group with no class has ``classes == []`` and ``None`` accuracies.
    """
    many_above, few_below, scale = shot_thresholds(class_counts, reference_head=reference_head, thresholds=thresholds)
    order = _by_frequency(class_counts)
    groups = {
        "many": [c for c in order if class_counts[c] > many_above],
        "medium": [c for c in order if few_below <= class_counts[c] <= many_above],
        "few": [c for c in order if class_counts[c] < few_below],
    }
    reference = "the thresholds as given" if reference_head is None else f"n_max / {reference_head:g}"
    rule = (f"many: n > {thresholds[0]:g}·s, medium: {thresholds[1]:g}·s <= n <= {thresholds[0]:g}·s, few: "
            f"n < {thresholds[1]:g}·s training examples, s = {reference} = {scale:.4g}")
    return {
        "many_above": many_above, "few_below": few_below, "scale": scale, "rule": rule,
        **{name: _group(per_class, class_counts, members) for name, members in groups.items()},
    }


def long_tail_summary(
    per_class: list[dict[str, Any]], class_counts: Sequence[int] | None, *,
    reference_head: float | None = SHOT_REFERENCE_HEAD,
) -> dict[str, Any] | None:
    """Head / medium / tail accuracy (clean and robust) from per-class rows and training class counts, and the
    papers' groups beside them.

    Ours: classes are ranked by training count (most frequent first, ties by index); the top third (rounded)
    is the head, the bottom third the tail, the rest medium — CIFAR-10-LT's usual 3 / 4 / 3 split. A
    group's accuracy is the mean of its classes' accuracies (balanced within the group). The papers':
    ``tail80``, the rarest 80% of the classes (RobustLT, :func:`tail_fraction_group`), and ``shots``, the
    many / medium / few-shot groups by training-count thresholds scaled to the data set (:func:`shot_groups`;
    ``reference_head`` sets the scale). ``None`` when the counts are unknown, do not match the classes, or are
    nearly balanced (largest / smallest count below :data:`LONG_TAIL_MIN_RATIO`): ranking classes by a few
    examples more or less means nothing.
    """
    k = len(per_class)
    if class_counts is None or len(class_counts) != k or k < 3:
        return None
    if max(class_counts) < LONG_TAIL_MIN_RATIO * max(min(class_counts), 1):
        return None
    order = _by_frequency(class_counts)
    third = max(1, round(k / 3))
    groups = {"head": order[:third], "medium": order[third:k - third], "tail": order[k - third:]}
    out: dict[str, Any] = {"imbalance_ratio": max(class_counts) / max(min(class_counts), 1), "split": "rank thirds"}
    for group, members in groups.items():
        out[group] = _group(per_class, class_counts, members)
    out["tail80"] = tail_fraction_group(per_class, class_counts)
    out["shots"] = shot_groups(per_class, class_counts, reference_head=reference_head)
    return out


def evaluate(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    threat: ThreatModel,
    *,
    suite: str | Cascade | Sequence[Attack] = "standard",
    eps_curve: Sequence[float] | str | None = None,
    curve_attack: Attack | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    n_examples: int = 8,
    precision: str = "fp32",
    device: torch.device | str | None = None,
    state_dir: Path | str | None = None,
    fresh: bool = False,
    notify: Callable[[str], None] | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    lpips_backbone: Path | str | None = None,
    detector: Detector | None = None,
    detector_attack: Attack | None = None,
    detector_lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    detector_radii: Sequence[float] = DEFAULT_RADII,
    channels_last: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` under ``threat``.

    Args:
        suite: ``"fast"``, ``"standard"`` (default) or ``"plus"``, a :class:`Cascade`, or a list of
            attacks run as a cascade in that order.
        eps_curve: radii of the ε-curve (default 9 points from 0 to 2ε; ``[]`` to skip), or ``"minnorm"``: the
            default radii from one minimum-norm run (``curve_attack``, default :class:`~sparring.attacks.FMN`) per
            point, robust accuracy(ε) = the fraction of points whose smallest adversarial norm exceeds ε (with the
            suite's breaks counted from ε on). A minimum-norm ``curve_attack`` always gives its curve in one run.
        curve_attack: the attack of the ε-curve cascade and of the large-ε check (default
            :func:`default_curve_attack`).
        max_samples: evaluate the first ``max_samples`` points only.
        precision: ``"fp32"`` or ``"bf16"`` (attacks under bfloat16 autocast; breaks re-checked in fp32).
        state_dir: write the evaluation's state there as it proceeds and resume from it (same arguments).
        fresh: discard an existing state in ``state_dir`` instead of resuming it.
        notify: called with a short message as each stage starts.
        progress: ``None`` (default) draws a bar per suite attack and one for the ε-curve when a person is
            watching (stderr is a terminal), ``True`` always, ``False`` never; a callable is called with
            ``(batches done, batches)`` after each batch of this process instead.
        lpips_backbone: a local TorchScript feature extractor (:func:`sparring.perceptual.load_lpips_backbone`) to
            add LPIPS to the perceptual metrics of image inputs; nothing is downloaded, and without it no LPIPS.
        detector: a calibrated detector (:mod:`sparring.detectors`): the report gains ``detection``, its AUROC and
            TPR at 1% / 5% FPR against each suite attack run on its own, and the detection-aware robust accuracy,
            non-adaptive and under ``detector_attack`` (default APGD-CE, 100 steps) made detector-aware for every λ
            of ``detector_lambdas`` (``()``: non-adaptive only, and the ``detector_adaptive`` check fails), each
            λ > 0 also at the fractions ``detector_radii`` of ε. The headline robust accuracy stays the classifier's
            alone.
        channels_last: run the model's 2-D convolutions with channels-last weights during the evaluation
            (:func:`sparring.context.conv_layout`; the same values, faster kernels, the caller's tensors restored).

    Every break counts: a point any attack broke at a radius ≤ ε (the suite, the ε-curve up to ε, the checks'
    probes) is broken in the worst case, attributed to the first source that broke it.

    Under ``torch.distributed`` (e.g. ``torchrun --nproc-per-node 2``) every rank evaluates its share
    of the batches and returns the same, complete :class:`Evaluation`.
    """
    started = time.perf_counter()
    x, y, class_names = _unpack(data)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    if len(x) == 0:
        raise DataError("no samples to evaluate")
    if _per_sample(threat) and threat.eps.shape[0] != len(x):  # type: ignore[union-attr]
        raise DataError(f"per-sample eps has {threat.eps.shape[0]} entries for {len(x)} evaluated samples")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else device_of(model)
    cascade = as_cascade(suite).with_precision(precision)
    check_attacks_fit(cascade.attacks, threat)
    if isinstance(eps_curve, str):  # "minnorm": one minimum-norm run per point gives the whole curve
        eps_curve, curve_attack = None, minnorm_curve_attack(eps_curve, threat, curve_attack)
    if curve_attack is None:  # a point budget has no APGD: its curve reruns the suite's first attack
        curve_attack = default_curve_attack() if threat.steppable else cascade.attacks[0]
    check_attacks_fit([curve_attack], threat)
    curve_attack = _with_precision(curve_attack, precision)
    radii = _radii(threat, eps_curve)
    notify = notify or (lambda message: None)
    point_shape = tuple(x.shape[1:])
    data_range = threat.bounds[1] - threat.bounds[0] if threat.bounds is not None else None
    backbone_name = (perceptual_.describe_backbone(lpips_backbone)
                     if lpips_backbone is not None and perceptual_.is_image(point_shape) else None)
    backbone = perceptual_.load_lpips_backbone(lpips_backbone, device=device) if backbone_name else None
    metrics = perceptual_.metric_names(point_shape, data_range=data_range, lpips=backbone is not None)
    measure = functools.partial(perceptual_.perturbation_metrics, data_range=data_range, lpips_backbone=backbone)

    n_batches = (len(x) + batch_size - 1) // batch_size
    state = None
    if state_dir is not None:
        settings = {
            "threat": threat.describe(), "eps": _eps_list(threat), "suite": cascade.describe(),
            "radii": radii, "curve_attack": curve_attack.describe(), "batch_size": batch_size, "seed": seed,
            "n": len(x), "precision": precision, "n_examples": n_examples,
            **({"lpips_backbone": backbone_name} if backbone_name else {}),
        }
        state = EvalState(Path(state_dir), fingerprint(model, x, y, settings), settings, fresh=fresh)

    mine = my_batches(n_batches)
    records: list[Record] = []
    notify(f"suite {cascade.name}: {', '.join(cascade.labels)} on {len(x)} points ({n_batches} batches)")
    show = progress if isinstance(progress, bool) else progress is None and interactive()
    bars = EvalBars(cascade.labels, len(mine), curve=bool(radii)) if show and world()[0] == 0 else None
    with bars if bars is not None else contextlib.nullcontext(), conv_layout(model, enabled=channels_last):
        for done, b in enumerate(mine, 1):
            rows = torch.arange(b * batch_size, min((b + 1) * batch_size, len(x)))
            fits = functools.partial(_record_fits, batch=b, first=int(rows[0]), size=len(rows),
                                     n_attacks=len(cascade.attacks), n_radii=len(radii), n_examples=n_examples,
                                     point_shape=point_shape, metrics=metrics)
            record = state.load(b, valid=fits) if state is not None else None
            if record is None:
                record = _evaluate_batch(
                    model, x[rows].to(device), y[rows].to(device), threat.subset(rows), cascade, radii, curve_attack,
                    seed=seed, batch=b, first=int(rows[0]), n_examples=n_examples, precision=precision, bars=bars,
                    measure=measure, metrics=metrics,
                )
                if state is not None:
                    state.save(b, record)
            elif bars is not None:
                bars.skip_batch()
            records.append(record)
            if callable(progress):
                progress(done, len(mine))
    records = gather_records(records)

    outcome = _assemble(records, len(x), cascade, radii, float(threat.eps) if radii else None, curve_attack)
    notify("checks")
    with conv_layout(model, enabled=channels_last):
        check_list, probe_broken = broadcast(
            _run_checks(model, x, y, threat, cascade, outcome, radii, curve_attack, batch_size, seed, device)
            if world()[0] == 0 else None
        )
    if probe_broken:  # the checks' own attacks broke points at radius ≤ ε that every other attack missed
        outcome = _assemble(records, len(x), cascade, radii, float(threat.eps) if radii else None, curve_attack,
                            probe_broken=probe_broken)
    check_list.append(checks_.breaks_outside_suite(
        {row["name"]: row["broken"] for row in outcome["attacks"] if row["source"] != "suite"},
        candidates=int(outcome["suite_robust"].sum()), evaluated=len(x), suite=cascade.name,
    ))
    detection = None
    if detector is not None:
        notify("detection")
        detection = broadcast(evaluate_detection(
            model, x, y, threat, detector, attacks=list(zip(cascade.labels, cascade.attacks, strict=True)),
            adaptive=detector_attack, lambdas=detector_lambdas, radii=detector_radii, batch_size=batch_size,
            seed=seed, device=device,
        ) if world()[0] == 0 else None)
        check_list.append(checks_.detector_tested_adaptively(detection))
    checks_.log_failures(check_list)
    perturbation, perceptual = _perceptual(records, outcome, metrics, perceptual_.settings(
        point_shape, data_range=data_range, lpips=backbone_name), perceptual_.notes(
        point_shape, data_range=data_range, lpips=backbone_name))
    return Evaluation(
        threat=threat, suite=cascade.name, labels=y.cpu(), clean_correct=outcome["clean_correct"],
        broken_by=outcome["broken_by"], robust=outcome["robust"], worst_case=outcome["worst_case"],
        attacks=outcome["attacks"], eps_curve=outcome["curve"], checks=check_list, class_names=class_names,
        examples=_examples(model, x, y, records, n_examples, device), data_name=_name(data),
        time_s=time.perf_counter() - started,
        suite_time_s=sum(row["time_s"] for row in outcome["attacks"] if row["source"] == "suite"),
        curve_time_s=sum(r["curve_time_s"] for r in records), perceptual=perceptual, perturbation=perturbation,
        detection=detection,
    )


def source_codes(suite_labels: Sequence[str]) -> dict[int, str]:
    """``broken_by`` code → source label: the suite's attacks in order, then the ε-curve, then the checks' probes
    (their codes are fixed even when the evaluation had no ε-curve)."""
    n = len(suite_labels)
    return {**dict(enumerate(suite_labels)), n: CURVE_SOURCE, n + 1: PROBE_SOURCE}


# ----------------------------------------------------------------------------- one batch
def _evaluate_batch(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, cascade: Cascade, radii: list[float],
    curve_attack: Attack, *, seed: int, batch: int, first: int, n_examples: int, precision: str,
    bars: EvalBars | None = None, measure: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None,
    metrics: Sequence[str] = (),
) -> Record:
    """Clean prediction, the cascade, the ε-curve cascade: the JSON record of one batch, with the perceptual
    ``metrics`` (``measure(clean, adv)``) of every point broken at a radius ≤ ε (``None`` for the others)."""
    with frozen_model(model), torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    verify = _verifier(model) if precision != "fp32" else None
    ids = torch.arange(first, first + len(x), device=x.device)  # the points' global indices: their streams
    result = cascade.run(
        model, x, y, threat, active=clean_correct, verify=verify,
        generator_for=lambda k: batch_generator(x.device, seed, batch, k),
        streams_for=lambda k: SampleStreams.of(stream_seed(seed, k), ids),
        progress=bars.step if bars is not None else None,
    )
    broken_by = torch.where(clean_correct, result.broken_by, torch.full_like(result.broken_by, WRONG))
    robust = broken_by == NOT_BROKEN
    if bars is not None:
        for k, attacked in enumerate(result.attacked):
            bars.finish_batch(k, attacked=attacked, broken=int((broken_by == k).sum()))
    started = time.perf_counter()
    on_radius = None if bars is None else (lambda i: bars.step(bars.curve, i / len(radii)))
    suite_norm = torch.where(broken_by >= 0, threat.distance(result.x_adv, x).float(),
                             torch.full((len(x),), math.inf, device=x.device))
    curve_broken_at, curve_adv = _curve_batch(model, x, y, threat, radii, clean_correct, robust, curve_attack,
                                              seed, batch, verify, on_radius=on_radius, ids=ids,
                                              suite_norm=suite_norm)
    if bars is not None and radii:
        bars.finish_batch(bars.curve, attacked=0, broken=0)
    curve_time = time.perf_counter() - started
    keep = max(0, min(n_examples - first, len(x)))
    adv = torch.where(row_mask(robust, x), curve_adv, result.x_adv)
    at_eps = radii.index(float(threat.eps)) if radii else -1  # (radii hold ε itself: see _radii)
    broken = (broken_by >= 0) | (robust & (curve_broken_at <= at_eps))
    return {
        "batch": batch,
        "first": first,
        "broken_by": broken_by.tolist(),
        "curve_broken_at": curve_broken_at.tolist(),
        "time_s": result.time_s,
        "curve_time_s": curve_time,
        "queries": result.queries,
        "attacked": result.attacked,
        "adv": adv[:keep].float().cpu().tolist(),
        "perceptual": _perceptual_batch(x, adv, broken, measure, metrics),
    }


def _perceptual_batch(
    x: Tensor, adv: Tensor, broken: Tensor, measure: Callable[[Tensor, Tensor], dict[str, Tensor]] | None,
    metrics: Sequence[str],
) -> dict[str, list[float | None]]:
    """Metric → per point of the batch its value against the clean input where ``broken``, else None."""
    values: dict[str, list[float | None]] = {m: [None] * len(x) for m in metrics}
    rows = broken.nonzero().squeeze(1)
    if measure is None or not metrics or rows.numel() == 0:
        return values
    found = measure(x[rows], adv[rows])
    for m in metrics:
        for i, v in zip(rows.tolist(), found[m].double().cpu().tolist(), strict=True):
            values[m][i] = v if math.isfinite(v) else None
    return values


def _curve_batch(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, radii: list[float], clean_correct: Tensor,
    robust: Tensor, attack: Attack, seed: int, batch: int, verify: Callable[[Tensor, Tensor], Tensor] | None,
    on_radius: Callable[[int], None] | None = None, ids: Tensor | None = None, suite_norm: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(B,) index of the first radius at which the point is broken (``len(radii)``: never), and the inputs that
    broke the points at radii ≤ ε (the clean input elsewhere).

    The curve reuses the suite's work (``suite_norm``: per point the norm of the suite's break, ∞ where it found
    none). Below ε a point the suite broke with a perturbation of norm ≤ r is broken at r without an attack, and a
    point the whole suite left robust at ε is not attacked again: every perturbation of norm r < ε is one of norm ε,
    which the suite searched, so robust at ε is also the evidence at r. Such points are attacked at ε itself (a
    second opinion, the ``breaks_outside_suite`` check); above ε the suite's breaks count and only its survivors
    are attacked. Only the points the suite broke with a larger perturbation are attacked below ε."""
    broken_at = torch.full_like(y, len(radii))
    x_adv = x.detach().clone()
    if not radii:
        return broken_at, x_adv
    if attack.minimum_norm:  # one run gives every radius
        return _minnorm_curve_batch(model, x, y, threat, radii, clean_correct, robust, attack, seed, verify, ids)
    eps_eval = float(threat.eps)
    still = clean_correct.clone()
    for i, radius in enumerate(radii):
        if on_radius is not None:
            on_radius(i)
        if radius >= eps_eval:  # (the radii hold ε itself: see _radii)
            still &= robust  # broken by the full suite at ε ⇒ broken at every larger radius
            attack_now = still
        elif suite_norm is not None:
            still &= ~(suite_norm <= radius)  # the suite's own break already lies within r
            attack_now = still & ~robust  # robust at ε under the suite ⇒ robust at r < ε as far as evidence goes
        else:
            attack_now = still
        rows = attack_now.nonzero().squeeze(1)
        if rows.numel():  # ε = 0 is attacked too (the suite's breaks there): what the eps_zero check verifies
            streams = None if ids is None else SampleStreams.of(stream_seed(seed, 1000 + i), ids[rows])
            result = attack(model, x[rows], y[rows], threat.with_eps(radius),
                            generator=batch_generator(x.device, seed, batch, 1000 + i), streams=streams)
            success = result.success
            assert success is not None
            if verify is not None and bool(success.any()):
                success = success & verify(result.x_adv, y[rows])
            still[rows] = ~success
            if radius <= eps_eval:
                x_adv[rows[success]] = result.x_adv[success].to(x_adv.dtype)
        broken_at[(broken_at == len(radii)) & ~still] = i
    return broken_at, x_adv


MINNORM = "minnorm"  # eps_curve="minnorm" / --eps-curve minnorm


def minnorm_curve_attack(mode: str, threat: ThreatModel, curve_attack: Attack | None) -> Attack:
    """The attack of ``eps_curve="minnorm"``: ``curve_attack`` if it is a minimum-norm attack, else FMN (100 steps)."""
    if mode.strip().lower() != MINNORM:
        raise ConfigError(f"eps_curve must be a list of radii or {MINNORM!r}, got {mode!r}")
    if _per_sample(threat):
        raise ConfigError("an eps-curve needs a scalar eps; the threat model has a per-sample eps")
    check_norm("the minnorm eps-curve", threat)
    if curve_attack is None:
        return FMN()
    if not curve_attack.minimum_norm:
        raise ConfigError(f"the minnorm eps-curve needs a minimum-norm curve attack (fmn, fab_t), got "
                          f"{curve_attack.name!r}")
    return curve_attack


def _minnorm_curve_batch(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, radii: list[float], clean_correct: Tensor,
    robust: Tensor, attack: Attack, seed: int, verify: Callable[[Tensor, Tensor], Tensor] | None,
    ids: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """:func:`_curve_batch` from one minimum-norm run at the largest radius: a point is broken at radius r when its
    smallest adversarial norm is ≤ r, when it is misclassified clean, or (r ≥ ε) when the suite broke it."""
    x_adv = x.detach().clone()
    smallest = torch.full(y.shape, float("inf"), device=x.device)
    rows = clean_correct.nonzero().squeeze(1)
    top = max(radii)
    if rows.numel():
        streams = None if ids is None else SampleStreams.of(stream_seed(seed, 1000), ids[rows])
        result = attack(model, x[rows], y[rows], threat.with_eps(top), streams=streams)
        assert result.success is not None and result.min_norm is not None
        success = result.success
        if verify is not None and bool(success.any()):
            success = success & verify(result.x_adv, y[rows])
        # Broken within the largest radius (by the smallest point, or by its projection onto that ball): that norm.
        norm = torch.where(success, result.min_norm.float().clamp(max=top), torch.full_like(success, float("inf"),
                                                                                           dtype=torch.float))
        smallest[rows] = norm.to(smallest.device)
        at_eps = rows[success & (norm <= float(threat.eps))]
        x_adv[at_eps] = result.x_adv[success & (norm <= float(threat.eps))].to(x_adv.dtype)
    radius = torch.tensor(radii, device=x.device, dtype=smallest.dtype)
    broken = ((smallest[:, None] <= radius[None, :]) | ~clean_correct[:, None]
              | (~robust[:, None] & (radius[None, :] >= float(threat.eps))))  # (B, R), monotone in r
    broken_at = torch.where(broken.any(1), broken.float().argmax(1), torch.full_like(y, len(radii)))
    return broken_at.to(y.dtype), x_adv


def stream_seed(seed: int, stream: int) -> int:
    """The seed of the per-sample streams of one attack (``stream``: the suite attack k, or 1000 + the ε-curve's
    radius index); the same for every batch, so a point's draws depend on its global index alone."""
    return (seed * 1_000_003 + stream + 1) & (2**63 - 1)


def _verifier(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """A break found under bf16 counts only if the fp32 model misclassifies the input too."""

    def misclassified(x_adv: Tensor, y: Tensor) -> Tensor:
        with frozen_model(model), torch.no_grad():
            return model(x_adv.float()).argmax(1) != y

    return misclassified


def _record_fits(
    record: Record, *, batch: int, first: int, size: int, n_attacks: int, n_radii: int, n_examples: int,
    point_shape: tuple[int, ...], metrics: Sequence[str] = (),
) -> bool:
    """Whether a record read back from the state is whole and belongs to this batch of this evaluation."""
    try:
        ints = [*record["broken_by"], *record["curve_broken_at"], *record["attacked"]]
        numbers = [*record["time_s"], *record["queries"], record["curve_time_s"]]
        keep = max(0, min(n_examples - first, size))
        adv = torch.tensor(record["adv"], dtype=torch.float32) if record["adv"] else torch.empty(0, *point_shape)
        perceptual = record["perceptual"]  # written by evaluations since the perceptual metrics: older ones rerun
        columns = [perceptual[m] for m in metrics]
    except (KeyError, TypeError, ValueError, RuntimeError):
        return False
    return (
        record["batch"] == batch and record["first"] == first
        and len(record["broken_by"]) == size and len(record["curve_broken_at"]) == size
        and len(record["time_s"]) == len(record["queries"]) == len(record["attacked"]) == n_attacks
        and all(type(v) is int for v in ints) and all(isinstance(v, int | float) for v in numbers)
        and all(WRONG <= v < n_attacks or v == NOT_BROKEN for v in record["broken_by"])
        and all(0 <= v <= n_radii for v in record["curve_broken_at"])
        and tuple(adv.shape) == (keep, *point_shape)
        and isinstance(perceptual, dict) and set(perceptual) == set(metrics)
        and all(isinstance(c, list) and len(c) == size for c in columns)
        and all(v is None or (isinstance(v, int | float) and math.isfinite(v)) for c in columns for v in c)
    )


# ----------------------------------------------------------------------------- assembling the records
def _assemble(
    records: list[Record], n: int, cascade: Cascade, radii: list[float], eps: float | None, curve_attack: Attack,
    *, probe_broken: Sequence[int] = (),
) -> dict[str, Any]:
    """Per-point outcomes from the batch records, with every break at a radius ≤ ε counted.

    ``broken_by`` indexes the sources: the cascade's attacks, then the ε-curve (breaks at radii ≤ ε the suite
    missed), then the checks' probes (``probe_broken``: points their attacks broke at radius ≤ ε)."""
    broken_by = torch.tensor([v for r in records for v in r["broken_by"]], dtype=torch.long)
    broken_at = torch.tensor([v for r in records for v in r["curve_broken_at"]], dtype=torch.long)
    if len(broken_by) != n:
        raise DataError(f"the evaluation state covers {len(broken_by)} points, expected {n}")
    clean_correct = broken_by != WRONG
    suite_robust = clean_correct & (broken_by == NOT_BROKEN)
    n_suite = len(cascade.attacks)
    at_eps = radii.index(eps) if eps is not None and eps in radii else None
    curve_hit = suite_robust & (broken_at <= at_eps) if at_eps is not None else torch.zeros_like(suite_robust)
    broken_by[curve_hit] = n_suite
    probe_hit = torch.zeros_like(suite_robust)
    probe_hit[torch.tensor(sorted(probe_broken), dtype=torch.long)] = True
    probe_hit &= clean_correct & (broken_by == NOT_BROKEN)
    broken_by[probe_hit] = n_suite + 1
    if at_eps is not None:  # a point broken at ε is broken at every larger radius: the curve meets the headline
        broken_at[probe_hit] = torch.clamp(broken_at[probe_hit], max=at_eps)

    robust: dict[str, Tensor] = {}
    rows: list[dict[str, Any]] = []
    for k, (label, attack) in enumerate(zip(cascade.labels, cascade.attacks, strict=True)):
        still = clean_correct & ((broken_by == NOT_BROKEN) | (broken_by > k))
        robust[label] = still
        rows.append({
            "name": label, "source": "suite", "settings": attack.describe(),
            "robust_accuracy": float(still.float().mean()), "broken": int((broken_by == k).sum()),
            "attacked": sum(r["attacked"][k] for r in records), "time_s": sum(r["time_s"][k] for r in records),
            "queries": max(r["queries"][k] for r in records), "black_box": attack.black_box,
        })
    extra = []
    if at_eps is not None:
        extra.append((CURVE_SOURCE, n_suite, curve_attack.describe(),
                      sum(r["curve_time_s"] for r in records), curve_attack.black_box))
    if probe_broken:
        extra.append((PROBE_SOURCE, n_suite + 1, {"name": "the checks' attacks on their probe points"}, 0.0, False))
    for label, code, settings, seconds, black_box in extra:
        still = clean_correct & ((broken_by == NOT_BROKEN) | (broken_by > code))
        robust[label] = still
        rows.append({
            "name": label, "source": label, "settings": settings, "robust_accuracy": float(still.float().mean()),
            "broken": int((broken_by == code).sum()), "attacked": int(suite_robust.sum()), "time_s": seconds,
            "queries": None, "black_box": black_box,
        })
    curve = [{"eps": radius, "robust_accuracy": float((broken_at > i).float().mean())}
             for i, radius in enumerate(radii)]
    return {"clean_correct": clean_correct, "broken_by": broken_by, "robust": robust, "suite_robust": suite_robust,
            "worst_case": clean_correct & (broken_by == NOT_BROKEN), "attacks": rows, "curve": curve}


def _examples(
    model: nn.Module, x: Tensor, y: Tensor, records: list[Record], n_examples: int, device: torch.device
) -> dict[str, Tensor]:
    n = min(n_examples, len(x))
    adv = [row for r in records for row in r["adv"]][:n]
    clean = x[:n]
    adv_x = torch.tensor(adv, dtype=clean.dtype).reshape(clean.shape) if n else clean.clone()
    with frozen_model(model), torch.no_grad():
        clean_pred = model(clean.to(device)).argmax(1).cpu()
        adv_pred = model(adv_x.to(device)).argmax(1).cpu()
    return {"clean": clean.cpu(), "adv": adv_x, "labels": y[:n].cpu(), "clean_pred": clean_pred, "adv_pred": adv_pred}


def _perceptual(
    records: list[Record], outcome: dict[str, Any], metrics: Sequence[str], settings: dict[str, Any],
    notes: list[str],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Per point each perceptual metric (NaN where no adversarial input was kept), and report.json's ``perceptual``:
    for each source of breaks that keeps its adversarial inputs (the suite's attacks and ``eps_curve``; not the
    checks' probes), each metric's distribution over the points it broke (:func:`sparring.perceptual.distribution`)."""
    values = {m: torch.tensor([math.nan if v is None else v for r in records for v in r["perceptual"][m]],
                              dtype=torch.float64) for m in metrics}
    broken_by = outcome["broken_by"]
    suite = [row["name"] for row in outcome["attacks"] if row["source"] == "suite"]
    by_attack = {label: {m: perceptual_.distribution(v[broken_by == code]) for m, v in values.items()}
                 for code, label in source_codes(suite).items() if label in outcome["robust"] and label != PROBE_SOURCE}
    notes = list(notes)
    probes = int((broken_by == len(suite) + 1).sum())  # the probes' code (source_codes)
    if probes:
        notes.append(f"{probes} point(s) broken only by the checks' own attacks have no kept adversarial input: "
                     "no perceptual metrics for them.")
    return values, {"metrics": list(metrics), "by_attack": by_attack, "settings": settings, "notes": notes}


# ----------------------------------------------------------------------------- checks
def _run_checks(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, cascade: Cascade, outcome: dict[str, Any],
    radii: list[float], curve_attack: Attack, batch_size: int, seed: int, device: torch.device,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every check of :mod:`sparring.checks`; the model-based ones on a probe batch (the first points).

    Returns the checks and the indices of the points their own attacks broke at a radius ≤ ε (they count)."""
    n = min(len(x), batch_size, 256)
    probe = torch.arange(n)
    px, py = x[:n].to(device), y[:n].to(device)
    probe_threat = threat.subset(probe)
    generator = batch_generator(device, seed, CHECK_STREAM, 0)
    found = [
        checks_.gradients_finite_nonzero(model, px, py),
        checks_.deterministic_model(model, px),
        checks_.outputs_not_probabilities(model, px),
    ]
    masking = [c["name"] for c in found if c["passed"] is False]
    broken: list[int] = []
    if threat.steppable:
        black_box, broken = _black_box_check(model, px, py, probe_threat, cascade, outcome, generator, masking)
        found += [black_box, checks_.large_eps_breaks_model(model, px, py, probe_threat, curve_attack, generator)]
    else:  # a point budget: Square does not apply, and dropping every point leaves a cloud that is still a class
        found += [
            checks_.check("black_box_not_stronger", None, f"no black-box attack applies to the {threat.norm} threat"),
            checks_.check("large_eps_breaks_model", None,
                          f"an unlimited {threat.norm} budget leaves a degenerate input that is still some class"),
        ]
    clean = float(outcome["clean_correct"].float().mean())
    if radii and radii[0] == 0:
        found.append(checks_.eps_zero_matches_clean(outcome["curve"][0]["robust_accuracy"], clean, "on all points"))
    else:
        result = curve_attack(model, px, py, probe_threat.with_eps(0.0), generator=generator)
        correct = outcome["clean_correct"][:n].to(device)
        at_zero = float((result.robust & correct).float().mean())
        broken += (~result.robust & correct).nonzero().squeeze(1).tolist()  # ε = 0 ≤ ε: such a break counts too
        found.append(checks_.eps_zero_matches_clean(at_zero, float(correct.float().mean()), f"on the first {n} points"))
    return found, sorted(set(broken))


def _black_box_check(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, cascade: Cascade, outcome: dict[str, Any],
    generator: torch.Generator, masking: list[str],
) -> tuple[dict[str, Any], list[int]]:
    """The black-box check, and the probe points its own Square broke (when the suite has no black-box attack)."""
    white = [label for label, a in zip(cascade.labels, cascade.attacks, strict=True) if not a.black_box]
    black = [k for k, a in enumerate(cascade.attacks) if a.black_box]
    white_names = ", ".join(white) or "no white-box attack"
    if black and white:
        first = black[0]
        broken = int(sum((outcome["broken_by"] == k).sum() for k in black))
        attacked = outcome["attacks"][first]["attacked"]
        names = ", ".join(cascade.labels[k] for k in black)
        evaluated = len(outcome["broken_by"])
        return checks_.black_box_not_stronger(broken, attacked, names, white_names, evaluated=evaluated,
                                              masking=masking), []
    if black:
        return checks_.check("black_box_not_stronger", None, "the suite has no white-box attack to compare with"), []
    if threat.norm not in ("linf", "l2"):  # Square has no L1 version
        return checks_.check("black_box_not_stronger", None, f"no black-box attack applies to the {threat.norm} "
                             "threat"), []
    # No black-box attack in the suite: run a short Square on the probe points every other attack left robust.
    rows = outcome["worst_case"][: len(x)].nonzero().squeeze(1).to(x.device)
    name = f"square ({CHECK_SQUARE_QUERIES} queries, first {len(x)} points)"
    if rows.numel() == 0:
        return checks_.black_box_not_stronger(0, 0, name, white_names, masking=masking), []
    square = Square(queries=CHECK_SQUARE_QUERIES)
    result = square(model, x[rows], y[rows], threat.subset(rows), generator=generator)
    hit = rows[result.success] if result.success is not None else rows[:0]
    check = checks_.black_box_not_stronger(int(hit.numel()), int(rows.numel()), name, white_names, evaluated=len(x),
                                           masking=masking)
    return check, hit.tolist()


# ----------------------------------------------------------------------------- helpers
def _radii(threat: ThreatModel, eps_curve: Sequence[float] | None) -> list[float]:
    if _per_sample(threat):
        if eps_curve:
            raise ConfigError("an eps-curve needs a scalar eps; the threat model has a per-sample eps")
        return []
    eps = float(threat.eps)
    radii = list(eps_curve) if eps_curve is not None else default_eps_curve(eps)
    if any(r < 0 or r != r for r in radii):
        raise ConfigError(f"every eps of the curve must be >= 0, got {radii}")
    if not radii:
        return []
    # The curve passes through the headline: ε is one of its radii (a radius within rounding of ε is ε).
    snapped = {eps if abs(float(r) - eps) <= 1e-9 * max(eps, 1.0) else float(r) for r in radii}
    return sorted(snapped | {eps})


def _per_sample(threat: ThreatModel) -> bool:
    return isinstance(threat.eps, Tensor) and threat.eps.dim() == 1


def _eps_list(threat: ThreatModel) -> float | list[float]:
    return threat.eps.tolist() if isinstance(threat.eps, Tensor) else float(threat.eps)


def _with_precision(attack: Attack, precision: str) -> Attack:
    return dataclasses.replace(attack, precision=precision) if attack.precision != precision else attack


def _name(data: Dataset | tuple[Tensor, Tensor]) -> str:
    return data.name if isinstance(data, Dataset) else "data"


def _unpack(data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
    if isinstance(data, Dataset):
        return data.x, data.y, list(data.class_names)
    x, y = data
    return x, y, [str(i) for i in range(int(y.max()) + 1)]





def build_report(
    evaluation: Evaluation,
    *,
    run_name: str,
    objective: dict[str, Any] | None,
    model: dict[str, Any],
    data: dict[str, Any],
    training: TrainResult | None,
    task: str = "classification",
) -> dict[str, Any]:
    """Assemble a classifier's report.json (schema in docs/report.md): the common header, then the evaluation."""
    summary = evaluation.to_dict()
    counts = data.get("train_class_counts")
    if counts is not None and len(counts) == len(summary["per_class"]):
        for row, count in zip(summary["per_class"], counts, strict=True):
            row["train_count"] = int(count)
    return {
        **header(task=task, run_name=run_name, threat=summary.get("threat")),
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
    write_examples(out, evaluation)
    write_html(out)


def write_examples(out: Path, evaluation: Evaluation) -> None:
    """``examples.npz``: the first clean / adversarial pairs with labels and predictions, and ``attack``, the name
    of the source that broke each one ("" where none did; ``sparring rate`` groups ratings by it)."""
    arrays = {k: v.numpy() for k, v in evaluation.examples.items()}
    n = len(arrays.get("clean", ()))
    names = evaluation.found_by()[:n]
    arrays["attack"] = np.array([name if name not in (None, "clean") else "" for name in names], dtype=str)
    np.savez_compressed(out / "examples.npz", **arrays)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_data(train: Dataset | None, test: Dataset, evaluation: Evaluation) -> dict[str, Any]:
    return {
        "name": test.name,
        "n_train": len(train) if train is not None else None,
        "n_eval": len(evaluation.labels),
        "num_classes": test.num_classes,
        "class_names": list(test.class_names),
        "train_class_counts": train.class_counts().tolist() if train is not None else None,
        **({"layout": test.layout} if test.layout else {}),
    }


__all__ = ["Evaluation", "build_report", "default_curve_attack", "default_eps_curve", "describe_data", "evaluate",
           "long_tail_summary", "parameters", "shot_groups", "shot_thresholds", "tail_fraction_group",
           "write_run_report"]
