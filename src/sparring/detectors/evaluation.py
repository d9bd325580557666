"""Detection evaluation: how well a detector separates attacked from clean inputs, and what is left of it under
an attack that knows the detector.

For a classifier ``f`` and a detector with score ``s(x)`` (higher: more likely adversarial) and an operating
threshold ``t`` (chosen on clean calibration data, never on the points evaluated here):

* **Non-adaptive** (what SAEgis and most detection papers report). Each attack of the suite runs on its own
  (not as a cascade) against ``f`` alone, on the correctly classified points. On the clean scores against the
  scores of the adversarial inputs that fooled ``f``: AUROC, TPR at 1% and 5% FPR (thresholds from this
  clean set: the paper-style figures) and max-F1.
* **Detection-aware robust accuracy** at the operating threshold: a point counts as defended when it is
  classified correctly and either the attack failed or the detector flagged the adversarial input. Clean
  points the detector flags are false alarms (reported as ``clean_flagged``); they do not lower this figure,
  as in the detection literature, but the false-alarm rate stands beside it.
* **Adaptive** (Carlini & Wagner, 2017: "adversarial examples are not easily detected"). The attack maximizes
  ``L(f(x'), y) − λ · s̃(x')`` with ``s̃`` the detector's differentiable relaxation
  (:meth:`Detector.soft_score`), for every λ of a sweep; a point is broken when ``f`` is fooled *and* the
  detector does not flag the input. Each λ > 0 also runs at fractions of ε (default ¼ and ½): the threat model
  allows any smaller perturbation, and a detector of perturbation energy may miss a small one. The worst case per
  point counts (any λ and radius that evades breaks the point), and so does every non-adaptive break that evaded
  the detector.

The adaptive attack is the suite's gradient-source protocol: :class:`DetectorAware` wraps any source, so every
gradient attack can be made detector-aware without code of its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks.base import Attack
from sparring.context import frozen_model
from sparring.detectors.base import DETECTORS, Detector
from sparring.detectors.metrics import detection_metrics
from sparring.errors import DataError
from sparring.gradients.autograd import Autograd, GradientSource, GradientStep
from sparring.losses import LossFn
from sparring.runtime.eval_state import batch_generator
from sparring.threat import ThreatModel

#: λ of the adaptive sweep (the soft score counts features, so λ = 1 trades one unit of loss for one feature).
DEFAULT_LAMBDAS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
#: fractions of ε at which the adaptive attack runs too (every λ > 0): small perturbations may slip under a detector.
DEFAULT_RADII = (0.25, 0.5)
ADAPTIVE_STREAM = 5000  # generator streams of the adaptive attacks, apart from the suite's
CALIBRATION_STREAM = 6000


@dataclass(frozen=True)
class DetectorAware:
    """Gradient source of ``L(f(x), ref) − λ · s̃(x)``: the attack climbs the loss while lowering the detector's
    relaxed score. The returned loss is the combined one, so attacks that keep their best iterate keep the one
    that best trades misclassification against detection."""

    detector: Detector
    lam: float
    inner: GradientSource = dataclasses.field(default_factory=Autograd)

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        if self.lam == 0:
            return self.inner(model, x, loss_fn, ref)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = loss_fn(logits, ref) - self.lam * self.detector.soft_score(x)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return GradientStep(grad=grad.detach(), loss=loss.detach(), logits=logits.detach())


def default_adaptive_attack() -> Attack:
    """APGD-CE, 100 steps, no early stop: a point misclassified but flagged must keep moving."""
    from sparring.attacks import APGD

    return APGD(loss="ce", steps=100, early_stop=False)


def calibrated_detector(
    name: str,
    model: nn.Module,
    *,
    layer: str,
    fit_x: Tensor,
    calib_x: Tensor,
    calib_y: Tensor,
    threat: ThreatModel,
    attack: Attack,
    fit_steps: int = 2000,
    fpr: float = 0.05,
    settings: dict[str, Any] | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[Detector, dict[str, Any]]:
    """A registered detector fitted on clean ``fit_x`` and calibrated on ``calib_x`` and its ``attack`` versions.

    The calibration points must be disjoint from the points the detector is evaluated on (a held-out part of the
    training split). Returns the detector and a record of the fit (seconds, sizes, settings)."""
    started = time.perf_counter()
    detector = DETECTORS.get(name)(model=model, layer=layer, fpr=fpr, seed=seed, **(settings or {}))
    fit = getattr(detector, "fit", None)
    select = getattr(detector, "select", None)
    if fit is None or select is None:
        raise ValueError(f"detector {name!r} has no fit/select: build and calibrate it yourself")
    fit(fit_x, steps=fit_steps)
    fitted = time.perf_counter() - started
    adv = []
    for b, start in enumerate(range(0, len(calib_x), batch_size)):
        xb, yb = calib_x[start:start + batch_size], calib_y[start:start + batch_size]
        index = torch.arange(start, start + len(xb))
        adv.append(attack(model, xb, yb, threat.subset(index),
                          generator=batch_generator(xb.device, seed, b, CALIBRATION_STREAM)).x_adv)
    select(calib_x, torch.cat(adv))
    return detector, {"fit_s": round(fitted, 3), "calibrate_s": round(time.perf_counter() - started - fitted, 3),
                      "fit_points": len(fit_x), "calibration_points": len(calib_x),
                      "calibration_attack": attack.describe(), "settings": detector.describe()}


def load_detector(folder: Any, model: nn.Module) -> Detector:
    """A detector saved with its ``save(folder)`` (``detector.json`` names its kind), reading ``model``."""
    config = Path(folder) / "detector.json"
    try:
        name = json.loads(config.read_text())["detector"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{folder}: no saved detector here (detector.json with a 'detector' name expected)") from None
    return DETECTORS.get(name).load(folder, model)


def evaluate_detection(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    detector: Detector,
    *,
    attacks: Sequence[tuple[str, Attack]],
    adaptive: Attack | None = None,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    radii: Sequence[float] = DEFAULT_RADII,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Detection metrics per attack, the detection-aware robust accuracy, and the adaptive sweep.

    Args:
        attacks: ``(label, attack)`` pairs, each run on its own against the classifier alone.
        adaptive: the attack made detector-aware (default :func:`default_adaptive_attack`); ``lambdas=()``
            skips the adaptive sweep, and the result says the detector was tested non-adaptively only.
        lambdas: the weights λ of the detector term.
        radii: fractions of ε at which the adaptive attack also runs with each λ > 0 (the threat model allows any
            smaller perturbation, and a detector of perturbation energy misses small ones); ``()``: ε only.

    Returns a JSON-able dict (see the module docstring for the definitions).
    """
    if detector.threshold is None:
        raise ValueError("the detector has no operating threshold: calibrate it on clean data first")
    device = device or x.device
    started = time.perf_counter()
    clean_scores, clean_correct, clean_flag = _clean_pass(model, detector, x, y, batch_size, device)
    evaded_any = torch.zeros(len(x), dtype=torch.bool)  # fooled f and not flagged, by any attack so far
    fooled_any = torch.zeros(len(x), dtype=torch.bool)
    rows = []
    for label, attack in attacks:
        outcome = _attack_all(model, detector, x, y, threat, attack, clean_correct, batch_size, seed,
                              stream=len(rows), device=device)
        fooled, evaded, adv_scores = outcome
        evaded_any |= evaded
        fooled_any |= fooled
        rows.append(_row(label, attack, clean_scores, adv_scores, fooled, evaded, clean_correct, λ=None))
    adaptive_rows = []
    if lambdas:
        attack = adaptive or default_adaptive_attack()
        smaller = [r for r in radii if 0 < r < 1] if not isinstance(threat.eps, Tensor) else []
        sweep = [(float(lam), 1.0) for lam in lambdas] + [(float(lam), r) for r in smaller for lam in lambdas if lam]
        for i, (lam, fraction) in enumerate(sweep):
            aware = dataclasses.replace(attack, gradients=DetectorAware(detector, lam, attack.gradients))
            at = threat if fraction == 1.0 else threat.with_eps(float(threat.eps) * fraction)
            fooled, evaded, adv_scores = _attack_all(model, detector, x, y, at, aware, clean_correct, batch_size,
                                                     seed, stream=ADAPTIVE_STREAM + i, device=device)
            evaded_any |= evaded
            fooled_any |= fooled
            label = f"adaptive_{attack.label}" + ("" if fraction == 1.0 else f"@{fraction:g}eps")
            adaptive_rows.append(_row(label, aware, clean_scores, adv_scores, fooled, evaded, clean_correct, λ=lam)
                                 | {"eps_fraction": fraction})
    n = len(x)
    non_adaptive_evaded = torch.zeros(n, dtype=torch.bool)
    for row in rows:
        non_adaptive_evaded |= row.pop("_evaded")
    for row in adaptive_rows:
        row.pop("_evaded")
    worst_non_adaptive = clean_correct & ~non_adaptive_evaded
    worst = clean_correct & ~evaded_any
    return {
        "detector": detector.describe(),
        "threshold": float(detector.threshold),
        "n": n,
        "clean_accuracy": float(clean_correct.float().mean()),
        "clean_flagged": float(clean_flag.float().mean()),
        "clean_accuracy_unflagged": float((clean_correct & ~clean_flag).float().mean()),
        "robust_accuracy_without_detector": float((clean_correct & ~fooled_any).float().mean()),
        "detection_aware_robust_accuracy_non_adaptive": float(worst_non_adaptive.float().mean()),
        "detection_aware_robust_accuracy": float(worst.float().mean()),
        "attacks": rows,
        "adaptive": adaptive_rows,
        "adaptive_tested": bool(lambdas),
        "worst_adaptive": min(adaptive_rows, key=lambda r: r["detection_aware_robust_accuracy"], default=None),
        "time_s": time.perf_counter() - started,
    }


