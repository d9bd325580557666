"""Free adversarial training (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein,
"Adversarial Training for Free!", NeurIPS 2019).

Each minibatch is replayed m times; every replay is ONE forward/backward on ``x + δ`` whose gradients
serve twice, to step the weights and to step the perturbation:

    g_θ, g_δ = ∇_(θ,δ) CE(f_θ(clip_box(x + δ)), y)
    θ ← optimizer step with g_θ,      δ ← Π_ε(δ + ε · sign(g_δ))

δ (batch shaped) is *never reset*: it carries over across replays and across minibatches, starting
from zero. Paper defaults (CIFAR-10): ε = 8/255, step = ε, m = 8 (m ∈ {2, 4, 8, 10} studied), WRN-32-10,
trained for (the usual epochs) / m passes over the data so the cost matches natural training. Like the
authors' code, δ is clipped to the ε-ball only; the box is applied to ``x + δ``.

How the replays meet the trainer. An objective returns per-example losses and the trainer does the
backward and the optimizer step, so each call is one replay: the call returns the loss of ``x + δ`` with
δ a leaf that requires grad, the trainer's backward fills both the weight gradients and ``δ.grad``, and
the next call first applies ``δ ← Π_ε(δ + ε · sign(δ.grad))`` (the same update, applied just before the
next forward rather than just after the backward). The m replays then come from one of two places:

* the optimizer is bound: :class:`~sparring.train.Trainer` binds its own through :meth:`bind_optimizer` (so YAML
  configs work), or set ``objective.optimizer`` to any ``torch.optim.Optimizer`` in a loop of your own:
  the call runs the first m − 1 replays itself (zero grad, forward, backward, step) and returns the m-th
  for the trainer's own backward and step. These inner steps bypass the trainer's gradient clipping,
  fp16 loss scaling and LR-scheduler ticks (one tick per batch, not per replay); use fp32 or bf16.
* no optimizer is bound: each call is a single replay, and the caller must present every batch m times
  (a trainer replay hook); a plain loop that shows each batch once gets m = 1. A warning says so once.

The perturbation is not part of :meth:`state_dict`: after a resume it restarts from zero.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.pgd_at import attack_metrics
from sparring.threat import LinfBall, ThreatModel


@OBJECTIVES.register("free_at")
@dataclass(kw_only=True)
class FreeAT(Objective):
    """Free-AT: m replays per batch, one forward/backward each, with a persistent perturbation.

    Attributes:
        threat: the training threat model (default L∞, ε = 8/255, box [0, 1]).
        replays: m, the replays per minibatch (paper: 8 on CIFAR-10).
        rel_step: the δ step as a multiple of ε (paper: 1, i.e. step = ε).
        optimizer: not a constructor argument; bind the training optimizer to let a call run the
            first m − 1 replays itself (see the module docstring).
    """

    name = "free_at"
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    replays: int = 8
    rel_step: float = 1.0
    optimizer: torch.optim.Optimizer | None = field(default=None, init=False, repr=False, compare=False)
    delta: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _leaf: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _warned: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.replays < 1 or self.rel_step <= 0:
            raise ConfigError(f"Free-AT needs replays >= 1 and rel_step > 0, got {self.replays}, {self.rel_step}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threat": self.threat.describe(), "replays": self.replays, "rel_step": self.rel_step}

    def _absorb(self) -> None:
        """Apply the pending δ update from the last backward: ``δ ← Π_ε(δ + α · step(δ.grad))``."""
        leaf, self._leaf = self._leaf, None
        if leaf is None or leaf.grad is None or self.delta is None:
            return
        rows = leaf.shape[0]
        moved = leaf.detach() + self.threat.step(leaf.grad.to(leaf.dtype), self.rel_step * self.threat.eps_for(leaf))
        ball = replace(self.threat, bounds=None)  # δ is kept in the ε-ball only; the box acts on x + δ
        self.delta[:rows] = ball.project(moved, torch.zeros_like(moved))

    def _replay(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One forward on ``x + δ`` with δ a fresh leaf whose gradient the next backward fills."""
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or self.delta.shape[0] < x.shape[0]:
            self.delta = torch.zeros_like(x)  # (B, ...) as the paper's global noise, first batch's shape
        leaf = self.delta[: x.shape[0]].to(x.dtype).clone().requires_grad_(True)
        self._leaf = leaf
        logits = model(self.threat.clip_box(x + leaf))
        return cross_entropy(logits, y), logits

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is None:  # one set by hand wins
            self.optimizer = optimizer
        super().bind_optimizer(optimizer)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        del generator  # deterministic: δ starts at zero
        x = x.detach()
        self._absorb()
        if self.optimizer is not None:
            for _ in range(self.replays - 1):
                self.optimizer.zero_grad(set_to_none=True)
                loss, _ = self._replay(model, x, y)
                loss.mean().backward()
                self.optimizer.step()
                self._absorb()
            self.optimizer.zero_grad(set_to_none=True)
        elif self.replays > 1 and not self._warned:
            self._warned = True
            warnings.warn(
                f"Free-AT with replays={self.replays} but no optimizer bound: each call is one replay. "
                "Set objective.optimizer = trainer.optimizer, or present each batch `replays` times",
                UserWarning,
                stacklevel=2,
            )
        loss, logits = self._replay(model, x, y)
        return ObjectiveOutput(loss=loss, logits=logits, metrics=attack_metrics(logits, y))
