"""Detectors: score inputs by how likely they are adversarial, beside the attacks rather than inside training.

``available()`` lists the registered names; ``build(name, **settings)`` makes one from a name. A detector's
``score(x)`` is (B,), higher = more likely adversarial; ``soft_score(x)`` is its differentiable relaxation for
adaptive attacks; ``flag(x)`` compares the score with a threshold set at a false-positive rate on clean inputs.
:mod:`sparring.detectors.metrics` turns clean and adversarial scores into AUROC, recall at fixed FPR and max-F1;
:func:`evaluate_detection` runs attacks (and a detector-aware adaptive attack) against a model and its detector.

* ``sae`` (:class:`SAEDetector`): SAEgis-style, the attack-relevant latents of a TopK sparse autoencoder trained
  on clean activations of one layer.
"""

from __future__ import annotations

from typing import Any

from sparring.detectors.base import DETECTORS, ActivationTap, Detector, as_tokens
from sparring.detectors.evaluation import DEFAULT_LAMBDAS, DetectorAware, evaluate_detection
from sparring.detectors.metrics import auroc, detection_metrics, max_f1, threshold_at_fpr, tpr_at_fpr
from sparring.detectors.sae import SAEDetector, SAEFit, TopKSAE, fit_sae


def available() -> list[str]:
    """Names of all registered detectors."""
    return DETECTORS.names()


def build(name: str, **settings: Any) -> Detector:
    """A detector by registered name with keyword settings, e.g. ``build("sae", model=net, layer="features.3")``."""
    return DETECTORS.get(name)(**settings)


__all__ = [
    "DEFAULT_LAMBDAS", "DETECTORS", "ActivationTap", "Detector", "DetectorAware", "SAEDetector", "SAEFit", "TopKSAE",
    "as_tokens", "auroc", "available", "build", "detection_metrics", "evaluate_detection",
    "fit_sae", "max_f1", "threshold_at_fpr", "tpr_at_fpr",
]
