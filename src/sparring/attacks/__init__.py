"""Attacks: each takes ``(model, x, y, threat)`` and returns an :class:`AttackResult`.

``available()`` lists the registered names; ``build(name, **settings)`` makes one from a name;
``suite(name)`` gives a named evaluation cascade (``fast``, ``standard``, ``plus``). Domain attacks (point clouds:
``point_drop``, ``point_add``, ``knn``) register from their packages, loaded on the first lookup.
"""

from __future__ import annotations

from typing import Any

from sparring.attacks.apgd import APGD, APGDTargeted
from sparring.attacks.apgd_l1 import APGDL1
from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem
from sparring.attacks.cascade import SUITES, Cascade, suite
from sparring.attacks.fab import FABTargeted
from sparring.attacks.fgsm import FGSM, FGSMRS
from sparring.attacks.fmn import FMN
from sparring.attacks.pgd import PGD
from sparring.attacks.sign_pgd import SignPGD
from sparring.attacks.square import Square


def available() -> list[str]:
    """Names of all registered attacks."""
    return ATTACKS.names()


def build(name: str, **settings: Any) -> Attack:
    """An attack by registered name with keyword settings, e.g. ``build("pgd", steps=20)``."""
    return ATTACKS.get(name)(**settings)


__all__ = [
    "APGD", "APGDL1", "APGDTargeted", "ATTACKS", "FABTargeted", "FMN", "Attack", "AttackResult", "FGSM", "FGSMRS",
    "PGD", "Problem", "SignPGD",
    "Square", "SUITES", "Cascade", "suite", "available", "build",
]
