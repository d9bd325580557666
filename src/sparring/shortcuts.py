"""One-liners beside the full API, for people who write torchattacks or AutoAttack today.

    x_adv = sparring.attack(model, x, y, attack="pgd", eps=8/255, norm="linf", steps=20)
    acc = sparring.robust_accuracy(model, x, y, eps=8/255, norm="Linf", suite="standard")

``attack`` returns the adversarial inputs only (:class:`~sparring.attacks.AttackResult` has success, loss,
queries: call the attack object for those). ``robust_accuracy`` runs the full evaluation of
:func:`sparring.evaluate` (the suite, the ε-curve and the checks; every break counts) and returns its worst case;
a number the checks do not trust comes with a warning saying why. ``Evaluation.save(folder)`` writes its report.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks import Attack, build
from sparring.attacks.rng import SampleStreams
from sparring.context import device_of
from sparring.errors import ConfigError
from sparring.evaluate import evaluate
from sparring.threat import make_threat


def attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: str | Attack = "pgd",
    eps: float | str,
    norm: str = "linf",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 512,
    seed: int = 0,
    **settings: Any,
) -> Tensor:
    """Adversarial inputs for ``x`` (B, ...) with labels ``y`` (B,): the attack's output, on ``x``'s device.

    Args:
        attack: a registered name (``"fgsm"``, ``"pgd"``, ``"apgd"``, ``"apgd_t"``, ``"square"``, ...; see
            ``sparring.attacks.available()``) built with ``settings`` (``steps=20``, ``loss="margin"``), or an attack.
        eps: the radius in input units: ``8/255``, ``0.5`` or the text ``"8/255"``.
        norm: ``"linf"`` or ``"l2"`` (``"Linf"`` / ``"L2"`` too).
        bounds: the input box (``None`` for features without one).
        batch_size: points attacked at once (a point's result does not depend on its batch).
        seed: the attack's random start; the same seed gives the same inputs.
    """
    if isinstance(attack, Attack):
        if settings:
            raise ConfigError(f"settings {sorted(settings)} go with an attack name; this attack is already built")
        chosen = attack
    else:
        chosen = build(attack, **settings)
    threat = make_threat(norm, eps, bounds)
    device = device_of(model)
    # One seed, rows numbered over the whole set: a point draws the same numbers whatever batch it falls in.
    streams = SampleStreams.from_generator(torch.Generator(device=device).manual_seed(seed), len(x), device)
    out = []
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        result = chosen(model, x[rows].to(device), y[rows].to(device), threat,
                        streams=streams.rows(torch.arange(start, min(start + batch_size, len(x)))))
        out.append(result.x_adv.detach().to(x.device))
    return torch.cat(out) if out else x.detach().clone()


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | str,
    norm: str = "linf",
    suite: str | list[Attack] = "standard",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    **settings: Any,
) -> float:
    """The per-sample worst-case accuracy of :func:`sparring.evaluate` (``settings`` go to it: ``batch_size``,
    ``eps_curve=[]`` to skip the curve, ``progress=False``, ``seed``). Warns when a check fails."""
    evaluation = evaluate(model, (x, y), make_threat(norm, eps, bounds), suite=suite, **settings)
    if not evaluation.trustworthy:
        failed = "; ".join(f"{c['name']}: {c['detail']}" for c in evaluation.checks if c["passed"] is False)
        warnings.warn(f"robust accuracy {evaluation.robust_accuracy:.4f} is not trustworthy ({failed})",
                      stacklevel=2)
    return evaluation.robust_accuracy


__all__ = ["attack", "robust_accuracy"]
