"""Fast adversarial training with FGSM from a random start (Wong, Rice & Kolter, "Fast is better than
free", ICLR 2020), with a catastrophic-overfitting detector.

    δ ~ U(−ε, ε),   δ ← Π_ε(δ + α · sign(∇_δ CE(f(x + δ), y))),   train on CE(f(x + δ), y),   α = 1.25 ε

Paper defaults (CIFAR-10): ε = 8/255, α = 10/255, PreAct ResNet-18, 15 epochs, cyclic LR (max 0.2).

**Catastrophic overfitting** (CO): with zero init or a large α, PGD accuracy collapses to ~0 within an
epoch while FGSM accuracy soars. After every epoch the detector measures PGD accuracy on a held-out batch
(the paper's early-stopping check uses PGD-5 on a training batch); if it falls by more than
``co_drop`` below the best value seen, the event is recorded (``catastrophic_overfitting`` in the epoch
metrics and ``events``) and a :class:`CatastrophicOverfittingWarning` is raised as a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks import FGSMRS, PGD, Attack
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.pgd_at import attack_metrics
from sparring.threat import LinfBall, ThreatModel

log = logging.getLogger(__name__)


class CatastrophicOverfittingWarning(UserWarning):
    """Held-out PGD accuracy collapsed during single-step adversarial training."""


@OBJECTIVES.register("fgsm_rs")
@dataclass(kw_only=True)
class FastAT(Objective):
    """FGSM-RS adversarial training with a held-out PGD monitor.

    Attributes:
        threat: training threat model (default L∞ ε = 8/255).
        attack: the single-step attack (default FGSM from a random start, α = 1.25 ε).
        monitor: the attack the detector runs on the held-out batch (default PGD-5, α = ε/2).
        co_drop: a fall of held-out PGD accuracy below its best by more than this flags CO.
    """

    name = "fgsm_rs"
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    attack: Attack = field(default_factory=lambda: FGSMRS(score=False))
    monitor: Attack = field(default_factory=lambda: PGD(steps=5))
    co_drop: float = 0.2
    best_holdout_accuracy: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        adv = self.attack(model, x, y, self.threat, generator=generator)
        logits = model(adv.x_adv)
        return ObjectiveOutput(loss=cross_entropy(logits, y), logits=logits, metrics=attack_metrics(logits, y))

    def on_epoch_end(
        self,
        model: nn.Module,
        *,
        epoch: int,
        holdout: tuple[Tensor, Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        if holdout is None:
            return {}
        x, y = holdout
        accuracy = float(self.monitor(model, x, y, self.threat, generator=generator).robust.float().mean())
        out: dict[str, Any] = {"holdout_pgd_accuracy": accuracy, "catastrophic_overfitting": False}
        best = self.best_holdout_accuracy
        if best is not None and accuracy < best - self.co_drop:
            event = {"epoch": epoch, "holdout_pgd_accuracy": accuracy, "best": best}
            self.events.append(event)
            out["catastrophic_overfitting"] = True
            message = (
                f"catastrophic overfitting at epoch {epoch}: held-out PGD accuracy fell to {accuracy:.3f} "
                f"from {best:.3f}; lower the step size, use PGD-AT, or stop early"
            )
            log.warning(message)
            warnings.warn(message, CatastrophicOverfittingWarning, stacklevel=2)
        self.best_holdout_accuracy = accuracy if best is None else max(best, accuracy)
        return out

    def training_events(self) -> list[dict[str, Any]]:
        return [{"epoch": e["epoch"], "kind": "catastrophic_overfitting", "detail": json.dumps(e)} for e in self.events]

    def state_dict(self) -> dict[str, Any]:
        return {"best_holdout_accuracy": self.best_holdout_accuracy, "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_holdout_accuracy = state.get("best_holdout_accuracy")
        self.events = list(state.get("events", []))
