"""BPR training of a :class:`~sparring.recsys.models.Recommender` with any objective, through the core
:class:`~sparring.train.Trainer`.

Each epoch pairs every training interaction (u, i⁺) with one negative i⁻ drawn uniformly from the items u has
*not* interacted with in training, shuffles the triples (:class:`RecEpochData`, the Trainer's
:class:`~sparring.data.epochs.EpochData`), and for each batch x (B, 3) with labels y = 0 minimises::

    L = mean_b objective(model, x, y).loss_b + reg_weight · mean_b model.regularization(x)_b

(the Trainer's ``regularizer`` hook adds the second term). The model's ``forward`` gives logits [s(u, i⁺), s(u, i⁻)],
so the core ``standard`` objective (``sparring.objectives.build("standard")``: cross-entropy of the logits against
label 0) *is* BPR, ``−log σ(s⁺ − s⁻)`` (Rendle et al., UAI 2009); adversarial objectives (APR, UAT-MC) plug in the
same way.

Defaults (UAT-MC code, ``methods.md`` §7.2): Adam, batch 2048, 50 epochs, 1 negative; the learning rate and
reg_weight default to the model's (VBPR lr 1e-3, MMGCN 5e-4; see each model for its reg_weight convention).
Randomness: the negatives and the order of epoch e come from a ``torch.Generator`` seeded by (seed, e), so a seed
(and the model's initial weights) fixes the run, and a run resumed from the checkpoint of epoch k reproduces the
uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparring.errors import ConfigError, DataError
from sparring.objectives.base import Objective
from sparring.recsys.data import RecData
from sparring.recsys.models import Recommender
from sparring.train import TrainConfig, Trainer

#: Trainer record keys renamed in :func:`fit`'s records (the rest lose their ``train_`` prefix).
RENAMED = {"train_loss": "loss", "train_objective_loss": "objective_loss", "train_regularizer": "reg",
           "time_s": "time"}


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch): independent streams per epoch, the same for the same pair."""
    digest = hashlib.sha256(f"sparring.recsys:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_negatives(data: RecData, users: Tensor, generator: torch.Generator, *, max_rounds: int = 32) -> Tensor:
    """(E,) items drawn uniformly from those each user in ``users`` (E,) has no training interaction with.

    Rejection sampling (vectorised: redraw only the rejected ones); the few left after ``max_rounds`` (users with
    nearly every item) are drawn exactly from their allowed items."""
    seen = data.mask("train")
    if bool(seen[users].all(dim=1).any()):
        raise DataError("a user has interacted with every item in training, so no negative item exists")
    negatives = torch.randint(data.n_items, users.shape, generator=generator)
    bad = seen[users, negatives]
    for _ in range(max_rounds):
        if not bool(bad.any()):
            return negatives
        redraw = torch.randint(data.n_items, (int(bad.sum()),), generator=generator)
        negatives[bad] = redraw
        bad = seen[users, negatives]
    if bool(bad.any()):
        allowed = (~seen[users[bad]]).float()  # (R, n_items), uniform over each row's allowed items
        negatives[bad] = torch.multinomial(allowed, 1, generator=generator).squeeze(1)
    return negatives


def sample_triples(data: RecData, generator: torch.Generator) -> Tensor:
    """(E, 3) [user, positive, negative] triples, one fresh negative per training pair, in a shuffled order."""
    pairs = data.train[torch.randperm(len(data.train), generator=generator)]
    negatives = sample_negatives(data, pairs[:, 0], generator)
    return torch.cat([pairs, negatives[:, None]], dim=1)


class RecEpochData:
    """The training pairs as the Trainer's :class:`~sparring.data.epochs.EpochData`: epoch e's rows are
    ``sample_triples(data, epoch_generator(seed, e))`` (already shuffled, so the Trainer keeps their order), every
    label is 0 (the positive comes first in the logits)."""

    shuffle = False

    def __init__(self, data: RecData, *, seed: int) -> None:
        self.data, self.seed = data, seed
        self.epoch: int | None = None
        self.triples: Tensor | None = None

    def __len__(self) -> int:
        return len(self.data.train)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch or self.triples is None:
            self.triples = sample_triples(self.data, epoch_generator(self.seed, epoch))
            self.epoch = epoch

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        if self.triples is None:
            self.set_epoch(0)
        assert self.triples is not None
        x = self.triples[torch.as_tensor(indices, dtype=torch.long)]
        return x, torch.zeros(len(x), dtype=torch.long)

    def class_counts(self) -> list[int]:
        return [len(self.data.train), 0]  # everything is label 0

    def tensors(self) -> None:
        return None


def regularizer(reg_weight: float) -> Callable[[torch.nn.Module, Tensor], Tensor]:
    """The Trainer's ``regularizer`` hook: ``reg_weight · mean_b model.regularization(x)_b``."""
    return lambda model, x: reg_weight * model.regularization(x).mean()  # type: ignore[operator]


def check_fit(model: Any, data: RecData, *, epochs: Any, batch_size: Any) -> None:
    """The model is a Recommender built for ``data`` and the loop settings are positive integers."""
    if not isinstance(model, Recommender):
        raise ConfigError(f"fit trains a sparring.recsys Recommender, got {type(model).__name__}")
    if (model.n_users, model.n_items) != (data.n_users, data.n_items):
        raise DataError(f"the model was built for {model.n_users} users x {model.n_items} items but the data has "
                        f"{data.n_users} x {data.n_items}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise ConfigError(f"fit {name} must be a positive integer, got {value!r}")
    if len(data.train) == 0:
        raise DataError("the data has no training interactions")


def build_trainer(
    model: Recommender,
    data: RecData,
    objective: Objective,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    reg_weight: float,
    seed: int,
    progress: bool,
    out_dir: Path | None = None,
    cpu: bool = False,
    epoch_hook: Callable[[dict[str, Any]], None] | None = None,
) -> Trainer:
    """The core Trainer set up for BPR on ``data`` (Adam, constant learning rate, no validation pass)."""
    config = TrainConfig(optimizer="adam", lr=lr, weight_decay=weight_decay, schedule="constant", epochs=epochs,
                         batch_size=batch_size, seed=seed, progress=progress, cpu=cpu)
    return Trainer(model=model, objective=objective, train=RecEpochData(data, seed=seed), val=None, config=config,
                   out_dir=out_dir, regularizer=regularizer(reg_weight), epoch_hook=epoch_hook)


def as_record(row: dict[str, Any]) -> dict[str, Any]:
    """A Trainer history row as a :func:`fit` record: ``loss``, ``objective_loss``, ``reg``, ``time``, the
    objective's metrics without the ``train_`` prefix, ``epoch`` (0-based) as it is."""
    return {RENAMED.get(k, k.removeprefix("train_")): v for k, v in row.items()}


def fit(
    model: Recommender,
    data: RecData,
    objective: Objective,
    *,
    epochs: int = 50,
    batch_size: int = 2048,
    lr: float | None = None,
    weight_decay: float = 0.0,
    reg_weight: float | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    cpu: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``data.train`` with ``objective`` by Adam (the core Trainer); one record per epoch.

    Args:
        model: a recommender built for ``data`` (same users and items).
        objective: per-example losses on (x, y) = (triples (B, 3), zeros (B,)); ``build("standard")`` is BPR.
        epochs / batch_size: passes over the training pairs and triples per step (defaults 50 / 2048).
        lr: Adam learning rate; None takes ``model.lr`` (VBPR 1e-3, MMGCN 5e-4).
        weight_decay: Adam's (coupled) weight decay on all parameters; 0 as in the UAT-MC code, which
            regularises only the embeddings a batch uses (``reg_weight``).
        reg_weight: weight of ``model.regularization(x).mean()``; None takes ``model.reg_weight``.
        seed: seeds each epoch's negatives and order with (seed, epoch), and the Trainer's per-epoch generator.
        progress: show the Trainer's progress bar.
        log: called with each epoch's record as it is made.
        out_dir: a run folder for the Trainer's ``metrics.jsonl`` and ``checkpoints/`` (None: nothing written).
        resume: continue from the newest complete checkpoint in ``out_dir``.
        cpu: train on the CPU even when a GPU is present.

    Records: ``epoch`` (0-based), ``loss`` (objective_loss + reg), ``objective_loss``, ``reg`` (the weighted term
    reg_weight · mean regularization, the Trainer's ``train_regularizer``), ``lr``, ``step``, the
    objective's scalar metrics averaged over the epoch's rows, the metrics its epoch hooks return, and ``time``
    (seconds). The model is left in the training mode it had on entry (on the Trainer's device).
    """
    check_fit(model, data, epochs=epochs, batch_size=batch_size)
    lr = model.lr if lr is None else lr
    reg_weight = model.reg_weight if reg_weight is None else reg_weight
    if not lr > 0 or weight_decay < 0 or reg_weight < 0:
        raise ConfigError(f"fit needs lr > 0, weight_decay >= 0, reg_weight >= 0 (got {lr}, {weight_decay}, "
                          f"{reg_weight})")
    if epochs == 0:
        return []
    was_training = model.training
    trainer = build_trainer(model, data, objective, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, reg_weight=reg_weight, seed=seed, progress=progress,
                            out_dir=out_dir, cpu=cpu,
                            epoch_hook=None if log is None else lambda row: log(as_record(row)))
    try:
        result = trainer.fit(resume=resume)
    finally:
        model.train(was_training)
    return [as_record(row) for row in result.history]


__all__ = ["RecEpochData", "as_record", "build_trainer", "epoch_generator", "fit", "regularizer", "sample_negatives",
           "sample_triples"]
