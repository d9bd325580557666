"""Adversarial training and robust evaluation inside PyTorch Lightning, as two callbacks.

:class:`AdversarialTraining` turns any LightningModule's training into training on any sparring objective;
:class:`RobustEvaluation` runs a sparring attack suite at the end of validation and logs clean and robust accuracy.
Minimal use (the module's ``forward`` maps x to logits; its ``training_step`` can stay the standard one)::

    trainer = L.Trainer(max_epochs=10, callbacks=[
        AdversarialTraining(PGDAT(threat=LinfBall(eps=8 / 255))),
        RobustEvaluation(LinfBall(eps=8 / 255), suite="fast", max_samples=512),
    ])
    trainer.fit(module, train_loader, val_loader)

Why a callback and not a mixin. A mixin has to be put into the module's class, and its Lightning hooks
(``on_train_epoch_start``, ``on_save_checkpoint``, ...) are silently shadowed by the module's own overrides unless
the user remembers ``super()``. A callback needs no change to the module: the same module trains normally without
it and adversarially with it (what a comparison with standard training needs), it has its own lifecycle hooks for
the objective, and Lightning saves its ``state_dict`` in every checkpoint under its own key, so the objective's
state (WARDEN/DRO's learned temperature, fast AT's detector, MCAT's generators) is saved and restored with no code
in the module. The cost: Lightning calls the module's ``training_step``, so the callback installs its own step on
the module *instance* for the duration of ``fit`` (at ``setup``; removed at ``teardown``; the class is untouched).
A module that must keep its own step (manual optimisation, extra losses) sets ``replace_training_step=False`` and
calls the callback from it::

    def training_step(self, batch, batch_idx):
        return self.adversarial.loss(self, batch, batch_idx)   # + anything else

What the callback does with the objective (the same contract as :class:`~sparring.train.Trainer`):

* each training batch: ``objective(model, x, y, generator=g).total()`` is the loss; the objective's scalar metrics
  are logged as ``train/<name>`` (step and epoch means; per-example vectors are skipped). ``model`` is the module
  itself (its ``forward``), an attribute of it (``model="net"``) or ``model=callable(module) -> nn.Module``; it
  must map x to logits (B, K). ``g`` is a ``torch.Generator`` on the module's device seeded from (seed, global
  step, batch index, rank): a run, and a resumed run, attacks the same way;
* ``objective.on_train_begin(model, class_counts=..., epochs=trainer.max_epochs, train=...)`` at ``on_train_start``
  (after a checkpoint's state was restored, the library's order). ``class_counts`` is the argument, else the
  bincount of ``train``'s labels, else ``[]``: objectives that need counts (AT-BSL, RobustLT) then want them given,
  here or on the objective itself;
* ``on_epoch_begin`` / ``on_epoch_end`` at each training epoch's start and end, their metrics logged per epoch
  (``on_epoch_end`` gets ``holdout``, for fast AT's catastrophic-overfitting detector).

Distributed training (DDP). Lightning routes ``training_step`` through the DDP wrapper's forward, instance
attribute included, so the objective's forwards run where gradient synchronisation is armed; the attack's own
forwards run with the parameters frozen, so no reduction hook fires. Every rank draws its own attack noise (the
rank is in the seed). Metrics are logged with ``sync_dist`` as given. :class:`RobustEvaluation` runs on every rank:
:func:`~sparring.evaluate.evaluate` is itself distributed (each rank attacks its share of the batches and all get
the complete result), so the held set is gathered from all ranks first and is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from sparring.attacks import Attack
from sparring.attacks.cascade import Cascade
from sparring.errors import ConfigError
from sparring.evaluate import Evaluation, evaluate
from sparring.objectives.base import Objective
from sparring.threat import ThreatModel

ModelSpec = str | Callable[[pl.LightningModule], nn.Module] | None
BatchToXY = Callable[[Any], tuple[Tensor, Tensor]]


def unpack_xy(batch: Any) -> tuple[Tensor, Tensor]:
    """The default batch reader: a tuple or list ``(x, y)`` of two tensors (a ``TensorDataset``'s batches)."""
    if isinstance(batch, tuple | list) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
        return batch[0], batch[1]
    kind = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, tuple | list) else type(batch).__name__
    raise ConfigError(f"expected a batch (x, y) of two tensors, got {kind}; pass batch_to_xy= to unpack your batches")


