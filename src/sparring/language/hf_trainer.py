"""Train with any sparring objective through Hugging Face's :class:`transformers.Trainer`.

:class:`AdversarialTrainer` overrides only :meth:`~transformers.Trainer.compute_loss` (the per-batch loss is the
objective's ``out.total()``) and :meth:`~transformers.Trainer.log` (the objective's metrics join the logs), so
everything else (accelerate, DDP, DeepSpeed, mixed precision, gradient accumulation, schedules, checkpoints,
trackers) is the Trainer's own. Three kinds of batch are understood:

* a :class:`~sparring.language.batch.ChatBatch` (language objectives: CAT, WARDEN, LAT, LocalAlign), made by
  :class:`ChatCollator` from a :class:`BehaviourDataset` (or a list of
  :class:`~sparring.language.data.InjectionTask`): the objective gets the causal LM and the batch;
* a dict with ``"pixel_values"`` and ``"labels"`` (image classification): the objective gets
  ``x ↦ model(pixel_values=x).logits`` and attacks the pixels;
* a dict with ``"input_ids"`` (+ ``"attention_mask"``) and ``"labels"`` (text classification): the objective gets
  :class:`~sparring.language.embedding.TextClassifier` and attacks the input embeddings.

Minimal use (CAT on behaviours, 12.5% behaviours / 87.5% utility chats per batch)::

    trainer = AdversarialTrainer(
        model=model, objective=CAT(),
        args=TrainingArguments(out, remove_unused_columns=False, per_device_train_batch_size=4),
        train_dataset=BehaviourDataset(behaviours, utility),
        data_collator=ChatCollator(tokenizer, max_length=256),
    )
    trainer.train()

What the Trainer (transformers 5.23) does with a ChatBatch, checked in its source:

* ``remove_unused_columns=False`` is needed: with True the Trainer inspects the model's forward signature and wraps
  the collator to drop dict keys the model does not take; it passes non-dict items through, but set it False so
  the records reach the collator untouched whatever the Trainer version.
* ``get_batch_samples`` probes ``"labels" in batch`` to count loss tokens (``num_items_in_batch``): a ChatBatch
  answers False (its ``__contains__`` knows field names only), so ``num_items_in_batch`` is None and the loss
  (a per-batch mean) is divided by the accumulation steps as for any model without loss kwargs.
* ``_prepare_inputs`` returns objects it does not know unchanged and checks ``len(batch) > 0`` (B rows);
  accelerate's dataloader moves a batch with ``batch.to(device)``.
* ``include_num_input_tokens_seen`` and ``floating_point_ops`` look for ``"input_ids"``: for a ChatBatch they
  count nothing (a warning, no error); :attr:`AdversarialTrainer.seen` counts examples and tokens instead.
* evaluation (``prediction_step``) reads ``batch.get(...)``; a ChatBatch is routed to :meth:`compute_loss`
  instead (loss only: the attack needs gradients, so it runs with autograd on).

The objective's own state (``Objective.state_dict``: WARDEN's learned temperature) is written beside every
checkpoint as ``sparring_objective.json`` and read back by ``train(resume_from_checkpoint=...)``. The objective's
lifecycle hooks (``on_train_begin``, the epoch hooks) are not called: the language objectives need none.

Distributed training. ``compute_loss`` receives the model as accelerate prepared it (a
``DistributedDataParallel`` or DeepSpeed engine on several processes). The forward used for training must go
through that wrapper, which is where gradient synchronisation is armed; the objective however also needs the
module's own attributes (``get_input_embeddings``, the decoder layers). So a wrapped model is handed to the
objective as :class:`ThroughWrapper`: forward calls go through the wrapper, attribute access goes to
``accelerator.unwrap_model(model)`` (the same parameters). The attack's forwards go through the wrapper too;
they run with the parameters frozen, so no gradient hook fires and no reduction is started. Limitation: the
language views look the prompt embeddings up *outside* the model's forward
(:class:`~sparring.language.view.PromptView`), which needs the embedding matrix whole on every process: DDP and
DeepSpeed ZeRO-1/2 work, FSDP and ZeRO-3 (parameters sharded outside the forward) do not yet.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from sparring.errors import ConfigError, DataError
from sparring.language.batch import ChatBatch, behaviour_batch
from sparring.language.data import Behaviour, InjectionTask, Utility
from sparring.language.embedding import TextClassifier
from sparring.objectives.base import Objective, ObjectiveOutput

#: The objective's state (e.g. WARDEN's temperature) in a checkpoint folder, beside the model's weights.
OBJECTIVE_STATE = "sparring_objective.json"


class ThroughWrapper(nn.Module):
    """A wrapped model (DDP, DeepSpeed engine) whose forward goes through the wrapper and whose other attributes
    (``get_input_embeddings``, ``config``, ...) are the unwrapped module's; see the module doc for why."""

    def __init__(self, wrapped: nn.Module, inner: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped  # registered: parameters(), train()/eval() and named_modules() reach the model
        object.__setattr__(self, "inner", inner)  # not registered: the same parameters must not be listed twice

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["inner"], name)


