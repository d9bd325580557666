"""Standard (non-adversarial) training: ``L(θ) = E CE(f_θ(x), y)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput


@OBJECTIVES.register("standard")
@dataclass(kw_only=True)
class Standard(Objective):
    """Cross-entropy on clean inputs: the baseline every robust objective is compared against."""

    name = "standard"

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(loss=cross_entropy(logits, y), logits=logits)