def network_of(pl_module: pl.LightningModule, model: ModelSpec) -> nn.Module:
    """The module that maps x to logits, as ``model`` names it (None: the LightningModule and its ``forward``)."""
    if model is None:
        if type(pl_module).forward is pl.LightningModule.forward:
            raise ConfigError(f"{type(pl_module).__name__} has no forward(x) -> logits: define one, or pass model= "
                              f"(an attribute name or a callable returning the network)")
        return pl_module
    net = getattr(pl_module, model, None) if isinstance(model, str) else model(pl_module)
    if not isinstance(net, nn.Module):
        where = f"attribute {model!r}" if isinstance(model, str) else "model(module)"
        raise ConfigError(f"{where} of {type(pl_module).__name__} is not an nn.Module mapping x to logits")
    return net


def _scalars(metrics: dict[str, Any]) -> dict[str, Tensor | float]:
    """The loggable entries: numbers and one-element tensors (per-example vectors are left out)."""
    out: dict[str, Tensor | float] = {}
    for name, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            out[name] = value.detach().float().reshape(())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class AdversarialTraining(pl.Callback):
    """Train a LightningModule on a sparring objective's loss (module doc).

    Args:
        objective: any :class:`~sparring.objectives.base.Objective` (PGD-AT, TRADES, DRO/WARDEN, ...).
        model: the network the objective attacks and trains: None (the module's ``forward``), an attribute name,
            or a callable ``module -> nn.Module``; it maps x to logits (B, K).
        batch_to_xy: reads ``(x, y)`` from a batch (default: a two-tensor tuple or list).
        seed: attack generators are seeded from (seed, global step, batch index, rank).
        class_counts: per-class training counts for ``on_train_begin`` (default: from ``train``, else ``[]``).
        train: the training tensors ``(x, y)`` for ``on_train_begin`` (MCAT fits on them); optional.
        holdout: ``(x, y)`` handed to ``on_epoch_end`` (fast AT's catastrophic-overfitting detector); optional.
        epochs: the epoch count for ``on_train_begin`` (default: the trainer's ``max_epochs``).
        replace_training_step: install :meth:`loss` as the module's training step during fit (default); False
            when the module's own ``training_step`` calls :meth:`loss`.
        log_prefix: metrics are logged as ``{log_prefix}/loss``, ``{log_prefix}/<objective metric>``.
        sync_dist: passed to ``LightningModule.log`` (average the logged metrics over processes).
    """

    def __init__(
        self,
        objective: Objective,
        *,
        model: ModelSpec = None,
        batch_to_xy: BatchToXY = unpack_xy,
        seed: int = 0,
        class_counts: Sequence[int] | None = None,
        train: tuple[Tensor, Tensor] | None = None,
        holdout: tuple[Tensor, Tensor] | None = None,
        epochs: int | None = None,
        replace_training_step: bool = True,
        log_prefix: str = "train",
        sync_dist: bool = False,
    ) -> None:
        if not isinstance(objective, Objective):
            raise ConfigError(f"objective must be a sparring Objective, got {type(objective).__name__}")
        if epochs is not None and epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        self.objective, self.model, self.batch_to_xy, self.seed = objective, model, batch_to_xy, seed
        if class_counts is None and train is not None:
            class_counts = torch.bincount(train[1].long().cpu()).tolist()
        self.class_counts = [int(n) for n in class_counts] if class_counts is not None else []
        self.train, self.holdout, self.epochs = train, holdout, epochs
        self.replace_training_step, self.log_prefix, self.sync_dist = replace_training_step, log_prefix, sync_dist

    @property
    def state_key(self) -> str:
        return self._generate_state_key(objective=self.objective.name)

    # ---- the step ---------------------------------------------------------------------------------------------

    def loss(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
        """The objective's scalar training loss on ``batch``; logs it and the objective's scalar metrics."""
        x, y = self.batch_to_xy(batch)
        net = network_of(pl_module, self.model)
        out = self.objective(net, x, y, generator=self._generator(pl_module, batch_idx))
        loss = out.total()
        logged = {"loss": loss.detach(), **_scalars(out.metrics)}
        for name, value in logged.items():
            pl_module.log(f"{self.log_prefix}/{name}", value, on_step=True, on_epoch=True, batch_size=len(y),
                          prog_bar=name == "loss", sync_dist=self.sync_dist)
        return loss

    def _generator(self, pl_module: pl.LightningModule, batch_idx: int) -> torch.Generator:
        """Seeded from (seed, global step, batch index, rank): reproducible, distinct across micro-batches of an
        accumulated step and across processes."""
        trainer = pl_module.trainer
        key = ((self.seed * 1_000_003 + trainer.global_step) * 1_009 + batch_idx) * 4_099 + trainer.global_rank
        return torch.Generator(device=pl_module.device).manual_seed(key % (2**63))

    # ---- installing the step ----------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network_of(pl_module, self.model)  # fail now, not at the first batch
        if not self.replace_training_step:
            return
        if not pl_module.automatic_optimization:
            raise ConfigError("a module with manual optimization keeps its training_step: pass "
                              "replace_training_step=False and call AdversarialTraining.loss from it")
        callback = self

        def training_step(batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Tensor:
            return callback.loss(pl_module, batch, batch_idx)

        pl_module.training_step = training_step  # type: ignore[method-assign]  # the instance's, not the class's

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.__dict__.pop("training_step", None)  # the class's training_step again

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        pl_module.__dict__.pop("training_step", None)  # a failed fit skips teardown

    # ---- the objective's lifecycle ----------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = self.epochs if self.epochs is not None else trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ConfigError(f"the trainer's max_epochs is {epochs}: set it, or pass epochs= to AdversarialTraining")
        self.objective.on_train_begin(network_of(pl_module, self.model), class_counts=list(self.class_counts),
                                      epochs=epochs, train=self.train)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = self.objective.on_epoch_begin(network_of(pl_module, self.model), epoch=trainer.current_epoch)
        self._log_epoch(pl_module, metrics)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        holdout = None
        if self.holdout is not None:
            holdout = (self.holdout[0].to(pl_module.device), self.holdout[1].to(pl_module.device))
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + 7919 * (trainer.current_epoch + 1))
        with torch.enable_grad():
            metrics = self.objective.on_epoch_end(network_of(pl_module, self.model), epoch=trainer.current_epoch,
                                                  holdout=holdout, generator=generator)
        self._log_epoch(pl_module, metrics)

    def _log_epoch(self, pl_module: pl.LightningModule, metrics: dict[str, Any]) -> None:
        for name, value in _scalars(metrics).items():
            pl_module.log(f"{self.log_prefix}/{name}", value, on_step=False, on_epoch=True, sync_dist=self.sync_dist)

    # ---- checkpoints: Lightning stores this under checkpoint["callbacks"][state_key] --------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.objective.load_state_dict(state_dict.get("objective", {}))


class RobustEvaluation(pl.Callback):
    """Run a sparring suite at validation end and log ``{log_prefix}/clean_accuracy`` and ``/robust_accuracy``.

    The held set is the first ``max_samples`` validation points (dataloader 0, read during the first validation
    epoch after the sanity check, then kept fixed so epochs are comparable), or the tensors ``data`` if given (the
    validation loop then only triggers the evaluation). The evaluation is :func:`~sparring.evaluate.evaluate`: the
    suite as a cascade plus its gradient-masking checks; ``trustworthy`` (1 or 0) is logged beside the accuracies
    and the full :class:`~sparring.evaluate.Evaluation` is kept as :attr:`last`. Lightning validates without
    autograd (``torch.inference_mode``): the attacks run under ``inference_mode(False)`` and ``enable_grad`` on
    inputs cloned out of inference mode. The module's mode, ``requires_grad`` and ``.grad`` are left as found
    (the attacks' restoring context). Under DDP every rank runs it on the same gathered set (module doc).

    Args:
        threat: the threat model of the evaluation (a scalar ε).
        suite: ``"fast"`` (APGD-CE, default), ``"standard"``, ``"plus"``, a Cascade, or a list of attacks.
        data: ``(x, y)`` to evaluate instead of validation batches.
        max_samples: size of the held set.
        every_n_epochs: evaluate after every n-th epoch's validation.
        eps_curve: radii of an ε-curve (default none: the headline only).
        batch_size: the evaluation's batch size.
        seed: the evaluation's seed (same points, same attacks, every epoch).
        precision: ``"fp32"`` or ``"bf16"`` (attacks under bfloat16 autocast, breaks re-checked in fp32).
        model: as for :class:`AdversarialTraining`. batch_to_xy: as for :class:`AdversarialTraining`.
        log_prefix: names of the logged values.
    """

    def __init__(
        self,
        threat: ThreatModel,
        *,
        suite: str | Cascade | Sequence[Attack] = "fast",
        data: tuple[Tensor, Tensor] | None = None,
        max_samples: int = 512,
        every_n_epochs: int = 1,
        eps_curve: Sequence[float] = (),
        batch_size: int = 256,
        seed: int = 0,
        precision: str = "fp32",
        model: ModelSpec = None,
        batch_to_xy: BatchToXY = unpack_xy,
        log_prefix: str = "robust",
    ) -> None:
        if max_samples < 1 or every_n_epochs < 1:
            raise ConfigError(f"RobustEvaluation needs max_samples >= 1 and every_n_epochs >= 1, got {max_samples} "
                              f"and {every_n_epochs}")
        self.threat, self.suite, self.max_samples, self.every_n_epochs = threat, suite, max_samples, every_n_epochs
        self.eps_curve, self.batch_size, self.seed, self.precision = list(eps_curve), batch_size, seed, precision
        self.model, self.batch_to_xy, self.log_prefix = model, batch_to_xy, log_prefix
        self._held: tuple[Tensor, Tensor] | None = None
        if data is not None:
            self._held = (data[0][:max_samples].detach().cpu(), data[1][:max_samples].detach().cpu())
        self._parts: list[tuple[Tensor, Tensor]] = []
        self.last: Evaluation | None = None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._held is not None or trainer.sanity_checking or dataloader_idx != 0:
            return
        have = sum(len(y) for _, y in self._parts)
        if have >= self.max_samples:
            return
        x, y = self.batch_to_xy(batch)
        with torch.inference_mode(False):  # normal tensors, usable by autograd later
            self._parts.append((x[: self.max_samples - have].detach().cpu().clone(),
                                y[: self.max_samples - have].detach().cpu().clone()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._held is None:
            held = self._gather(trainer)
            if len(held[1]) == 0:  # no validation point seen (yet): nothing to evaluate
                return
            self._held = held
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        net = network_of(pl_module, self.model)
        with torch.inference_mode(False), torch.enable_grad():
            result = evaluate(net, self._held, self.threat, suite=self.suite, eps_curve=self.eps_curve,
                              batch_size=self.batch_size, seed=self.seed, precision=self.precision,
                              device=pl_module.device, progress=False)  # Lightning draws its own bars
        self.last = result
        values = {"clean_accuracy": result.clean_accuracy, "robust_accuracy": result.robust_accuracy,
                  "trustworthy": float(result.trustworthy)}
        for name, value in values.items():  # the same on every rank: the mean over ranks changes nothing
            pl_module.log(f"{self.log_prefix}/{name}", value, on_step=False, on_epoch=True,
                          sync_dist=trainer.world_size > 1)

    def _gather(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor]:
        """This rank's collected points, or under DDP every rank's (in rank order), capped at ``max_samples``."""
        parts = self._parts
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[tuple[Tensor, Tensor]] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank in gathered for p in rank or []]
        self._parts = []
        if not parts:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return x[: self.max_samples], y[: self.max_samples]


__all__ = ["AdversarialTraining", "RobustEvaluation", "network_of", "unpack_xy"]
