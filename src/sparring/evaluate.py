"""Evaluation: clean and robust accuracy, per attack and per-sample worst case, per class, ε-curves, checks.

``evaluate(model, data, threat)`` runs an attack suite as a cascade (see :mod:`sparring.attacks.cascade`;
default ``standard``: APGD-CE → APGD-T → Square, AutoAttack's order and budgets): each attack only runs
on the points still robust, and a point counts as robust only if every attack failed on it.

The ε-curve reuses the cascade across radii: a point broken at ε is broken at every larger ε, so each
radius only attacks the points still robust, and the points broken by the full suite at the evaluated ε
count as broken at every radius above it. The curve is monotone and consistent with the headline.

The points are split into fixed batches, each with its own generators seeded by ``(seed, batch)``, so an
evaluation can be resumed from its state folder and sharded across processes with identical numbers
(:mod:`sparring.eval_state`). Checks (:mod:`sparring.checks`) never change a number: they mark it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparring import checks as checks_
from sparring.attacks import APGD, Attack, Square
from sparring.attacks.base import PRECISIONS
from sparring.attacks.cascade import NOT_BROKEN, Cascade, as_cascade, check_attacks_fit
from sparring.context import device_of, frozen_model
from sparring.data import Dataset
from sparring.errors import ConfigError, DataError
from sparring.eval_state import (
    EvalState,
    Record,
    batch_generator,
    broadcast,
    fingerprint,
    gather_records,
    my_batches,
    world,
)
from sparring.threat import ThreatModel

log = logging.getLogger(__name__)

WRONG = -2  # broken_by code of a point the model misclassifies without attack
CHECK_SQUARE_QUERIES = 1000  # budget of the black-box check when the suite has no black-box attack
CHECK_STREAM = 10**9  # the checks' generator, apart from every batch's


def default_curve_attack() -> Attack:
    """APGD on the CW margin, 20 steps: cheap, and it does not saturate like CE on confident models."""
    return APGD(loss="margin", steps=20)


def default_eps_curve(eps: float, points: int = 9) -> list[float]:
    """``points`` radii from 0 to 2ε (the evaluated ε included)."""
    return [2 * eps * i / (points - 1) for i in range(points)]


@dataclass
class Evaluation:
    """Per-sample outcomes and summaries; ``to_dict`` gives the report.json fields.

    ``robust[label]`` is the robust mask after the cascade's attacks up to ``label`` (cumulative);
    ``worst_case`` is the mask after all of them. ``broken_by`` is per point the index of the attack
    that broke it, −1 if none did, −2 if the clean input is already misclassified.
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
    time_s: float = 0.0
    suite_time_s: float = 0.0
    curve_time_s: float = 0.0

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.worst_case.float().mean())

    @property
    def trustworthy(self) -> bool:
        return all(c["passed"] is not False for c in self.checks)

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
            "checks": self.checks,
            "trustworthy": self.trustworthy,
            "timing": {"eval_s": self.time_s, "suite_s": self.suite_time_s, "eps_curve_s": self.curve_time_s},
        }


LONG_TAIL_MIN_RATIO = 2.0  # the imbalance from which a report shows head / medium / tail groups


def long_tail_summary(per_class: list[dict[str, Any]], class_counts: Sequence[int] | None) -> dict[str, Any] | None:
    """Head / medium / tail accuracy (clean and robust) from per-class rows and training class counts.

    Classes are ranked by training count (most frequent first, ties by index); the top third (rounded)
    is the head, the bottom third the tail, the rest medium — CIFAR-10-LT's usual 3 / 4 / 3 split. A
    group's accuracy is the mean of its classes' accuracies (balanced within the group). ``None`` when the
    counts are unknown, do not match the classes, or are nearly balanced (largest / smallest count below
    :data:`LONG_TAIL_MIN_RATIO`): ranking classes by a few examples more or less means nothing.
    """
    k = len(per_class)
    if class_counts is None or len(class_counts) != k or k < 3:
        return None
    if max(class_counts) < LONG_TAIL_MIN_RATIO * max(min(class_counts), 1):
        return None
    order = sorted(range(k), key=lambda c: (-int(class_counts[c]), c))
    third = max(1, round(k / 3))
    groups = {"head": order[:third], "medium": order[third:k - third], "tail": order[k - third:]}
    out: dict[str, Any] = {"imbalance_ratio": max(class_counts) / max(min(class_counts), 1), "split": "rank thirds"}
    for group, members in groups.items():
        present = [per_class[c] for c in members if per_class[c]["n"]]
        out[group] = {
            "classes": members,
            "train_samples": int(sum(class_counts[c] for c in members)),
            "clean": sum(r["clean_accuracy"] for r in present) / len(present) if present else None,
            "robust": sum(r["robust_accuracy"] for r in present) / len(present) if present else None,
        }
    return out


