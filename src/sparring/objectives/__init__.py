"""Training objectives: ``(model, x, y) → per-example losses + metrics``.

``available()`` lists the registered names; ``build(name, **settings)`` makes one from a name.
"""

from __future__ import annotations

from typing import Any

from sparring.language.capo import CAPO  # the language domain's objectives, registered here
from sparring.language.cat import CAT
from sparring.language.lat import LAT
from sparring.language.localalign import LocalAlign
from sparring.language.warden import WARDEN
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
from sparring.points.mapr import MAPR  # the point-cloud domain's objective, registered here
from sparring.recsys.uat_mc import APR, UATMC  # the recommender domain's objectives, registered here


def available() -> list[str]:
    """Names of all registered objectives."""
    return OBJECTIVES.names()


def build(name: str, **settings: Any) -> Objective:
    """An objective by registered name, e.g. ``build("trades", beta=6.0)``."""
    return OBJECTIVES.get(name)(**settings)


__all__ = [
    "OBJECTIVES", "Objective", "ObjectiveOutput", "Standard", "PGDAT", "TRADES", "FastAT", "PredictedFGSM",
    "MART", "MAPR", "APR", "UATMC", "CAT", "CAPO", "LAT", "LocalAlign", "WARDEN", "ATBSL", "FreeAT", "DRO",
    "RobustLT", "AWP", "RAAT", "MCAT",
    "CatastrophicOverfittingWarning", "available", "build", "threat_of",
]
