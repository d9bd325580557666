"""Continuous attacks on a language model's prompt: in embedding space (CAT) or in the residual stream (LAT).

The attacker moves the prompt's representation x (see :class:`~sparring.language.view.PromptView`) inside a
per-token L2 ball, to make the model produce one continuation (``toward``, the harmful ``target``) and,
optionally, not another (``away``, the ``refusal``). The adversary's loss, *minimized*, is

    L_adv(x) = w_toward · NLL(toward | x) − w_away · NLL(away | x),

which the core attack *maximizes* as −L_adv, run targeted at the ``toward`` tokens, so an iterate that makes
the model greedily produce the whole target counts as a success and the best one (success first, then loss) is
kept. Everything geometric is the core's :class:`~sparring.threat.TokenL2Ball` (budget ε per token, relative to
the view's scale, on the user prompt's tokens only) and the optimizer any core attack, with any gradient
source (autograd, or :class:`~sparring.gradients.Predicted`).

Two presets, from the papers' code (methods.md §10.5, §10.6):

* :func:`embedding_attack`: CAT's attack. Embedding layer, ε = 0.05 × the mean embedding-row norm, 10 signed
  steps from zero, best kept (:class:`~sparring.attacks.SignPGD`); toward the harmful target only.
* :func:`latent_attack`: targeted LAT's adversary. The residual stream at the given layers, 16 PGD steps from
  zero, toward the target (½) and away from the refusal (½). The paper's budget is absolute (ε = 6 on
  Llama-3-8B, whose residual norms are in the tens); the preset's ε = 0.5 is relative to each sample's mean token
  norm at the layer, a scale that carries across model sizes (ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sparring.attacks import PGD, Attack, SignPGD
from sparring.errors import ConfigError
from sparring.language.batch import ChatBatch
from sparring.language.view import Layer, PromptView
from sparring.losses import IGNORE, cross_entropy
from sparring.threat import TokenL2Ball


@dataclass(frozen=True)
class PromptAttackResult:
    """``x_adv`` (B, L·P, D) in the ``view``'s space, ``success`` (B,) (greedy target reproduced), the adversary's
    loss (B,) at ``x_adv`` (lower is stronger) and the toward NLL (B,) there."""

    view: PromptView
    x_adv: Tensor
    success: Tensor
    adversary_loss: Tensor
    toward_nll: Tensor


@dataclass(kw_only=True)
class PromptAttack:
    """Attack a batch's prompts toward one continuation (and away from another); see the module doc.

    Attributes:
        optimizer: a core attack (scored: the best iterate is kept by success, then loss).
        eps: per-token L2 budget, in units of the view's scale when ``relative``.
        relative: budgets relative to the mean embedding norm / the mean hidden-state norm (see PromptView).
        layers: ``"embedding"`` and/or decoder-layer indices.
        toward / away: continuation names; ``away=None`` for a toward-only attack.
        toward_weight / away_weight: w_toward, w_away.
    """

    optimizer: Attack = field(default_factory=lambda: SignPGD(steps=10, random_start=False))
    eps: float = 0.05
    relative: bool = True
    layers: Sequence[Layer] = ("embedding",)
    toward: str = "target"
    away: str | None = None
    toward_weight: float = 1.0
    away_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ConfigError(f"the prompt attack's eps must be >= 0, got {self.eps}")
        if self.away is None and self.away_weight:
            raise ConfigError("away_weight needs an away continuation")
        if not self.optimizer.score:
            raise ConfigError("the prompt attack keeps its best iterate: build the optimizer with score=True")

    def view(self, model: nn.Module, batch: ChatBatch) -> PromptView:
        names = [self.toward] if self.away is None else [self.toward, self.away]
        return PromptView(model, batch, names, layers=self.layers, relative=self.relative)

    def __call__(self, model: nn.Module, batch: ChatBatch, *, generator: torch.Generator | None = None
                 ) -> PromptAttackResult:
        view = self.view(model, batch)
        x = view.reference()
        labels = view.labels
        k = batch.continuation(self.toward).ids.shape[1]
        success_ref = labels.clone()
        success_ref[:, k:] = IGNORE  # success: the toward tokens are produced (the away part does not count)

        def gain(logits: Tensor, ref: Tensor) -> Tensor:  # −L_adv, maximized by the core attack
            out = -self.toward_weight * cross_entropy(logits[:, :k], ref[:, :k])
            if self.away is not None:
                out = out + self.away_weight * cross_entropy(logits[:, k:], ref[:, k:])
            return out

        threat = TokenL2Ball(eps=self.eps, mask=view.mask())
        result = self.optimizer(view, x, success_ref, threat, target=success_ref, loss_fn=gain, loss_ref=labels,
                                generator=generator)
        assert result.loss is not None and result.success is not None and result.logits is not None
        toward_nll = cross_entropy(result.logits[:, :k], labels[:, :k])
        return PromptAttackResult(view=view, x_adv=result.x_adv, success=result.success,
                                  adversary_loss=-result.loss, toward_nll=toward_nll)


def embedding_attack(*, eps: float = 0.05, steps: int = 10, **settings: object) -> PromptAttack:
    """CAT's embedding attack: signed steps on the prompt embeddings toward the harmful target (module doc)."""
    optimizer = SignPGD(steps=steps, random_start=False)
    return PromptAttack(optimizer=optimizer, eps=eps, **settings)  # type: ignore[arg-type]


def latent_attack(*, layers: Sequence[Layer], eps: float = 0.5, steps: int = 16, **settings: object) -> PromptAttack:
    """Targeted LAT's adversary at ``layers``: toward the target, away from the refusal, ½ each (module doc)."""
    settings = {"toward_weight": 0.5, "away": "refusal", "away_weight": 0.5, **settings}
    return PromptAttack(optimizer=PGD(steps=steps, random_start=False), eps=eps, layers=layers,
                        **settings)  # type: ignore[arg-type]
