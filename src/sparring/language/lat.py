"""Targeted latent adversarial training (Sheshadri, Ewart, Guo, Lynch, Kirch, Casper et al., "Latent Adversarial
Training Improves Robustness to Persistent Harmful Behaviors in LLMs", arXiv 2407.15549; code
``aengusl/latent-adversarial-training``, ``notebooks/jailbreaks.ipynb``).

The adversary perturbs the **residual stream** at several layers (Llama-3-8B: the embedding and layers 8, 16,
24, 30), at the prompt tokens, inside a per-token L2 ball, with 16 PGD steps, minimizing

    L_adv = ½ · toward(target | h + δ) + ½ · away(refusal | h + δ)

(:func:`~sparring.language.latent_attack`), and the model is trained under that δ on the mirror image plus a
utility term:

    ℓ_i = ½ · toward(refusal | h + δ) + ½ · away(target | h + δ),     L = mean_i ℓ_i + w_util · NLL(utility)

This is CAT (:class:`~sparring.language.cat.CAT`) with the attack moved from the embeddings to the residual
stream, which is how methods.md §10.6 asks for it to be built: LAT subclasses CAT and changes only defaults.
LAT's away term is the unlikelihood −log(1 − p) (its code's ``log_1_minus_p`` loss), with no cutoffs, and its
utility term for Llama-2 is SFT with weight 1.5 (Llama-3 used a KL to the reference model instead, which is not
built here). Layers are given as fractions of the depth, so the default ("embedding", 0.25, 0.5, 0.75) is
Llama-3's 8/16/24 of 32 on any model. The budget is relative to each sample's token norm at each layer
(ε = 0.5; the paper's absolute ε = 6 is ``latent_attack(..., eps=6.0, relative=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparring.language.cat import CAT
from sparring.language.losses import AwayKind
from sparring.language.prompt_attack import PromptAttack, latent_attack
from sparring.objectives.base import OBJECTIVES


@OBJECTIVES.register("lat")
@dataclass(kw_only=True)
class LAT(CAT):
    """Targeted LAT: CAT's losses under a latent attack at several layers (module doc; settings as CAT)."""

    name = "lat"
    attack: PromptAttack = field(default_factory=lambda: latent_attack(layers=("embedding", 0.25, 0.5, 0.75)))
    toward_cutoff: float = 0.0
    away_cutoff: float = float("-inf")
    away_kind: AwayKind = "unlikelihood"
    utility_weight: float = 1.5
