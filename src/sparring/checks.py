"""Checks that say loudly when a robustness number cannot be trusted (gradient masking and misuse).

Every evaluation runs all of them. A check is ``{"name", "passed", "detail"}``: ``passed`` is True,
False (the number stays as measured, and the report marks it untrustworthy with this reason) or None
(could not be run, with the reason). Ideas from Athalye et al. 2018 ("Obfuscated gradients give a false
sense of security") and AutoAttack's ``checks.py``; our own code.

* ``gradients_finite_nonzero``: input gradients of the CE loss are finite and not all zero.
* ``deterministic_model``: two forward passes agree (a randomized model needs EOT attacks: the ``rand`` suite).
* ``outputs_not_probabilities``: the model returns logits, not softmax outputs fed to a CE loss.
* ``black_box_not_stronger``: a black-box attack breaks (almost) no point after every white-box attack failed:
  breaks under 1 % of the points it could attack pass with a note on a model without other signs of masking;
  any break fails when another check saw masked gradients, a randomized model or probabilities.
* ``large_eps_breaks_model``: with a budget covering the whole input box an attack must reach ~0.
* ``eps_zero_matches_clean``: robust accuracy at ε = 0 equals clean accuracy.
* ``breaks_outside_suite``: the ε-curve's attack (at radii ≤ ε) and the checks' probes break (almost) no point
  the suite left robust: under 1 % of the evaluated points passes. Their breaks are counted either way: the
  check says the suite alone was too weak for this model.

Why 1 %: two sound attacks are different random searches, and on an adversarially trained model either finds a
rare point the other missed (the standard suite's Square broke 1 of the 245 points the APGDs left on the demo's
PGD-AT model, 0.2 % of the 451). Gradient masking makes the black-box win systematic: in
``benchmarks/checks_calibration.py`` Square takes 35 % of the white-box survivors of an input-quantized model
and 10 % of a randomized one's. Where the win is small but another check saw masking (a saturated model: CE's
gradients vanish, Square still wins a point), any win fails. The count is always in the detail and in the
number.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks import Attack
from sparring.context import frozen_model
from sparring.losses import cross_entropy
from sparring.threat import ThreatModel

log = logging.getLogger(__name__)
Check = dict[str, Any]

ZERO_GRADIENT_LIMIT = 0.5  # more than half of the probe points with an all-zero gradient fails
LARGE_EPS_LIMIT = 0.05  # robust accuracy an unbounded attack may leave
EXTRA_BREAKS_LIMIT = 0.01  # share of the survivors another attack may break before the suite is called too weak


def check(name: str, passed: bool | None, detail: str) -> Check:
    return {"name": name, "passed": passed, "detail": detail}


def gradients_finite_nonzero(model: nn.Module, x: Tensor, y: Tensor) -> Check:
    with frozen_model(model):
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(cross_entropy(model(xg), y).sum(), xg)
    finite = bool(torch.isfinite(grad).all())
    zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    detail = f"input gradients finite: {finite}; fraction of points with an all-zero gradient: {zero:.2f}"
    if zero > ZERO_GRADIENT_LIMIT:
        detail += " (masked gradients: a non-differentiable or saturating layer; white-box numbers are upper bounds)"
    return check("gradients_finite_nonzero", finite and zero <= ZERO_GRADIENT_LIMIT, detail)


def deterministic_model(model: nn.Module, x: Tensor) -> Check:
    with frozen_model(model), torch.no_grad():
        a, b = model(x), model(x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    detail = f"max difference between two forward passes on the same batch: {diff:.3g}"
    randomized = (" (randomized model: evaluate with --suite rand (eval.suite: rand), APGD-CE and APGD-DLR whose "
                  "gradients average 20 draws (EOT); the deterministic suites' numbers are optimistic)")
    return check("deterministic_model", diff <= 1e-5, detail + ("" if diff <= 1e-5 else randomized))


def outputs_not_probabilities(model: nn.Module, x: Tensor) -> Check:
    with frozen_model(model), torch.no_grad():
        out = model(x).float()
    ones = torch.ones(len(out), device=out.device)
    probs = bool((out >= 0).all() and (out <= 1).all() and torch.allclose(out.sum(1), ones, atol=1e-3))
    detail = ("model outputs look like softmax probabilities: a CE loss on them masks gradients; return logits"
              if probs else "model returns logits")
    return check("outputs_not_probabilities", not probs, detail)


def black_box_not_stronger(
    broken_by_black_box: int, attacked: int, black_box: str, white_box: str, *, evaluated: int | None = None,
    counted: bool = True, masking: list[str] | tuple[str, ...] = (),
) -> Check:
    """``broken_by_black_box`` of ``attacked`` points fell to the black-box attack(s) after the white-box ones failed,
    out of ``evaluated`` points it could have run on (default ``attacked``).

    Passes when none did, or when they are under :data:`EXTRA_BREAKS_LIMIT` of the evaluated points (the number
    moves by under a point) on a model no other check suspects (``masking``: the names of the failed checks that
    signal masked gradients or randomness), with a note. Fails otherwise: where a gradient-free search beats
    gradient attacks systematically, the gradients mislead them and other points they left robust may be weak
    too. ``counted``: the black-box attack's breaks are in the number."""
    if attacked == 0:
        return check("black_box_not_stronger", True, f"no point survived {white_box}; {black_box} had nothing to do")
    evaluated = max(evaluated or attacked, attacked)
    share = broken_by_black_box / evaluated
    detail = (f"{black_box} broke {broken_by_black_box} of {attacked} points that survived {white_box} "
              f"({share:.1%} of the {evaluated} it could attack)")
    if not broken_by_black_box:
        return check("black_box_not_stronger", True, detail)
    note = "their breaks are counted" if counted else "they are not in the number"
    if masking:
        detail += f" while {', '.join(masking)} failed: the gradients mislead the white-box attacks; {note}"
        return check("black_box_not_stronger", False, detail)
    if share < EXTRA_BREAKS_LIMIT:
        detail += f" — under {EXTRA_BREAKS_LIMIT:.0%}: two searches miss different rare points; {note}"
        return check("black_box_not_stronger", True, detail)
    detail += (f" — {EXTRA_BREAKS_LIMIT:.0%} or more: the white-box attacks are fooled (gradient masking, or too "
               f"weak for this model); {note}, other misses may not be")
    return check("black_box_not_stronger", False, detail)