class PixelClassifier(nn.Module):
    """``x (B, C, H, W) ↦ logits (B, K)`` of a model called as ``model(pixel_values=x)`` (Hugging Face image
    classifiers return an output with ``.logits``; a bare tensor is taken as the logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(pixel_values=x)
        return out if isinstance(out, Tensor) else out.logits


class AdversarialTrainer(Trainer):
    """A :class:`transformers.Trainer` whose loss is a sparring objective's (module doc).

    Args:
        objective: any :class:`~sparring.objectives.base.Objective`. For text classification (dict batches with
            ``input_ids``) its threat must be a token ball on embeddings with ``bounds=None``, e.g.
            ``TokenL2Ball(eps=0.05 * embedding_scale(model))``: x is the input embeddings (B, T, D).
        seed: attacks draw from a ``torch.Generator`` seeded from (seed, global step, micro-batch, process), so a
            run, and a resumed run, attacks the same way.
        *args, **kwargs: as for :class:`transformers.Trainer`.

    The objective's scalar metrics are averaged over the training batches between two logging steps (and over
    processes) and logged beside ``loss``, e.g. ``attack_success`` or WARDEN's ``dro_temperature``.
    """

    def __init__(self, *args: Any, objective: Objective, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(objective, Objective):
            raise ConfigError(f"objective must be a sparring Objective, got {type(objective).__name__}")
        self.objective, self.seed = objective, seed
        self._metric_sums: dict[str, Tensor] = {}
        self._metric_batches = 0
        self._seen: dict[str, Tensor] = {}
        self._micro = (-1, 0)  # (global step, micro-batches seen at that step)

    # ---- the objective's own state (WARDEN's learned temperature) in checkpoints ---------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's save (also called for every checkpoint), plus the objective's state as
        :data:`OBJECTIVE_STATE` beside the weights (rank 0 only)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            folder = Path(output_dir if output_dir is not None else self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / OBJECTIVE_STATE).write_text(json.dumps(self.objective.state_dict()) + "\n")

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """The Trainer's train; a resumed run first restores the objective's state saved with the checkpoint."""
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)
        if isinstance(folder, str) and (Path(folder) / OBJECTIVE_STATE).is_file():
            self.objective.load_state_dict(json.loads((Path(folder) / OBJECTIVE_STATE).read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ---- the loss ----------------------------------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, ObjectiveOutput]:
        """``objective(view, x, y).total()`` for the batch; with ``return_outputs`` also the ObjectiveOutput.

        ``num_items_in_batch`` is unused: the objective's loss is a per-batch mean (the Trainer then scales it
        for gradient accumulation itself).
        """
        device = self.args.device
        net = self._for_objective(model)
        generator = self._generator(device)
        if isinstance(inputs, ChatBatch):
            batch = inputs.to(device)
            out = self.objective(net, batch, None, generator=generator)  # type: ignore[arg-type]
            examples, tokens = _chat_size(batch)
        else:
            view, x, y = self._classification_view(net, inputs, device)
            out = self.objective(view, x, y, generator=generator)
            examples = torch.tensor(len(y), device=device)
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else examples * 0
        if model.training:
            self._record(out, examples=examples, tokens=tokens)
        loss = out.total()
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: Any, prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """A ChatBatch's evaluation loss is the objective's (attack included, so autograd stays on); other batches
        go to the Trainer's own ``prediction_step``."""
        if not isinstance(inputs, ChatBatch):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        with torch.enable_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _for_objective(self, model: nn.Module) -> nn.Module:
        inner = self.accelerator.unwrap_model(model)
        return model if inner is model else ThroughWrapper(model, inner)

    def _classification_view(self, net: nn.Module, inputs: Any, device: torch.device
                             ) -> tuple[nn.Module, Tensor, Tensor]:
        if not hasattr(inputs, "keys") or "labels" not in inputs:
            raise DataError(f"AdversarialTrainer needs a ChatBatch or a dict with 'labels' and 'pixel_values' or "
                            f"'input_ids', got {type(inputs).__name__}")
        y = inputs["labels"].to(device)
        if "pixel_values" in inputs:
            return PixelClassifier(net), inputs["pixel_values"].to(device), y
        if "input_ids" in inputs:
            view = TextClassifier(net, head=None)
            mask = inputs.get("attention_mask")
            x = view.embed(inputs["input_ids"].to(device), None if mask is None else mask.to(device))  # (B, T, D)
            return view, x, y
        raise DataError(f"a classification batch needs 'pixel_values' or 'input_ids', got keys {sorted(inputs)}")

    def _generator(self, device: torch.device) -> torch.Generator:
        """Seeded from (seed, global step, micro-batch within the step, process): reproducible, and distinct
        across accumulation steps and processes."""
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        key = ((self.seed * 1_000_003 + step) * 1_009 + micro) * 4_099 + self.args.process_index
        return torch.Generator(device=device).manual_seed(key % (2**63))

    # ---- metrics and counts --------------------------------------------------------------------------------------

    def _record(self, out: ObjectiveOutput, *, examples: Tensor, tokens: Tensor) -> None:
        """Add the batch's scalar metrics and sizes to running sums (device tensors: no host round trip)."""
        for name, value in out.metrics.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    continue
                value = value.detach().float().reshape(())
            elif not isinstance(value, int | float):
                continue
            total = self._metric_sums.get(name)
            self._metric_sums[name] = (value if total is None else total + value)
        self._metric_batches += 1
        for name, value in (("examples", examples), ("tokens", tokens)):
            total = self._seen.get(name)
            self._seen[name] = value.detach() if total is None else total + value.detach()

    @property
    def seen(self) -> dict[str, int]:
        """Training examples (rows, utility chats included) and tokens (non-padding, prompts and continuations)
        this process has trained on; one host read."""
        return {name: int(value) for name, value in self._seen.items()}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Merge the objective's metrics, averaged since the last training log, into a training log (one with
        ``loss``); then log as the Trainer does."""
        if "loss" in logs and self._metric_batches:
            names = sorted(self._metric_sums)
            device = self.args.device
            means = torch.stack([torch.as_tensor(self._metric_sums[n], device=device).float() for n in names])
            means = means / self._metric_batches
            if self.accelerator.num_processes > 1:  # every process logs at the same step with the same metric names
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update(zip(names, means.tolist(), strict=True))
            self._metric_sums, self._metric_batches = {}, 0
        super().log(logs, start_time)


def _chat_size(batch: ChatBatch) -> tuple[Tensor, Tensor]:
    """(chats, non-padding tokens) of a batch and its utility part: a prompt counts once with each continuation."""
    examples = torch.tensor(0, device=batch.device)
    tokens = torch.tensor(0, device=batch.device)
    for part in (batch, batch.utility):
        if part is None:
            continue
        examples = examples + len(part)
        prompt = part.prompt_attention.sum()
        for cont in part.continuations.values():
            tokens = tokens + prompt + cont.attention.sum()
    return examples, tokens


# ---- data -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BehaviourItem:
    """One behaviour and the utility chats that travel with it in a batch."""

    behaviour: Behaviour
    utility: tuple[Utility, ...]


class BehaviourDataset(Dataset):
    """Behaviours, each paired with ``utility_per_behaviour`` utility chats, for :class:`ChatCollator`.

    CAT trains on 12.5% behaviours and 87.5% benign chats: the default of 7 chats per behaviour gives every
    batch of B items B behaviours and 7B utility chats. The chats are cycled through a permutation drawn from
    ``seed`` (item i takes chats i·k … i·k + k − 1 of it, wrapping around), so every chat is used about equally
    and a seed gives the same pairs. With no utility chats (or k = 0) the items carry none.
    """

    def __init__(self, behaviours: Sequence[Behaviour], utility: Sequence[Utility] = (), *,
                 utility_per_behaviour: int = 7, seed: int = 0) -> None:
        if not behaviours:
            raise DataError("a behaviour dataset needs at least one behaviour")
        if utility_per_behaviour < 0:
            raise ConfigError(f"utility_per_behaviour must be >= 0, got {utility_per_behaviour}")
        self.behaviours = list(behaviours)
        order = list(range(len(utility)))
        random.Random(seed).shuffle(order)
        self._utility = [utility[i] for i in order]
        self.k = utility_per_behaviour if utility else 0

    def __len__(self) -> int:
        return len(self.behaviours)

    def __getitem__(self, index: int) -> BehaviourItem:
        n = len(self._utility)
        chats = tuple(self._utility[(index * self.k + j) % n] for j in range(self.k))
        return BehaviourItem(behaviour=self.behaviours[index], utility=chats)


class ChatCollator:
    """Turns a list of dataset items into one :class:`~sparring.language.batch.ChatBatch`.

    Items are all :class:`BehaviourItem` (→ :func:`~sparring.language.behaviour_batch`, continuations ``target``
    and ``refusal``, the items' utility chats as ``utility``), all bare :class:`Behaviour` (no utility), or all
    :class:`InjectionTask` (→ :func:`~sparring.language.localalign.injection_batch`, continuations ``chosen`` and
    ``rejected_j``, for LocalAlign; ``rejected`` near-target answers drawn from ``seed``).
    """

    def __init__(self, tokenizer: Any, *, max_length: int | None = 256, rejected: int = 3, seed: int = 0) -> None:
        self.tokenizer, self.max_length, self.rejected, self.seed = tokenizer, max_length, rejected, seed

    def __call__(self, items: Sequence[Any]) -> ChatBatch:
        if not items:
            raise DataError("the collator got an empty list of items")
        if all(isinstance(item, BehaviourItem) for item in items):
            return behaviour_batch(self.tokenizer, [item.behaviour for item in items], max_length=self.max_length,
                                   utility=[u for item in items for u in item.utility])
        if all(isinstance(item, Behaviour) for item in items):
            return behaviour_batch(self.tokenizer, list(items), max_length=self.max_length)
        if all(isinstance(item, InjectionTask) for item in items):
            from sparring.language.localalign import injection_batch

            return injection_batch(self.tokenizer, list(items), rejected=self.rejected, seed=self.seed,
                                   max_length=self.max_length)
        kinds = sorted({type(item).__name__ for item in items})
        raise DataError(f"ChatCollator takes BehaviourItem, Behaviour or InjectionTask items (one kind per batch), "
                        f"got {', '.join(kinds)}")
