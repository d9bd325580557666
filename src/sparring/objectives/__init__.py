"""Training objectives: ``(model, x, y) → per-example losses + metrics``.

``available()`` lists the registered names; ``build(name, **settings)`` makes one from a name. The domains' objectives
(``mapr``; ``apr``, ``uat_mc``; ``cat``, ``capo``, ``lat``, ``warden``, ``localalign``) register from their packages,
loaded on the first lookup.
"""

from __future__ import annotations

from typing import Any

from sparring.objectives.at_bsl import ATBSL
from sparring.objectives.awp import AWP
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput, threat_of
from sparring.objectives.dro import DRO
from sparring.objectives.fast_at import CatastrophicOverfittingWarning, FastAT
from sparring.objectives.free_at import FreeAT
from sparring.objectives.mart import MART
from sparring.objectives.mcat import MCAT
from sparring.objectives.pgd_at import PGDAT
from sparring.objectives.predicted_fgsm import PredictedFGSM
from sparring.objectives.raat import RAAT
from sparring.objectives.robustlt import RobustLT
from sparring.objectives.standard import Standard
from sparring.objectives.trades import TRADES


def available() -> list[str]:
    """Names of all registered objectives."""
    return OBJECTIVES.names()


def build(name: str, **settings: Any) -> Objective:
    """An objective by registered name, e.g. ``build("trades", beta=6.0)``."""
    return OBJECTIVES.get(name)(**settings)


__all__ = [
    "OBJECTIVES", "Objective", "ObjectiveOutput", "Standard", "PGDAT", "TRADES", "FastAT", "PredictedFGSM",
    "MART", "ATBSL", "FreeAT", "DRO",
    "RobustLT", "AWP", "RAAT", "MCAT",
    "CatastrophicOverfittingWarning", "available", "build", "threat_of",
]
