"""Evaluation: clean and robust accuracy, per attack and per-sample worst case, per class, ε-curves, checks.

``evaluate(model, data, threat)`` runs every attack on every point (so each attack's own robust
accuracy is reported) and takes the per-sample worst case: a point counts as robust only if no attack
broke it. The ε-curve reuses a cascade: a point broken at ε is broken at every larger ε, so each
larger ε only attacks the points still robust, and the points broken by the full attack set at the
evaluated ε stay broken above it. The curve is therefore monotone and consistent with the headline.

Checks flag numbers that should not be trusted (they never change a number, they mark it):
``eps_zero_matches_clean``, ``large_eps_breaks_model``, ``gradients_finite_nonzero``,
``deterministic_model`` and ``outputs_not_probabilities``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks import FGSM, PGD, Attack
from sparring.context import frozen_model
from sparring.data import Dataset
from sparring.errors import ConfigError, DataError
from sparring.losses import cross_entropy
from sparring.threat import ThreatModel

log = logging.getLogger(__name__)


def default_attacks() -> list[Attack]:
    """FGSM, PGD-50 on CE with 2 restarts, PGD-50 on the CW margin (robust to CE saturation)."""
    return [FGSM(), PGD(steps=50, restarts=2), PGD(steps=50, loss="margin")]


def default_eps_curve(eps: float, points: int = 9) -> list[float]:
    """``points`` radii from 0 to 2ε (the evaluated ε included)."""
    return [2 * eps * i / (points - 1) for i in range(points)]


@dataclass
class Evaluation:
    """Per-sample outcomes and summaries; ``to_dict`` gives the report.json fields."""

    threat: ThreatModel
    labels: Tensor
    clean_correct: Tensor
    robust: dict[str, Tensor]
    worst_case: Tensor
    attacks: list[dict[str, Any]]
    eps_curve: list[dict[str, float]]
    checks: list[dict[str, Any]]
    class_names: list[str]
    examples: dict[str, Tensor] = field(default_factory=dict)
    time_s: float = 0.0

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
            "timing": {"eval_s": self.time_s},
        }


def evaluate(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    threat: ThreatModel,
    *,
    attacks: Sequence[Attack] | None = None,
    eps_curve: Sequence[float] | None = None,
    curve_attack: Attack | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    n_examples: int = 8,
    device: torch.device | str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` under ``threat``.

    Args:
        attacks: attacks to run (default :func:`default_attacks`), each on every point.
        eps_curve: radii of the ε-curve (default 9 points from 0 to 2ε; ``[]`` to skip).
        curve_attack: the attack of the ε-curve cascade (default PGD-20 on the margin loss).
        max_samples: evaluate the first ``max_samples`` points only.
        notify: called with a short message as each stage starts.
    """
    started = time.perf_counter()
    x, y, class_names = _unpack(data)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    if isinstance(threat.eps, Tensor) and threat.eps.dim() == 1 and threat.eps.shape[0] != len(x):
        raise DataError(f"per-sample eps has {threat.eps.shape[0]} entries for {len(x)} evaluated samples")
    device = torch.device(device) if device is not None else _device_of(model)
    x, y = x.to(device), y.to(device)
    attacks = list(attacks) if attacks is not None else default_attacks()
    unscored = [a.name for a in attacks if not a.score]
    if unscored:
        raise ConfigError(f"evaluation needs scored attacks; {unscored} were built with score=False")
    notify = notify or (lambda message: None)

    with frozen_model(model), torch.no_grad():
        clean_correct = torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)]) == y

    robust: dict[str, Tensor] = {}
    attack_rows: list[dict[str, Any]] = []
    adv_examples = x[:n_examples].clone()
    broken_seen = torch.zeros(min(n_examples, len(x)), dtype=torch.bool, device=device)
    for attack, label in zip(attacks, _labels(attacks), strict=True):
        notify(f"attack {label}")
        t0 = time.perf_counter()
        outcome, x_first, queries = _attack_all(model, x, y, threat, attack, batch_size, seed, n_examples)
        outcome &= clean_correct
        robust[label] = outcome
        newly = ~outcome[: len(broken_seen)] & ~broken_seen
        adv_examples[newly] = x_first[newly]
        broken_seen |= ~outcome[: len(broken_seen)]
        attack_rows.append({
            "name": label, "settings": attack.describe(), "robust_accuracy": float(outcome.float().mean()),
            "time_s": time.perf_counter() - t0, "queries": queries,
        })
    worst = clean_correct.clone()
    for outcome in robust.values():
        worst &= outcome

    curve: list[dict[str, float]] = []
    if not isinstance(threat.eps, Tensor):
        radii = list(eps_curve) if eps_curve is not None else default_eps_curve(float(threat.eps))
        notify("eps curve")
        radii = sorted(set(radii))
        curve = _eps_curve(model, x, y, threat, radii, clean_correct, worst, curve_attack, batch_size, seed)

    notify("checks")
    checks = run_checks(model, x, y, threat, clean_correct, curve, curve_attack, batch_size, seed)
    with frozen_model(model), torch.no_grad():
        adv_pred = model(adv_examples).argmax(1)
        clean_pred = model(x[:n_examples]).argmax(1)
    return Evaluation(
        threat=threat, labels=y.cpu(), clean_correct=clean_correct.cpu(),
        robust={k: v.cpu() for k, v in robust.items()}, worst_case=worst.cpu(), attacks=attack_rows,
        eps_curve=curve, checks=checks, class_names=class_names,
        examples={"clean": x[:n_examples].cpu(), "adv": adv_examples.cpu(), "labels": y[:n_examples].cpu(),
                  "clean_pred": clean_pred.cpu(), "adv_pred": adv_pred.cpu()},
        time_s=time.perf_counter() - started,
    )


def _attack_all(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attack: Attack, batch_size: int, seed: int,
    n_keep: int,
) -> tuple[Tensor, Tensor, int]:
    """Robust mask over all points, the adversarial inputs of the first ``n_keep`` points, queries per point."""
    robust, kept, queries = [], [], 0
    for i, start in enumerate(range(0, len(x), batch_size)):
        rows = torch.arange(start, min(start + batch_size, len(x)), device=x.device)
        generator = torch.Generator(device=x.device).manual_seed(seed * 100_003 + i)
        result = attack(model, x[rows], y[rows], threat.subset(rows), generator=generator)
        robust.append(result.robust)
        queries = max(queries, result.queries)
        if start < n_keep:
            kept.append(result.x_adv[: n_keep - start])
    return torch.cat(robust), (torch.cat(kept) if kept else x[:0]), queries


def _eps_curve(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, radii: list[float], clean_correct: Tensor,
    worst: Tensor, attack: Attack | None, batch_size: int, seed: int,
) -> list[dict[str, float]]:
    attack = attack or PGD(steps=20, loss="margin")
    still = clean_correct.clone()
    eps_eval = float(threat.eps)
    curve = []
    for radius in radii:
        if radius >= eps_eval - 1e-12:
            still &= worst  # broken by the full attack set at ε ⇒ broken at every larger radius
        if still.any():  # ε = 0 is attacked too: that is what the eps_zero check verifies
            rows = still.nonzero().squeeze(1)
            outcome, _, _ = _attack_all(model, x[rows], y[rows], threat.with_eps(radius), attack, batch_size, seed, 0)
            still[rows] = outcome
        curve.append({"eps": radius, "robust_accuracy": float(still.float().mean())})
    return curve


