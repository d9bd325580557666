"""Integrations with other training stacks: Hugging Face's ``transformers.Trainer`` (:mod:`.hf_trainer`).

Needs the ``transformers`` package (the ``hf`` extra).
"""

from sparring.integrations.hf_trainer import (
    AdversarialTrainer,
    BehaviourDataset,
    BehaviourItem,
    ChatCollator,
    PixelClassifier,
    ThroughWrapper,
)

__all__ = ["AdversarialTrainer", "BehaviourDataset", "BehaviourItem", "ChatCollator", "PixelClassifier",
           "ThroughWrapper"]
