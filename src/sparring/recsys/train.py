"""BPR training of a :class:`~sparring.recsys.models.Recommender` with any objective.

Each epoch pairs every training interaction (u, i⁺) with one negative i⁻ drawn uniformly from the items u has
*not* interacted with in training, shuffles the triples, and for each batch x (B, 3) with labels y = 0 minimises::

    L = mean_b objective(model, x, y).loss_b + reg_weight · mean_b model.regularization(x)_b

The model's ``forward`` gives logits [s(u, i⁺), s(u, i⁻)], so the core ``standard`` objective
(``sparring.objectives.build("standard")``: cross-entropy of the logits against label 0) *is* BPR,
``−log σ(s⁺ − s⁻)`` (Rendle et al., UAI 2009); adversarial objectives (APR, UAT-MC) plug in the same way.

Defaults (UAT-MC code, ``methods.md`` §7.2): Adam, batch 2048, 50 epochs, 1 negative; the learning rate and
reg_weight default to the model's (VBPR lr 1e-3, MMGCN 5e-4; see each model for its reg_weight convention).
Randomness: the negatives and the order of epoch e come from a ``torch.Generator`` seeded by (seed, e), which is
also handed to the objective, so a seed (and the model's initial weights) fixes the run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sparring.context import device_of
from sparring.errors import ConfigError, DataError
from sparring.objectives.base import Objective
from sparring.recsys.data import RecData
from sparring.recsys.models import Recommender


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
) -> list[dict[str, Any]]:
    """Train ``model`` on ``data.train`` with ``objective`` by Adam; returns one record per epoch.

    Args:
        model: a recommender built for ``data`` (same users and items).
        objective: per-example losses on (x, y) = (triples (B, 3), zeros (B,)); ``build("standard")`` is BPR.
        epochs / batch_size: passes over the training pairs and triples per step (defaults 50 / 2048).
        lr: Adam learning rate; None takes ``model.lr`` (VBPR 1e-3, MMGCN 5e-4).
        weight_decay: Adam's (coupled) weight decay on all parameters; 0 as in the UAT-MC code, which
            regularises only the embeddings a batch uses (``reg_weight``).
        reg_weight: weight of ``model.regularization(x).mean()``; None takes ``model.reg_weight``.
        seed: seeds each epoch's generator (negatives, order, objective randomness) with (seed, epoch).
        progress: show a rich progress bar over epochs.
        log: called with each epoch's record as it is made (e.g. to write ``metrics.jsonl``).

    Records: ``epoch``, ``loss`` (objective + regularisation), ``objective_loss``, ``reg``, the objective's scalar
    metrics averaged over batches, the metrics its epoch hooks return, and ``time`` (seconds).
    The model is left in the training mode it had on entry.
    """
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
    lr = model.lr if lr is None else lr
    reg_weight = model.reg_weight if reg_weight is None else reg_weight
    if not lr > 0 or weight_decay < 0 or reg_weight < 0:
        raise ConfigError(f"fit needs lr > 0, weight_decay >= 0, reg_weight >= 0 (got {lr}, {weight_decay}, "
                          f"{reg_weight})")
    device = device_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(data.train)
    # Everything is label 0 (the positive comes first), so the "class counts" are (pairs, 0).
    objective.on_train_begin(model, class_counts=[n, 0], epochs=epochs, train=None)
    was_training = model.training
    records: list[dict[str, Any]] = []
    bar = _progress(progress)
    task = bar.add_task("bpr", total=epochs) if bar is not None else None
    try:
        if bar is not None:
            bar.start()
        model.train()
        for epoch in range(epochs):
            start = time.perf_counter()
            gen = epoch_generator(seed, epoch)
            record: dict[str, Any] = {"epoch": epoch, **objective.on_epoch_begin(model, epoch=epoch)}
            triples = sample_triples(data, gen).to(device)
            # Sums stay on the device until the epoch ends: no host sync per batch.
            sums: dict[str, Tensor] = {}
            batches = 0
            for lo in range(0, n, batch_size):
                x = triples[lo:lo + batch_size]
                y = torch.zeros(len(x), dtype=torch.long, device=device)
                out = objective(model, x, y, generator=gen)
                obj_loss = out.loss.mean()
                reg = model.regularization(x).mean()
                loss = obj_loss + reg_weight * reg
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                batch = {"loss": loss, "objective_loss": obj_loss, "reg": reg,
                         **{k: v for k, v in out.metrics.items() if _scalar(v)}}
                for key, value in batch.items():
                    value = torch.as_tensor(value).detach().float().to(device)
                    sums[key] = sums[key] + value if key in sums else value
                batches += 1
            record.update({k: float(v) / batches for k, v in sums.items()})
            record.update(objective.on_epoch_end(model, epoch=epoch, holdout=None, generator=gen))
            model.train()  # an epoch hook may have switched modes
            record["time"] = time.perf_counter() - start
            records.append(record)
            if log is not None:
                log(record)
            if bar is not None:
                bar.update(task, advance=1, description=f"bpr · epoch {epoch + 1} · loss {record['loss']:.4f}")
    finally:
        model.train(was_training)
        if bar is not None:
            bar.stop()
    return records


def _scalar(value: object) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1
    return isinstance(value, int | float) and not isinstance(value, bool)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


__all__ = ["epoch_generator", "fit", "sample_negatives", "sample_triples"]