# ----------------------------------------------------------------------------- checks
def run_checks(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, clean_correct: Tensor,
    curve: list[dict[str, float]], curve_attack: Attack | None, batch_size: int, seed: int,
) -> list[dict[str, Any]]:
    """Gradient-masking and sanity checks; each is ``{name, passed, detail}``."""
    probe_x, probe_y = x[:batch_size], y[:batch_size]
    checks = [_check_gradients(model, probe_x, probe_y), _check_deterministic(model, probe_x),
              _check_probabilities(model, probe_x)]
    clean = float(clean_correct.float().mean())
    at_zero = next((p["robust_accuracy"] for p in curve if p["eps"] == 0), None)
    if at_zero is None:
        outcome, _, _ = _attack_all(model, x, y, threat.with_eps(0.0), PGD(steps=5), batch_size, seed, 0)
        at_zero = float((outcome & clean_correct).float().mean())
    checks.append({
        "name": "eps_zero_matches_clean", "passed": abs(at_zero - clean) < 1e-9,
        "detail": f"robust accuracy at eps=0 ({at_zero:.4f}) vs clean accuracy ({clean:.4f})",
    })
    checks.append(_check_large_eps(model, x, y, threat, clean_correct, curve_attack, batch_size, seed))
    for check in checks:
        if check["passed"] is False:
            log.warning("check %s failed: %s", check["name"], check["detail"])
    return checks


def _check_gradients(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    with frozen_model(model):
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(cross_entropy(model(xg), y).sum(), xg)
    finite = bool(torch.isfinite(grad).all())
    zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    return {
        "name": "gradients_finite_nonzero", "passed": finite and zero <= 0.5,
        "detail": f"input gradients finite: {finite}; fraction of samples with an all-zero gradient: {zero:.2f}",
    }


def _check_deterministic(model: nn.Module, x: Tensor) -> dict[str, Any]:
    with frozen_model(model), torch.no_grad():
        a, b = model(x), model(x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return {
        "name": "deterministic_model", "passed": diff <= 1e-5,
        "detail": f"max difference between two forward passes on the same batch: {diff:.3g}"
        + ("" if diff <= 1e-5 else " (randomized model: use EOT attacks)"),
    }


def _check_probabilities(model: nn.Module, x: Tensor) -> dict[str, Any]:
    with frozen_model(model), torch.no_grad():
        out = model(x).float()
    probs = bool((out >= 0).all() and (out <= 1).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3))
    return {
        "name": "outputs_not_probabilities", "passed": not probs,
        "detail": "model returns logits" if not probs else
        "model outputs look like softmax probabilities: CE on them masks gradients; return logits",
    }


def _check_large_eps(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, clean_correct: Tensor, attack: Attack | None,
    batch_size: int, seed: int,
) -> dict[str, Any]:
    """An attack with a huge budget must break (almost) everything; if not, gradients are masked."""
    if threat.bounds is not None:
        span = threat.bounds[1] - threat.bounds[0]
        radius = span if threat.norm == "linf" else span * x[0].numel() ** 0.5
    else:
        radius = 100.0 * max(threat.max_eps(), 1e-3)
    n = min(len(x), batch_size)
    attack = attack or PGD(steps=20, loss="margin")
    outcome, _, _ = _attack_all(model, x[:n], y[:n], threat.with_eps(radius), attack, batch_size, seed, 0)
    acc = float((outcome & clean_correct[:n]).float().mean())
    return {
        "name": "large_eps_breaks_model", "passed": acc <= 0.05,
        "detail": f"robust accuracy at eps={radius:.3g} is {acc:.3f} (an unbounded attack must reach ~0)",
    }


# ----------------------------------------------------------------------------- helpers
def _unpack(data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
    if isinstance(data, Dataset):
        return data.x, data.y, list(data.class_names)
    x, y = data
    return x, y, [str(i) for i in range(int(y.max()) + 1)]


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _labels(attacks: Sequence[Attack]) -> list[str]:
    """Unique, readable names: ``pgd``, ``pgd_margin``, ``pgd_2`` ..."""
    labels: list[str] = []
    for attack in attacks:
        base = attack.name if getattr(attack, "loss", "ce") == "ce" else f"{attack.name}_{attack.loss}"
        label, k = base, 2
        while label in labels:
            label, k = f"{base}_{k}", k + 1
        labels.append(label)
    return labels
