"""CAPO: continuous adversarial preference optimization (Xhonneux et al., NeurIPS 2024, the IPO variant of CAT;
code ``sophie-xhonneux/Continuous-AdvTrain``, config ``adv_train_ipo.yaml``).

Under the embedding attack's δ_i (toward the harmful target, as in CAT), the refusal r_i is preferred to the
harmful target t_i with the IPO loss (Azar et al. 2023):

    h_i = [log π(r_i | p_i+δ_i) − log π_ref(r_i | p_i+δ_i)] − [log π(t_i | p_i+δ_i) − log π_ref(t_i | p_i+δ_i)]
    ℓ_i = (h_i − 1/(2β))²,        β = 0.25 (the config's), log-probs averaged over tokens (as IPO does)

No utility data is needed (the config mixes 50/50 and trains 20 epochs); ``utility_weight`` > 0 adds CAT's
utility term. The reference π_ref is the model before training: with a LoRA (peft) model, the same model with
its adapters disabled (no copy); otherwise a frozen copy taken at the first call (``reference="auto"``), or
none (``"none"``: log π_ref = 0, a reference-free preference loss). Whether the released code scores π_ref on
the perturbed or the clean prompt is not recorded in methods.md; it is scored on the perturbed one here (ours).
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from sparring.context import frozen_model
from sparring.errors import ConfigError
from sparring.language.batch import ChatBatch
from sparring.language.cat import utility_term
from sparring.language.losses import ipo, sequence_logprob
from sparring.language.prompt_attack import PromptAttack, embedding_attack
from sparring.language.view import PromptView
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput


@OBJECTIVES.register("capo")
@dataclass(kw_only=True)
class CAPO(Objective):
    """CAPO (module doc). Called as ``capo(model, batch)`` with behaviours (continuations ``target``, ``refusal``).

    Attributes:
        attack: the prompt attack (default CAT's embedding attack).
        beta: IPO's β.
        reference: ``"auto"`` (adapters off for peft models, else a frozen copy) or ``"none"``.
        utility_weight: weight of CAT's utility term on the batch's utility chats (default 0).
    """

    name = "capo"
    inputs: ClassVar[str] = "chat"
    attack: PromptAttack = field(default_factory=embedding_attack)
    beta: float = 0.25
    reference: Literal["auto", "none"] = "auto"
    utility_weight: float = 0.0
    _frozen: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"CAPO beta must be > 0, got {self.beta}")
        if self.reference not in ("auto", "none"):
            raise ConfigError(f"CAPO reference must be 'auto' or 'none', got {self.reference!r}")

    def __call__(self, model: nn.Module, x: ChatBatch, y: Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> ObjectiveOutput:
        batch = x
        result = self.attack(model, batch, generator=generator)
        view = result.view.over(["refusal", "target"])
        x_adv = result.x_adv.detach()
        logits = view(x_adv)
        logp = self._logprobs(view, logits)
        ref = self._reference_logprobs(model, view, x_adv)
        loss = ipo(logp["refusal"], logp["target"], ref["refusal"], ref["target"], beta=self.beta)
        margin = (logp["refusal"] - ref["refusal"] - logp["target"] + ref["target"]).detach()
        metrics: dict[str, float | Tensor] = {
            "attack_success": result.success.float().mean(),
            "ipo_margin": margin.mean(),
            "preference_accuracy": (logp["refusal"] > logp["target"]).float().mean(),
        }
        extra = utility_term(model, batch.utility, self.utility_weight, metrics)
        return ObjectiveOutput(loss=loss, logits=view.split(logits)["refusal"], metrics=metrics, extra=extra)

    @staticmethod
    def _logprobs(view: PromptView, logits: Tensor) -> dict[str, Tensor]:
        parts, labels = view.split(logits), view.split(view.labels)
        return {name: sequence_logprob(parts[name], labels[name], mean=True) for name in parts}

    @torch.no_grad()
    def _reference_logprobs(self, model: nn.Module, view: PromptView, x_adv: Tensor) -> dict[str, Tensor]:
        if self.reference == "none":
            zero = torch.zeros(len(view.batch), device=x_adv.device)
            return {"refusal": zero, "target": zero}
        if hasattr(model, "disable_adapter"):  # peft: the base model is the reference (in eval mode)
            context: AbstractContextManager[object] = _stacked(model.disable_adapter(), frozen_model(model))
            ref_view, x_ref = view, x_adv
        else:
            if self._frozen is None:
                self._frozen = copy.deepcopy(model).eval().requires_grad_(False)
            context = nullcontext()
            ref_view = PromptView(self._frozen, view.batch, view.names, layers=view.layers)
            x_ref = ref_view.at(view.delta(x_adv))
        with context:
            return self._logprobs(ref_view, ref_view(x_ref))


def _stacked(*contexts: AbstractContextManager[object]) -> ExitStack:
    stack = ExitStack()
    for context in contexts:
        stack.enter_context(context)
    return stack