def _clean_pass(
    model: nn.Module, detector: Detector, x: Tensor, y: Tensor, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    scores, correct = [], []
    with frozen_model(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            correct.append((model(xb).argmax(1) == yb).cpu())
            scores.append(detector.score(xb).float().cpu())
    clean_scores = torch.cat(scores)
    return clean_scores, torch.cat(correct), clean_scores > float(detector.threshold)  # type: ignore[arg-type]


def _attack_all(
    model: nn.Module, detector: Detector, x: Tensor, y: Tensor, threat: ThreatModel, attack: Attack,
    clean_correct: Tensor, batch_size: int, seed: int, *, stream: int, device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """(n,) fooled, (n,) fooled and not flagged, and the detector scores of the fooling inputs (in row order)."""
    fooled = torch.zeros(len(x), dtype=torch.bool)
    scores = torch.full((len(x),), float("nan"))
    rows = clean_correct.nonzero().squeeze(1)
    for b, start in enumerate(range(0, len(rows), batch_size)):
        index = rows[start:start + batch_size]
        xb, yb = x[index].to(device), y[index].to(device)
        result = attack(model, xb, yb, threat.subset(index),
                        generator=batch_generator(device, seed, b, stream))
        assert result.success is not None
        with frozen_model(model), torch.no_grad():
            # judged again in fp32 on the returned input (an attack under bf16 scored it under autocast)
            fooled[index] = (model(result.x_adv.float()).argmax(1) != yb).cpu()
            scores[index] = detector.score(result.x_adv).float().cpu()
    flagged = scores > float(detector.threshold)  # type: ignore[arg-type]
    return fooled, fooled & ~flagged, scores


def _row(
    label: str, attack: Attack, clean_scores: Tensor, adv_scores: Tensor, fooled: Tensor, evaded: Tensor,
    clean_correct: Tensor, *, λ: float | None,
) -> dict[str, Any]:
    metrics = detection_metrics(clean_scores, adv_scores[fooled])
    settings = attack.describe()
    settings.pop("gradients", None)
    return {
        "name": label, "settings": settings, "lambda": λ,
        "attacked": int(clean_correct.sum()), "fooled": int(fooled.sum()), "evaded": int(evaded.sum()),
        "flagged_of_fooled": float(1 - evaded.sum() / fooled.sum()) if bool(fooled.any()) else None,
        "robust_accuracy_without_detector": float((clean_correct & ~fooled).float().mean()),
        "detection_aware_robust_accuracy": float((clean_correct & ~evaded).float().mean()),
        **metrics,
        "_evaded": evaded,
    }
