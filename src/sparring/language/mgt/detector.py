"""The few-shot machine-generated-text detector: a small trainable head on frozen MiniLM embeddings.

    ê = √D · e / ‖e‖,   h = tanh(W_p ê + b_p) ∈ R^P,   logits = W_c h + b_c ∈ R²,   P(machine | text) = softmax(logits)₁

with e the frozen, mean-pooled MiniLM embedding of the text (:class:`~sparring.language.mgt.encoder.TextEncoder`)
and P = 128. ``features(ê) = h / ‖h‖`` is the space the contrastive loss of REACT works in. Why a head on frozen
embeddings: with 16–128 shots per class and two CPU cores, fine-tuning MiniLM itself (or LoRA on it) costs a
MiniLM forward *and backward* per text per epoch and per attacked candidate, and overfits the few shots; the
frozen encoder embeds each distinct text once (cached), so training, the black-box search and every evaluation
run on (N, 384) tensors. The trainable projection gives the contrastive objective a space of its own, apart from
the classifier.

Labels: 0 human, 1 machine, 2 an evasive rewrite of a machine text (a machine text too, for every loss that only
needs the binary label, ``y > 0``). :func:`fit_detector` trains through the core :class:`~sparring.train.Trainer`
(full batch, Adam, constant LR). :func:`f1_machine` and :func:`attack_success_rate` are the figures the benchmark
reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import DataError
from sparring.objectives.base import Objective

HUMAN, MACHINE, REWRITE = 0, 1, 2


class MGTDetector(nn.Module):
    """Projection + linear head on frozen embeddings (module doc): ``forward(e) → logits (B, 2)``."""

    def __init__(self, dim: int, *, projection: int = 128, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj = nn.Linear(dim, projection)
            self.head = nn.Linear(projection, 2)

    def hidden(self, e: Tensor) -> Tensor:  # (B, D) → (B, P)
        return torch.tanh(self.proj(F.normalize(e, dim=-1) * e.shape[-1] ** 0.5))

    def features(self, e: Tensor) -> Tensor:
        """Unit-norm projections (B, P), the contrastive space."""
        return F.normalize(self.hidden(e), dim=-1)

    def forward(self, e: Tensor) -> Tensor:
        return self.head(self.hidden(e))

    @torch.no_grad()
    def score(self, e: Tensor) -> Tensor:
        """P(machine) (B,)."""
        was = self.training
        self.eval()
        out = self(e).softmax(-1)[:, 1]
        self.train(was)
        return out


@dataclass(kw_only=True)
class FitConfig:
    """Head training: ``epochs`` full-batch Adam steps at ``lr`` (defaults 150, 3e-3, weight decay 1e-4)."""

    epochs: int = 150
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


def fit_detector(detector: MGTDetector, x: Tensor, y: Tensor, *, objective: Objective,
                 config: FitConfig | None = None) -> MGTDetector:
    """Train ``detector`` in place on embeddings ``x`` (N, D) and labels ``y`` (N,) ∈ {0, 1, 2} with ``objective``
    (full batch, on the core Trainer); returns it in eval mode."""
    from sparring.train import TrainConfig, Trainer

    config = config or FitConfig()
    if len(x) != len(y) or not len(x):
        raise DataError(f"fit_detector needs as many labels as embeddings (and some), got {len(x)} and {len(y)}")
    if not bool((y == HUMAN).any() & (y != HUMAN).any()):
        raise DataError("fit_detector needs human (0) and machine (1 or 2) examples")
    train = TrainConfig(epochs=config.epochs, batch_size=len(x), optimizer="adam", lr=config.lr,
                        weight_decay=config.weight_decay, schedule="constant", seed=config.seed, progress=False,
                        cpu=True, val_size=1, holdout_size=1)
    Trainer(model=detector, objective=objective, train=(x, y.long()), config=train, num_classes=3).fit()
    return detector.eval()


def f1_machine(pred: Tensor, y: Tensor) -> float:
    """F1 of the machine class: 2·TP / (2·TP + FP + FN), with ``pred`` and ``y`` booleans (or 0/1) "machine"."""
    pred, y = pred.bool(), y.bool()
    tp = int((pred & y).sum())
    denominator = 2 * tp + int((pred & ~y).sum()) + int((~pred & y).sum())
    return 2 * tp / denominator if denominator else 1.0


def attack_success_rate(before: Tensor, after: Tensor) -> float:
    """Of the machine texts detected before the attack (``before`` True), the fraction classified human after."""
    before, after = before.bool(), after.bool()
    detected = int(before.sum())
    return int((before & ~after).sum()) / detected if detected else 0.0


__all__ = ["HUMAN", "MACHINE", "REWRITE", "FitConfig", "MGTDetector", "attack_success_rate", "f1_machine",
           "fit_detector"]