def breaks_outside_suite(found: dict[str, int], *, candidates: int, evaluated: int, suite: str) -> Check:
    """Points the evaluation's other attacks (the ε-curve's at radii ≤ ε, the checks' probes) broke after the
    suite's attacks failed on them: ``found`` maps each source to its count, ``candidates`` the suite's survivors,
    ``evaluated`` all points.

    They are counted in the worst case either way; the check fails when they are :data:`EXTRA_BREAKS_LIMIT` of the
    evaluated points or more (the suite alone would be off by a point or more), since a stronger suite would likely
    find more."""
    total = sum(found.values())
    if not found:
        return check("breaks_outside_suite", None, "no attack ran outside the suite at radii <= eps")
    if candidates == 0 or total == 0:
        return check("breaks_outside_suite", True, f"no point the {suite} suite left robust fell to another attack")
    share = total / max(evaluated, 1)
    parts = ", ".join(f"{name} {count}" for name, count in found.items() if count)
    detail = (f"{total} of the {candidates} points the {suite} suite left robust fell to other attacks at radii "
              f"<= eps ({parts}; {share:.1%} of the {evaluated} points), counted in the worst case")
    if share < EXTRA_BREAKS_LIMIT:
        return check("breaks_outside_suite", True, detail + f" (under {EXTRA_BREAKS_LIMIT:.0%})")
    return check("breaks_outside_suite", False,
                 detail + "; the suite is too weak for this model: evaluate with a stronger one (standard, plus)")


def large_eps_breaks_model(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attack: Attack, generator: torch.Generator
) -> Check:
    """An attack whose budget covers the whole box (or 100 ε without a box) must break ~every point."""
    if threat.bounds is not None:
        span = threat.bounds[1] - threat.bounds[0]
        radius = span if threat.norm == "linf" else span * x[0].numel() ** (1.0 if threat.norm == "l1" else 0.5)
    else:
        radius = 100.0 * max(threat.max_eps(), 1e-3)
    with frozen_model(model), torch.no_grad():
        correct = model(x).argmax(1) == y
    result = attack(model, x, y, threat.with_eps(radius), generator=generator)
    acc = float((result.robust & correct).float().mean())
    detail = f"robust accuracy at eps={radius:.3g} is {acc:.3f} on {len(x)} points (an unbounded attack must reach ~0)"
    return check("large_eps_breaks_model", acc <= LARGE_EPS_LIMIT, detail)


def eps_zero_matches_clean(at_zero: float, clean: float, where: str) -> Check:
    detail = f"robust accuracy at eps=0 ({at_zero:.4f}) vs clean accuracy ({clean:.4f}) {where}"
    return check("eps_zero_matches_clean", abs(at_zero - clean) < 1e-9, detail)


def detector_tested_adaptively(detection: dict[str, Any]) -> Check:
    """A detector is only as good as its figure under an attack that knows it (Carlini & Wagner, 2017)."""
    before = detection["detection_aware_robust_accuracy_non_adaptive"]
    if not detection["adaptive_tested"]:
        return check("detector_adaptive", False,
                     f"the detector was tested only against attacks that ignore it: its detection-aware robust "
                     f"accuracy {before:.3f} is an upper bound. Run the adaptive sweep (eval.detector.lambdas)")
    after, worst = detection["detection_aware_robust_accuracy"], detection["worst_adaptive"]
    return check("detector_adaptive", True,
                 f"an adaptive attack ({worst['name']}, λ sweep {[r['lambda'] for r in detection['adaptive']]}) "
                 f"took the detection-aware robust accuracy from {before:.3f} (non-adaptive) to {after:.3f}; "
                 f"the worst λ was {worst['lambda']:g}")


def log_failures(checks: list[Check]) -> None:
    for item in checks:
        if item["passed"] is False:
            log.warning("check %s failed: %s", item["name"], item["detail"])
