"""Refusal tuning: supervised fine-tuning to refuse harmful requests and keep answering benign ones.

The "aligned" baseline of the defence ladder (the model CAT, WARDEN and LAT then start from), and the usual first
step of safety training: for each behaviour i (harmful prompt p_i, safe refusal r_i), with benign chats u,

    ℓ_i = NLL(r_i | p_i)                                   (mean over the refusal's tokens; per example)
    L   = mean_i ℓ_i + w_util · mean_u NLL(response_u | prompt_u)

No attack: this is what the adversarial objectives add. ``away_weight > 0`` also pushes the harmful target down
(unlikelihood, −log(1 − p) per token, as LAT's away term), which helps a model that answered everything as shipped
(SmolLM2-135M-Instruct does) stop opening with "Sure, here is" while it learns to refuse. Defaults: w_util = 1,
w_away = 0 (plain SFT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.language.batch import ChatBatch
from sparring.language.cat import utility_term
from sparring.language.losses import away
from sparring.language.view import PromptView
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput


@OBJECTIVES.register("refusal")
@dataclass(kw_only=True)
class RefusalTuning(Objective):
    """Refusal SFT (module doc). ``objective(model, batch)`` with ``batch`` a ChatBatch of behaviours (continuations
    ``target`` and ``refusal``) and optional ``utility`` chats; returns per-behaviour losses (B,).

    Attributes:
        utility_weight: w_util, the weight of the benign chats' NLL.
        away_weight: w_away, the weight of the harmful target's unlikelihood (0: plain SFT).
    """

    name = "refusal"
    inputs: ClassVar[str] = "chat"
    utility_weight: float = 1.0
    away_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.utility_weight, self.away_weight) < 0:
            raise ConfigError(f"{self.name} weights must be >= 0")

    def __call__(self, model: nn.Module, x: ChatBatch, y: Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> ObjectiveOutput:
        view = PromptView(model, x, ["refusal", "target"] if self.away_weight else ["refusal"])
        parts = view.split(view.clean_logits())
        labels = view.split(view.labels)
        loss = cross_entropy(parts["refusal"], labels["refusal"])
        metrics: dict[str, float | Tensor] = {"refusal_nll": loss.detach().mean()}
        if self.away_weight:
            away_term = away(parts["target"], labels["target"], kind="unlikelihood", cutoff=float("-inf"))
            metrics["away_loss"] = away_term.detach().mean()
            loss = loss + self.away_weight * away_term
        extra = utility_term(model, x.utility, self.utility_weight, metrics)
        return ObjectiveOutput(loss=loss, logits=parts["refusal"], metrics=metrics, extra=extra)


__all__ = ["RefusalTuning"]
