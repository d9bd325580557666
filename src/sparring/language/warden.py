"""WARDEN: distributionally robust adversarial training of language models (Zhang, Birrell, Ebrahimi, Behnia,
Pacheco, Bertino, "Information Theoretic Adversarial Training of Large Language Models", arXiv 2605.05415).

WARDEN is CAT (:class:`~sparring.language.cat.CAT`) whose per-behaviour adversarial losses ℓ_i are averaged
under the worst distribution in a KL ball of radius ρ around the batch, through the convex dual

    L = λρ + λ · log (1/B) Σ_i exp(ℓ_i / λ)  +  w_util · NLL(utility),      ∇_θ L = Σ_i w_i ∇_θ ℓ_i + …,
    w_i = softmax_i(ℓ_i / λ),

with a learnable temperature λ > 0: the behaviours the attack breaks most get the most weight; the utility
term is *not* reweighted. The reweighting is the core's :class:`~sparring.objectives.DRO` (KL with learnable
λ, fixed-τ log-sum-exp, χ², CVaR; weights, entropy and λ logged every batch), which this class instantiates
with CAT as its base and language-model defaults. methods.md §2 reconstructs the objective (the paper's ρ, λ
and code are not public): ρ = 0.1 here, from the suggested range {0.01, 0.1, 0.5, 1} (ours; ARMOR's MNIST 5e-4
makes the weights almost uniform, i.e. CAT), λ₀ = 1.0 (ARMOR's), learned by SGD on η, λ = softplus(η).

As λ → ∞ WARDEN is CAT; as λ → 0 it trains on the batch's worst behaviour only. A sample's loss depends on its
batch mates by design: keep the batch size fixed across compared runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparring.language.batch import ChatBatch
from sparring.language.cat import CAT
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.dro import DRO


@OBJECTIVES.register("warden")
@dataclass(kw_only=True)
class WARDEN(DRO):
    """KL-DRO reweighting of CAT's per-behaviour losses (module doc); settings as :class:`DRO`."""

    name = "warden"
    inputs: ClassVar[str] = "chat"
    base: Objective = field(default_factory=CAT)
    rho: float = 0.1

    def __call__(self, model: nn.Module, x: ChatBatch, y: Tensor | None = None, *,  # type: ignore[override]
                 generator: torch.Generator | None = None) -> ObjectiveOutput:
        return super().__call__(model, x, y, generator=generator)  # type: ignore[arg-type]