def evaluate(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    threat: ThreatModel,
    *,
    suite: str | Cascade | Sequence[Attack] = "standard",
    eps_curve: Sequence[float] | None = None,
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
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` under ``threat``.

    Args:
        suite: ``"fast"``, ``"standard"`` (default) or ``"plus"``, a :class:`Cascade`, or a list of
            attacks run as a cascade in that order.
        eps_curve: radii of the ε-curve (default 9 points from 0 to 2ε; ``[]`` to skip).
        curve_attack: the attack of the ε-curve cascade and of the large-ε check (default
            :func:`default_curve_attack`).
        max_samples: evaluate the first ``max_samples`` points only.
        precision: ``"fp32"`` or ``"bf16"`` (attacks under bfloat16 autocast; breaks re-checked in fp32).
        state_dir: write the evaluation's state there as it proceeds and resume from it (same arguments).
        fresh: discard an existing state in ``state_dir`` instead of resuming it.
        notify: called with a short message as each stage starts.
        progress: called with ``(batches done, batches)`` after each batch of this process.

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
    if curve_attack is None:  # a point budget has no APGD: its curve reruns the suite's first attack
        curve_attack = default_curve_attack() if threat.steppable else cascade.attacks[0]
    check_attacks_fit([curve_attack], threat)
    curve_attack = _with_precision(curve_attack, precision)
    radii = _radii(threat, eps_curve)
    notify = notify or (lambda message: None)

    n_batches = (len(x) + batch_size - 1) // batch_size
    state = None
    if state_dir is not None:
        settings = {
            "threat": threat.describe(), "eps": _eps_list(threat), "suite": cascade.describe(),
            "radii": radii, "curve_attack": curve_attack.describe(), "batch_size": batch_size, "seed": seed,
            "n": len(x), "precision": precision, "n_examples": n_examples,
        }
        state = EvalState(Path(state_dir), fingerprint(model, x, y, settings), settings, fresh=fresh)

    mine = my_batches(n_batches)
    records: list[Record] = []
    notify(f"suite {cascade.name}: {', '.join(cascade.labels)} on {len(x)} points ({n_batches} batches)")
    for done, b in enumerate(mine, 1):
        record = state.load(b) if state is not None else None
        if record is None:
            rows = torch.arange(b * batch_size, min((b + 1) * batch_size, len(x)))
            record = _evaluate_batch(
                model, x[rows].to(device), y[rows].to(device), threat.subset(rows), cascade, radii, curve_attack,
                seed=seed, batch=b, first=int(rows[0]), n_examples=n_examples, precision=precision,
            )
            if state is not None:
                state.save(b, record)
        records.append(record)
        if progress is not None:
            progress(done, len(mine))
    records = gather_records(records)

    outcome = _assemble(records, len(x), cascade, radii, device=torch.device("cpu"))
    notify("checks")
    check_list = broadcast(
        _run_checks(model, x, y, threat, cascade, outcome, radii, curve_attack, batch_size, seed, device)
        if world()[0] == 0 else None
    )
    checks_.log_failures(check_list)
    return Evaluation(
        threat=threat, suite=cascade.name, labels=y.cpu(), clean_correct=outcome["clean_correct"],
        broken_by=outcome["broken_by"], robust=outcome["robust"], worst_case=outcome["worst_case"],
        attacks=outcome["attacks"], eps_curve=outcome["curve"], checks=check_list, class_names=class_names,
        examples=_examples(model, x, y, records, n_examples, device),
        time_s=time.perf_counter() - started, suite_time_s=sum(row["time_s"] for row in outcome["attacks"]),
        curve_time_s=sum(r["curve_time_s"] for r in records),
    )


# ----------------------------------------------------------------------------- one batch
def _evaluate_batch(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, cascade: Cascade, radii: list[float],
    curve_attack: Attack, *, seed: int, batch: int, first: int, n_examples: int, precision: str,
) -> Record:
    """Clean prediction, the cascade, the ε-curve cascade: the JSON record of one batch."""
    with frozen_model(model), torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    verify = _verifier(model) if precision != "fp32" else None
    result = cascade.run(
        model, x, y, threat, active=clean_correct, verify=verify,
        generator_for=lambda k: batch_generator(x.device, seed, batch, k),
    )
    broken_by = torch.where(clean_correct, result.broken_by, torch.full_like(result.broken_by, WRONG))
    robust = broken_by == NOT_BROKEN
    started = time.perf_counter()
    curve_broken_at = _curve_batch(model, x, y, threat, radii, clean_correct, robust, curve_attack, seed, batch,
                                   verify)
    curve_time = time.perf_counter() - started
    keep = max(0, min(n_examples - first, len(x)))
    return {
        "batch": batch,
        "first": first,
        "broken_by": broken_by.tolist(),
        "curve_broken_at": curve_broken_at.tolist(),
        "time_s": result.time_s,
        "curve_time_s": curve_time,
        "queries": result.queries,
        "attacked": result.attacked,
        "adv": result.x_adv[:keep].float().cpu().tolist(),
    }


def _curve_batch(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, radii: list[float], clean_correct: Tensor,
    robust: Tensor, attack: Attack, seed: int, batch: int, verify: Callable[[Tensor, Tensor], Tensor] | None,
) -> Tensor:
    """(B,) index of the first radius at which the point is broken (``len(radii)``: never)."""
    broken_at = torch.full_like(y, len(radii))
    if not radii:
        return broken_at
    eps_eval = float(threat.eps)
    still = clean_correct.clone()
    for i, radius in enumerate(radii):
        if radius >= eps_eval - 1e-12:
            still &= robust  # broken by the full suite at ε ⇒ broken at every larger radius
        rows = still.nonzero().squeeze(1)
        if rows.numel():  # ε = 0 is attacked too: that is what the eps_zero check verifies
            result = attack(model, x[rows], y[rows], threat.with_eps(radius),
                            generator=batch_generator(x.device, seed, batch, 1000 + i))
            success = result.success
            assert success is not None
            if verify is not None and bool(success.any()):
                success = success & verify(result.x_adv, y[rows])
            still[rows] = ~success
        broken_at[(broken_at == len(radii)) & ~still] = i
    return broken_at


def _verifier(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """A break found under bf16 counts only if the fp32 model misclassifies the input too."""

    def misclassified(x_adv: Tensor, y: Tensor) -> Tensor:
        with frozen_model(model), torch.no_grad():
            return model(x_adv.float()).argmax(1) != y

    return misclassified


# ----------------------------------------------------------------------------- assembling the records
def _assemble(
    records: list[Record], n: int, cascade: Cascade, radii: list[float], device: torch.device
) -> dict[str, Any]:
    broken_by = torch.tensor([v for r in records for v in r["broken_by"]], dtype=torch.long, device=device)
    broken_at = torch.tensor([v for r in records for v in r["curve_broken_at"]], dtype=torch.long, device=device)
    if len(broken_by) != n:
        raise DataError(f"the evaluation state covers {len(broken_by)} points, expected {n}")
    clean_correct = broken_by != WRONG
    robust: dict[str, Tensor] = {}
    rows: list[dict[str, Any]] = []
    for k, (label, attack) in enumerate(zip(cascade.labels, cascade.attacks, strict=True)):
        still = clean_correct & ((broken_by == NOT_BROKEN) | (broken_by > k))
        robust[label] = still
        rows.append({
            "name": label, "settings": attack.describe(), "robust_accuracy": float(still.float().mean()),
            "broken": int((broken_by == k).sum()), "attacked": sum(r["attacked"][k] for r in records),
            "time_s": sum(r["time_s"][k] for r in records), "queries": max(r["queries"][k] for r in records),
            "black_box": attack.black_box,
        })
    curve = [{"eps": radius, "robust_accuracy": float((broken_at > i).float().mean())}
             for i, radius in enumerate(radii)]
    return {"clean_correct": clean_correct, "broken_by": broken_by, "robust": robust,
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


# ----------------------------------------------------------------------------- checks
def _run_checks(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, cascade: Cascade, outcome: dict[str, Any],
    radii: list[float], curve_attack: Attack, batch_size: int, seed: int, device: torch.device,
) -> list[dict[str, Any]]:
    """Every check of :mod:`sparring.checks`; the model-based ones on a probe batch (the first points)."""
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
    if threat.steppable:
        found += [
            _black_box_check(model, px, py, probe_threat, cascade, outcome, generator),
            checks_.large_eps_breaks_model(model, px, py, probe_threat, curve_attack, generator),
        ]
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
        at_zero = float((result.robust & outcome["clean_correct"][:n].to(device)).float().mean())
        found.append(checks_.eps_zero_matches_clean(
            at_zero, float(outcome["clean_correct"][:n].float().mean()), f"on the first {n} points"))
    return found


def _black_box_check(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, cascade: Cascade, outcome: dict[str, Any],
    generator: torch.Generator,
) -> dict[str, Any]:
    white = [label for label, a in zip(cascade.labels, cascade.attacks, strict=True) if not a.black_box]
    black = [k for k, a in enumerate(cascade.attacks) if a.black_box]
    white_names = ", ".join(white) or "no white-box attack"
    if black and white:
        first = black[0]
        broken = int(sum((outcome["broken_by"] == k).sum() for k in black))
        attacked = outcome["attacks"][first]["attacked"]
        names = ", ".join(cascade.labels[k] for k in black)
        return checks_.black_box_not_stronger(broken, attacked, names, white_names)
    if black:
        return checks_.check("black_box_not_stronger", None, "the suite has no white-box attack to compare with")
    # No black-box attack in the suite: run a short Square on the probe points the suite left robust.
    rows = outcome["worst_case"][: len(x)].nonzero().squeeze(1).to(x.device)
    if rows.numel() == 0:
        return checks_.black_box_not_stronger(0, 0, f"square ({CHECK_SQUARE_QUERIES} queries)", white_names,
                                              counted=False)
    square = Square(queries=CHECK_SQUARE_QUERIES)
    result = square(model, x[rows], y[rows], threat.subset(rows), generator=generator)
    return checks_.black_box_not_stronger(
        int(result.success.sum()) if result.success is not None else 0, int(rows.numel()),
        f"square ({CHECK_SQUARE_QUERIES} queries, first {len(x)} points)", white_names, counted=False,
    )


# ----------------------------------------------------------------------------- helpers
def _radii(threat: ThreatModel, eps_curve: Sequence[float] | None) -> list[float]:
    if _per_sample(threat):
        if eps_curve:
            raise ConfigError("an eps-curve needs a scalar eps; the threat model has a per-sample eps")
        return []
    radii = list(eps_curve) if eps_curve is not None else default_eps_curve(float(threat.eps))
    if any(r < 0 or r != r for r in radii):
        raise ConfigError(f"every eps of the curve must be >= 0, got {radii}")
    return sorted(set(float(r) for r in radii))


def _per_sample(threat: ThreatModel) -> bool:
    return isinstance(threat.eps, Tensor) and threat.eps.dim() == 1


def _eps_list(threat: ThreatModel) -> float | list[float]:
    return threat.eps.tolist() if isinstance(threat.eps, Tensor) else float(threat.eps)


def _with_precision(attack: Attack, precision: str) -> Attack:
    return dataclasses.replace(attack, precision=precision) if attack.precision != precision else attack


def _unpack(data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
    if isinstance(data, Dataset):
        return data.x, data.y, list(data.class_names)
    x, y = data
    return x, y, [str(i) for i in range(int(y.max()) + 1)]



__all__ = ["Evaluation", "evaluate", "default_curve_attack", "default_eps_curve"]
