"""Integrations with other training stacks, each imported only when used (its package is an extra):

* :mod:`sparring.language.hf_trainer`: Hugging Face's ``transformers.Trainer`` with any sparring objective
  (``hf`` extra):
  ``AdversarialTrainer``, ``BehaviourDataset``, ``ChatCollator``.
* :mod:`.lightning`: Lightning callbacks (``scale`` extra): ``AdversarialTraining`` turns any LightningModule's
  training step into adversarial training with any sparring objective; ``RobustEvaluation`` runs a sparring
  suite at validation end.
"""

from __future__ import annotations

import importlib
from typing import Any

from sparring.extras import missing_extra

_WHERE = {
    "AdversarialTrainer": "hf_trainer", "BehaviourDataset": "hf_trainer", "BehaviourItem": "hf_trainer",
    "ChatCollator": "hf_trainer", "PixelClassifier": "hf_trainer", "ThroughWrapper": "hf_trainer",
    "AdversarialTraining": "lightning", "RobustEvaluation": "lightning",
}

__all__ = sorted(_WHERE)


#: The HF adapter lives with the language domain (its batches are ChatBatches); it is reached from here too.
_MODULES = {"hf_trainer": "sparring.language.hf_trainer", "lightning": "sparring.integrations.lightning"}
_WHAT = {"hf_trainer": "the Hugging Face Trainer adapter", "lightning": "the Lightning callbacks"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sparring.integrations' has no attribute {name!r}")
    module = _WHERE[name]
    try:
        return getattr(importlib.import_module(_MODULES[module]), name)
    except ModuleNotFoundError as exc:  # its package is an extra: one line naming the pip install
        raise missing_extra(exc, what=_WHAT[module]) from None
