"""The training loop, on Hugging Face accelerate.

``Trainer`` trains any model with any objective: accelerate places the model and batches (CPU or GPU),
runs mixed precision (bf16 on CPU and GPU, fp16 on CUDA) and gradient accumulation; the loop adds LR
schedules, a robust validation pass each epoch, early stopping on robust validation accuracy, atomic
safetensors checkpoints, exact resume, ``metrics.jsonl`` and rich progress bars.

All randomness (shuffling, random starts) is derived from ``(seed, epoch)``, so a run resumed from the
checkpoint of epoch k reproduces the uninterrupted run.

Several processes (``accelerate launch`` or ``torchrun``; DDP through accelerate). ``batch_size`` is the
**global** batch: every batch of the shared ``(seed, epoch)`` permutation is split across the N processes
(accelerate's ``split_batches``), so the optimisation (steps per epoch, learning-rate schedule, the data of each
step) is the same for any N, and a run can resume from a checkpoint written with another process count. DDP
averages the gradients of the N shards, which equals the single-process gradient of the whole batch as long as
the loss is a mean over independent examples; it differs where the objective couples the examples of a batch
(BatchNorm statistics per shard, DRO's batch weights) or draws random starts (each process draws for its own
shard). Training metrics are summed over processes before they are logged; the per-epoch validation runs the
same examples on every process, so its numbers are those of one process. Only the main process writes
checkpoints and ``metrics.jsonl``; the others wait for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, SequentialSampler

import sparring.runtime.trackers as trackers
from sparring.attacks import PGD, Attack
from sparring.data.epochs import EpochData, Rows, TensorData, as_is
from sparring.errors import ConfigError, RunFolderError, SparringError
from sparring.files import atomic_write_text
from sparring.objectives import Objective, threat_of
from sparring.runtime.checkpoint import CheckpointDir
from sparring.runtime.compile import compiled
from sparring.runtime.trackers import check_trackers
from sparring.threat import ThreatModel

log = logging.getLogger(__name__)

#: ``regularizer(model, x) → scalar`` added to every batch's loss (recommenders: ``reg_weight · model.regularization``).
Regularizer = Callable[[nn.Module, Any], Tensor]


@dataclass(kw_only=True)
class TrainConfig:
    """Settings of the loop (the objective and model are separate).

    Attributes:
        schedule: ``constant``; ``multistep`` (×``gamma`` at each fraction of training in ``milestones``);
            ``cosine`` (to 0 over training); ``cyclic`` (linear 0 → lr → 0 peaking at 2/5, Wong et al.).
        mixed_precision: ``no``, ``bf16`` (CPU or GPU) or ``fp16`` (CUDA only).
        val_size: validation examples used for the per-epoch clean / robust accuracy.
        val_attack_steps: PGD steps of the robust validation pass.
        early_stopping_patience: stop after this many epochs without a better validation score
            (``monitor``; None: never).
        restore_best: end with the weights of the best validation epoch (Rice et al.'s early
            stopping against robust overfitting) instead of the last ones; on by default with early
            stopping (None), off otherwise.
        holdout_size: held-out examples handed to ``objective.on_epoch_end`` (fast AT's CO detector).
        compile: ``torch.compile`` the model (:func:`sparring.runtime.compile.compiled`, mode ``compile_mode``): the
            training steps and the attacks inside them run compiled. Pays off on GPUs and larger models, not on
            small CPU ones (compile time dominates; ``benchmarks/scaling.py``).
        trackers: experiment trackers through accelerate (``tensorboard``, ``mlflow``, ``wandb`` when
            installed), written under ``<run>/trackers`` (:mod:`sparring.runtime.trackers`).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["constant", "multistep", "cosine", "cyclic"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    grad_accumulation: int = 1
    grad_clip: float | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False
    seed: int = 0
    val_size: int = 512
    val_attack_steps: int = 10
    early_stopping_patience: int | None = None
    restore_best: bool | None = None
    monitor: Literal["val_robust_accuracy", "val_clean_accuracy"] = "val_robust_accuracy"
    holdout_size: int = 128
    progress: bool = True
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    trackers: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """The settings as plain config data (what a resolved ``config.yaml`` holds; ``progress`` is not one)."""
        out = {k: v for k, v in asdict(self).items() if k != "progress"}
        return {**out, "milestones": list(self.milestones), "trackers": list(self.trackers)}

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accumulation", "val_attack_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError("train.early_stopping_patience must be >= 1 or null")
        self.trackers = tuple(check_trackers(self.trackers))
        world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch, read when configs load
        if self.batch_size % world:
            raise ConfigError(f"train.batch_size ({self.batch_size}) is the global batch, split across {world} "
                              f"processes: make it a multiple of {world}")


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped_early: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    time_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "epochs": len(self.history),
            "time_s": self.time_s,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "events": self.events,
        }


class EpochSampler(Sampler[int]):
    """A permutation that depends only on ``(seed, epoch)``; accelerate calls ``set_epoch``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def lr_factor(schedule: str, progress: float, milestones: tuple[float, ...], gamma: float) -> float:
    """Multiplier of the base LR at ``progress`` ∈ [0, 1] of training."""
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return gamma ** sum(progress >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "cyclic":
        peak = 0.4
        return progress / peak if progress < peak else max(0.0, (1 - progress) / (1 - peak))
    raise ConfigError(f"unknown schedule {schedule!r}")


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer:
    """Train ``model`` with ``objective`` on ``(x, y)`` tensors or any :class:`~sparring.data.epochs.EpochData`;
    optionally checkpoint into ``out_dir``. Every domain trains here: recommenders hand over fresh negatives each
    epoch and a regularizer, language models batches of chats.

    Args:
        model: any model the objective trains (a classifier mapping inputs to logits, a recommender, a causal LM).
        objective: a :class:`sparring.objectives.Objective` (per-example losses; the mean is trained).
        train: training inputs and labels, or an :class:`~sparring.data.epochs.EpochData` (rows that may change
            every epoch, and batches that need not be tensors).
        regularizer: ``regularizer(model, x) → scalar`` added to each batch's loss and logged as
            ``train_regularizer`` (the objective's own loss as ``train_objective_loss``).
        epoch_hook: called with each epoch's record once it is logged (a caller's own log or early exit).
        checkpoint_weights: ``"all"`` (the state dict) or ``"trainable"`` (only the parameters that require
            gradients, e.g. a LoRA adapter; the frozen rest is rebuilt from the config on resume).
        val: validation inputs and labels for per-epoch clean / robust accuracy (and early stopping).
        val_threat: threat model of the robust validation pass (default: the objective's ``threat``).
        out_dir: run folder; ``metrics.jsonl`` and ``checkpoints/`` go there. None: nothing written.
        num_classes: K, for the per-class training counts handed to the objective (default: max label + 1).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        train: tuple[Tensor, Tensor] | EpochData,
        val: tuple[Tensor, Tensor] | None = None,
        config: TrainConfig | None = None,
        val_threat: ThreatModel | None = None,
        out_dir: Path | None = None,
        num_classes: int | None = None,
        regularizer: Regularizer | None = None,
        epoch_hook: Callable[[dict[str, Any]], None] | None = None,
        checkpoint_weights: Literal["all", "trainable"] = "all",
    ) -> None:
        self.cfg = config or TrainConfig()
        self.objective = objective
        self.val = val
        self.val_threat = val_threat if val_threat is not None else threat_of(objective)
        self.val_attack: Attack = PGD(steps=self.cfg.val_attack_steps)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.cfg.mixed_precision == "fp16" and (self.cfg.cpu or not torch.cuda.is_available()):
            raise ConfigError("train.mixed_precision fp16 needs a CUDA device; use bf16 or no")
        # accelerate keeps its settings process-wide; a new Trainer with other settings (mixed precision,
        # accumulation) must not inherit or clash with an earlier one. The process group is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        # Several processes without CUDA: accelerate runs DDP over gloo only when told to use the CPU.
        multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        self.accelerator = Accelerator(
            cpu=self.cfg.cpu or multi_cpu,
            mixed_precision=self.cfg.mixed_precision,
            gradient_accumulation_steps=self.cfg.grad_accumulation,
            dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch_size is the global batch
            **trackers.accelerator_kwargs(self.cfg.trackers, self.out_dir),
        )
        self.data = train if isinstance(train, EpochData) else TensorData(*train, num_classes=num_classes)
        self.regularizer = regularizer
        self.epoch_hook = epoch_hook
        self.class_counts = self.data.class_counts()
        sampler = EpochSampler(len(self.data), self.cfg.seed) if self.data.shuffle else SequentialSampler(self.data)
        loader = DataLoader(Rows(self.data), batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=as_is)
        optimizer = _make_optimizer(model, self.cfg)
        self.steps_per_epoch = math.ceil(len(loader) / self.cfg.grad_accumulation)
        total = self.cfg.epochs * self.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(self.cfg.schedule, step / total, self.cfg.milestones, self.cfg.gamma)
        )
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        self.module = self._unwrapped()  # the model itself, for hooks that call its own methods (recsys' regularizer)
        if self.cfg.compile:  # after prepare, the order accelerate itself uses
            self.model = compiled(self.model, mode=self.cfg.compile_mode)
        objective.bind_optimizer(self.optimizer)  # objectives that replay a batch (Free-AT) step it themselves
        self.checkpoints = (CheckpointDir(self.out_dir / "checkpoints", weights=checkpoint_weights)
                            if self.out_dir else None)

    # ------------------------------------------------------------------ fit
    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (or until early stopping); ``resume`` continues a killed run."""
        cfg = self.cfg
        history: list[dict[str, Any]] = []
        best_score, best_epoch, bad_epochs, start_epoch = -math.inf, None, 0, 0
        if resume and (state := self._resume()) is not None:
            history, best_score, best_epoch, bad_epochs, start_epoch = (
                state["history"], state["best_score"], state["best_epoch"], state["bad_epochs"], state["epoch"] + 1,
            )
        stopped_early = False
        started = time.perf_counter()
        if self.cfg.trackers and not trackers.active(self.accelerator):
            trackers.start(self.accelerator, project=self.out_dir.name if self.out_dir else "sparring",
                           config=asdict(cfg))
        self.objective.on_train_begin(
            self.model, class_counts=self.class_counts, epochs=cfg.epochs, train=self.data.tensors()
        )
        with self._progress() as progress:
            batches = len(self.loader)
            task = progress.add_task("train", total=cfg.epochs * batches, completed=start_epoch * batches)
            for epoch in range(start_epoch, cfg.epochs):
                record = self._train_epoch(epoch, lambda: progress.advance(task))
                record.update(self._validate(epoch))
                history.append(record)
                score = record.get(cfg.monitor, record.get("val_clean_accuracy", -record["train_loss"]))
                improved = score > best_score
                if improved:
                    best_score, best_epoch, bad_epochs = score, epoch, 0
                else:
                    bad_epochs += 1
                progress.update(task, description=_describe(record))
                self._log(record)
                if self.epoch_hook is not None:
                    self.epoch_hook(record)
                if self.checkpoints is not None and self.accelerator.is_main_process:
                    meta = {
                        "history": history, "best_score": best_score, "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs, "objective_state": self.objective.state_dict(),
                        "scheduler": _jsonable(self.scheduler.scheduler.state_dict()),
                        "train_config": asdict(cfg),
                    }
                    self.checkpoints.save(
                        epoch=epoch, model=self._unwrapped(), optimizer=self.optimizer, meta=meta, best=improved,
                    )
                self.accelerator.wait_for_everyone()  # the checkpoint is complete before any process reads it
                if cfg.early_stopping_patience is not None and bad_epochs >= cfg.early_stopping_patience:
                    stopped_early = epoch + 1 < cfg.epochs
                    break
        restore = cfg.restore_best if cfg.restore_best is not None else cfg.early_stopping_patience is not None
        if restore and best_epoch is not None and self.checkpoints is not None:
            best = self.checkpoints.best()
            if best is not None and best_epoch != history[-1]["epoch"]:
                CheckpointDir.load(best, model=self._unwrapped())
            elif best is None and best_epoch != history[-1]["epoch"]:
                log.warning("the checkpoint of the best epoch (%d) is gone: keeping the last weights", best_epoch)
        events = self.objective.training_events()
        return TrainResult(
            history=history, best_epoch=best_epoch, stopped_early=stopped_early, events=events,
            time_s=time.perf_counter() - started,
        )

    def _train_epoch(self, epoch: int, tick: Any) -> dict[str, Any]:
        model, acc = self.model, self.accelerator
        scheduled = self.objective.on_epoch_begin(model, epoch=epoch)
        model.train()
        # Through the prepared loader: accelerate's DataLoaderShard re-applies its own epoch counter
        # to the sampler on every __iter__, so setting the sampler directly would be overwritten.
        self.loader.set_epoch(epoch)
        self.data.set_epoch(epoch)
        generator = torch.Generator(device=acc.device).manual_seed(self.cfg.seed * 100_003 + epoch + 1)
        loss_sum = torch.zeros((), device=acc.device)
        correct = torch.zeros((), device=acc.device)
        seen = 0
        extra: dict[str, Tensor] = {}
        labelled = False  # batches with class labels the logits can be scored against (not chat batches)
        started = time.perf_counter()
        for x, y in self.loader:
            with acc.accumulate(model):
                with acc.autocast():
                    out = self.objective(model, x, y, generator=generator)
                    loss = out.total()
                    if self.regularizer is not None:
                        reg = self.regularizer(self.module, x)
                        out.metrics = {**out.metrics, "objective_loss": loss.detach(), "regularizer": reg.detach()}
                        loss = loss + reg
                acc.backward(loss)
                if self.cfg.grad_clip is not None and acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            rows = len(x)
            loss_sum += loss.detach() * rows
            if _labels_of(out.logits, y):
                labelled = True
                correct += (out.logits.detach().argmax(1) == y).sum()
            for key, value in out.metrics.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=acc.device)
                if value.numel() == 1:  # per-example diagnostics (TRADES's kl_per_example) are not logged
                    extra[key] = extra.get(key, 0.0) + value.reshape(()) * rows
            seen += rows
            tick()
        if acc.num_processes > 1:  # one all-reduce per epoch: sums over the processes' shards
            names = sorted(extra)
            totals = acc.reduce(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=acc.device),
                                             *(extra[k] for k in names)]), reduction="sum")
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
            extra = dict(zip(names, totals[3:], strict=True))
        if not torch.isfinite(loss_sum):  # checked once per epoch: no host sync per step
            raise SparringError(f"training loss became {float(loss_sum)} in epoch {epoch}; lower the learning rate")
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": (epoch + 1) * self.steps_per_epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": float(loss_sum) / seen,
            **({"train_accuracy": float(correct) / seen} if labelled else {}),
            "time_s": time.perf_counter() - started,
        }
        record.update({f"train_{k}": float(v) / seen for k, v in extra.items()})
        record.update(scheduled)
        return record

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict[str, Any]:
        if self.val is None:  # the objective's epoch hook still runs, without a held-out set
            generator = torch.Generator(device=self.accelerator.device).manual_seed(self.cfg.seed + 7919 * (epoch + 1))
            with torch.enable_grad(), self.accelerator.autocast():
                return self.objective.on_epoch_end(self.model, epoch=epoch, holdout=None, generator=generator)
        device = self.accelerator.device
        x, y = (t[: self.cfg.val_size].to(device) for t in self.val)
        model = self.model
        out: dict[str, Any] = {}
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():
            clean = torch.cat([model(xb).argmax(1) for xb in x.split(self.cfg.batch_size)]) == y
        model.train(was_training)
        out["val_clean_accuracy"] = float(clean.float().mean())
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed + 7919 * (epoch + 1))
        if self.val_threat is not None:
            robust = []
            with torch.enable_grad(), self.accelerator.autocast():
                for xb, yb in zip(x.split(self.cfg.batch_size), y.split(self.cfg.batch_size), strict=True):
                    robust.append(self.val_attack(model, xb, yb, self.val_threat, generator=generator).robust)
            out["val_robust_accuracy"] = float(torch.cat(robust).float().mean())
        holdout = (x[: self.cfg.holdout_size], y[: self.cfg.holdout_size])
        with torch.enable_grad(), self.accelerator.autocast():
            out.update(self.objective.on_epoch_end(model, epoch=epoch, holdout=holdout, generator=generator))
        return out

    # -------------------------------------------------------------- helpers
    def _unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)  # clean state_dict keys

    def _resume(self) -> dict[str, Any] | None:
        """Restore the newest complete checkpoint; its metadata, or None (start from epoch 0) when there is none.

        A run killed before its first checkpoint resumes from epoch 0: the model, objective and schedule are the
        fresh ones this trainer was built with (as seeded as the killed run's), and ``metrics.jsonl`` is emptied.
        """
        if self.checkpoints is None:
            raise SparringError("--resume needs a run folder")
        latest = self.checkpoints.latest()
        if latest is None:
            log.warning("nothing to resume from in %s (no complete checkpoint): training starts from epoch 0",
                        self.checkpoints.root)
            if self.accelerator.is_main_process:
                self._truncate_metrics(-1)
            self.accelerator.wait_for_everyone()
            return None
        meta = CheckpointDir.load(latest, model=self._unwrapped(), optimizer=self.optimizer)
        missing = [k for k in _RESUME_KEYS if k not in meta]
        if missing or not isinstance(meta["history"], list) or not isinstance(meta["scheduler"], dict):
            what = f"lacks {', '.join(missing)}" if missing else "has a malformed history or scheduler"
            raise RunFolderError(
                f"the checkpoint metadata {latest / 'meta.json'} {what}: it was not written by this trainer; delete "
                f"the folder {latest} to resume from an older checkpoint (or from epoch 0), or start afresh with "
                "--overwrite"
            )
        try:
            self.objective.load_state_dict(meta.get("objective_state") or {})
            self.scheduler.scheduler.load_state_dict(meta["scheduler"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise RunFolderError(
                f"cannot restore the objective or schedule from {latest / 'meta.json'} ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); resume with the config the run was started with, or start "
                "afresh with --overwrite"
            ) from None
        if self.accelerator.is_main_process:
            self._truncate_metrics(meta["epoch"])
        self.accelerator.wait_for_everyone()
        log.info("resumed from %s", latest)
        return meta

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or not self.accelerator.is_main_process:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        trackers.log_epoch(self.accelerator, record, step=record["epoch"])

    def _truncate_metrics(self, last_epoch: int) -> None:
        """Drop metric lines written after the checkpoint a run resumes from (all of them for ``last_epoch`` -1)."""
        path = self.out_dir / "metrics.jsonl" if self.out_dir else None
        if path is None or not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if _epoch_of(line) <= last_epoch]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _progress(self) -> Any:
        if not self.cfg.progress or not self.accelerator.is_main_process:
            return _NoProgress()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            transient=False,
        )


def _labels_of(logits: Any, y: Any) -> bool:
    """Whether ``y`` holds one class label per row of ``logits`` (B, K), so a training accuracy means something."""
    return isinstance(y, Tensor) and isinstance(logits, Tensor) and logits.ndim == 2 and len(logits) == len(y)


_RESUME_KEYS = ("history", "best_score", "best_epoch", "bad_epochs", "scheduler")


def _jsonable(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if isinstance(v, int | float | str | bool | list | None)}


def _epoch_of(line: str) -> int:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 1 << 30  # an unreadable (half-written) line is dropped


def _describe(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch'] + 1}", f"loss {record['train_loss']:.3f}"]
    for key in ("val_clean_accuracy", "val_robust_accuracy"):
        if key in record:
            parts.append(f"{key.removeprefix('val_').replace('_accuracy', '')} {record[key]:.3f}")
    return " · ".join(parts)


class _NoProgress(nullcontext):  # type: ignore[type-arg]
    """Stand-in for rich's Progress when bars are off."""

    def __enter__(self) -> _NoProgress:
        return self

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass
