"""CAT: continuous adversarial training of language models (Xhonneux, Sordoni, Günnemann, Gidel, Schwinn,
"Efficient Adversarial Training in LLMs with Continuous Attacks", NeurIPS 2024; code
``sophie-xhonneux/Continuous-AdvTrain``, config ``adv_train_ul.yaml``).

For each behaviour i (a harmful prompt p_i, its harmful target t_i and a safe refusal r_i), an embedding attack
finds δ_i on the prompt tokens that makes the model produce t_i (:func:`~sparring.language.embedding_attack`:
10 signed steps, per-token L2 ≤ 0.05 · mean‖E_v‖, best kept). The model is then trained, under that δ_i, to
refuse and not to comply, while a utility term on benign chats u keeps it useful:

    ℓ_i = w_toward · toward(r_i | p_i + δ_i) + w_away · away(t_i | p_i + δ_i)          (per example)
    L   = mean_i ℓ_i + w_util · mean_u NLL(response_u | prompt_u)                     (utility: not perturbed)

toward is the refusal's mean token NLL floored at ``toward_cutoff`` (0.5 in the UL config), away the harmful
target's −NLL floored at ``away_cutoff`` (−5): below a cutoff the term becomes ``cutoff + 0.001·value``, as
the released code does. Defaults: w_toward = w_away = 0.5, w_util = 1.0. The paper mixes 12.5% behaviours with
87.5% UltraChat chats; here the utility chats travel in the batch's ``utility`` part (a
:class:`~sparring.language.batch.ChatBatch` built with :func:`~sparring.language.behaviour_batch`), and their
term is returned as ``extra``, so a reweighting wrapper (WARDEN, :class:`~sparring.language.warden.WARDEN`)
reweights the adversarial ℓ_i and leaves utility alone.

The attack is any :class:`~sparring.language.prompt_attack.PromptAttack`: give it latent ``layers`` and the
same losses become latent adversarial training (:class:`~sparring.language.lat.LAT` does, with LAT's
defaults). Works on any Hugging Face causal LM, LoRA-wrapped or not; call it from the
:class:`~sparring.integrations.AdversarialTrainer` or a loop of your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.language.batch import ChatBatch
from sparring.language.losses import AwayKind, away, toward
from sparring.language.prompt_attack import PromptAttack, embedding_attack
from sparring.language.view import PromptView
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput


def utility_term(model: nn.Module, batch: ChatBatch | None, weight: float,
                 metrics: dict[str, float | Tensor]) -> Tensor | None:
    """``weight`` × the mean NLL of the utility chats' responses (no attack), for ``ObjectiveOutput.extra``; None
    without chats or weight. Logs the NLL as ``utility_nll`` in ``metrics``."""
    if batch is None or len(batch) == 0 or weight == 0:
        return None
    view = PromptView(model, batch, ["response"])
    utility = cross_entropy(view.clean_logits(), view.labels).mean()
    metrics["utility_nll"] = utility.detach()
    return weight * utility


@OBJECTIVES.register("cat")
@dataclass(kw_only=True)
class CAT(Objective):
    """CAT (module doc). Called as ``cat(model, batch)`` with ``batch`` a ChatBatch of behaviours (continuations
    ``target`` and ``refusal``) and optional ``utility`` chats; returns per-behaviour losses (B,).

    Attributes:
        attack: the prompt attack (default CAT's embedding attack, toward ``target``).
        toward_weight / away_weight / utility_weight: w_toward, w_away, w_util.
        toward_cutoff / away_cutoff: the floors of the two terms.
        away_kind: ``"cutoff"`` (CAT's −NLL) or ``"unlikelihood"`` (LAT's −log(1 − p)).
    """

    name = "cat"
    inputs: ClassVar[str] = "chat"
    attack: PromptAttack = field(default_factory=embedding_attack)
    toward_weight: float = 0.5
    away_weight: float = 0.5
    utility_weight: float = 1.0
    toward_cutoff: float = 0.5
    away_cutoff: float = -5.0
    away_kind: AwayKind = "cutoff"

    def __post_init__(self) -> None:
        if min(self.toward_weight, self.away_weight, self.utility_weight) < 0:
            raise ConfigError(f"{self.name} weights must be >= 0")
        if self.away_kind not in ("cutoff", "unlikelihood"):
            raise ConfigError(f"away_kind must be 'cutoff' or 'unlikelihood', got {self.away_kind!r}")

    def __call__(self, model: nn.Module, x: ChatBatch, y: Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> ObjectiveOutput:
        batch = x
        result = self.attack(model, batch, generator=generator)
        view = result.view.over(["refusal", "target"])
        parts = view.split(view(result.x_adv.detach()))
        labels = view.split(view.labels)
        toward_term = toward(parts["refusal"], labels["refusal"], cutoff=self.toward_cutoff)
        away_term = away(parts["target"], labels["target"], kind=self.away_kind, cutoff=self.away_cutoff)
        loss = self.toward_weight * toward_term + self.away_weight * away_term
        metrics: dict[str, float | Tensor] = {
            "attack_success": result.success.float().mean(),
            "attack_target_nll": result.toward_nll.mean(),
            "toward_loss": toward_term.detach().mean(),
            "away_loss": away_term.detach().mean(),
        }
        extra = utility_term(model, batch.utility, self.utility_weight, metrics)
        return ObjectiveOutput(loss=loss, logits=parts["refusal"], metrics=metrics, extra=extra)
