"""Integrations with other training stacks, each imported only when used (its package is an extra):

* :mod:`.hf_trainer`: Hugging Face's ``transformers.Trainer`` with any sparring objective (``hf`` extra):
  ``AdversarialTrainer``, ``BehaviourDataset``, ``ChatCollator``.
* :mod:`.lightning`: Lightning callbacks (``scale`` extra): ``AdversarialTraining`` turns any LightningModule's
  training step into adversarial training with any sparring objective; ``RobustEvaluation`` runs a sparring
  suite at validation end.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AdversarialTrainer": "hf_trainer", "BehaviourDataset": "hf_trainer", "BehaviourItem": "hf_trainer",
    "ChatCollator": "hf_trainer", "PixelClassifier": "hf_trainer", "ThroughWrapper": "hf_trainer",
    "AdversarialTraining": "lightning", "RobustEvaluation": "lightning",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sparring.integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sparring.integrations.{_WHERE[name]}"), name)
