"""Prompt-plus-continuations batches: the layout every language-model attack, objective and evaluation uses.

A :class:`ChatBatch` holds B chat prompts and, for each, one or more named continuations (the harmful
``target`` and the safe ``refusal`` of a behaviour, the ``response`` of a utility chat, the ``chosen`` and
``rejected_j`` answers of a prompt-injection task). The prompt block is left-padded so that every prompt ends
at the same column P, and each continuation is right-padded after it::

    column      0 … P−1                                  P … P+K−1
    row b       [pad … pad | template, user prompt, generation prompt][continuation tokens | pad … pad]

Because the prompts are aligned at their end, one perturbation δ (B, P, D) of the prompt block serves every
continuation (CAT attacks toward ``target`` and trains toward ``refusal`` under the same δ), and the logits of a
continuation are the last K + 1 positions of one forward pass (``logits_to_keep``). Position ids come from
the attention mask, so left padding changes nothing.

``prompt_mask`` marks the user prompt's own tokens, where an instruction-space attack may move (CAT's
``init_type=instruction``); template markers and padding are never perturbed. Build a batch with
:func:`chat_batch` (or :func:`behaviour_batch`, :func:`utility_batch`), or let a collator do it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from sparring.errors import DataError
from sparring.language.data import Behaviour, Utility, encode_chat
from sparring.losses import IGNORE


@dataclass(frozen=True)
class Continuation:
    """Token ids (B, K) right-padded after the prompt, and their attention mask (B, K) long."""

    ids: Tensor
    attention: Tensor

    @property
    def labels(self) -> Tensor:
        """(B, K) the ids with padding set to :data:`~sparring.losses.IGNORE` (what the losses read)."""
        return self.ids.masked_fill(self.attention == 0, IGNORE)


@dataclass(frozen=True)
class ChatBatch:
    """B prompts (left-padded to P columns) and named continuations; see the module doc for the layout.

    Attributes:
        prompt_ids: (B, P) long; prompt_attention: (B, P) long (0 on padding);
        prompt_mask: (B, P) bool, the user prompt's own tokens (what an instruction attack perturbs);
        continuations: name → :class:`Continuation`;
        utility: benign chats trained on beside these rows (CAT's utility term), not part of the rows.
    """

    prompt_ids: Tensor
    prompt_attention: Tensor
    prompt_mask: Tensor
    continuations: dict[str, Continuation] = field(default_factory=dict)
    utility: ChatBatch | None = None

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    def continuation(self, name: str) -> Continuation:
        if name not in self.continuations:
            names = ", ".join(self.continuations) or "none"
            raise DataError(f"the batch has no {name!r} continuation (it has {names})")
        return self.continuations[name]

    def to(self, device: torch.device | str) -> ChatBatch:
        return self._map(lambda t: t.to(device), utility=None if self.utility is None else self.utility.to(device))

    def rows(self, index: Tensor | int | slice) -> ChatBatch:
        """The batch of the rows ``index`` (the utility part is kept whole)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index], utility=self.utility)

    def __getitem__(self, index: int) -> ChatBatch:
        """Row ``index`` as a one-row batch (IndexError past the end, so iteration stops)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of a batch of {len(self)}")
        return self.rows(index % len(self))

    def __contains__(self, key: object) -> bool:
        """Mapping-style membership (libraries probe batches for keys such as ``"labels"``): the field names."""
        return key in {f.name for f in fields(self)}

    def __setitem__(self, index: int, row: ChatBatch) -> None:
        """Copy a one-row batch of the same widths into row ``index`` (in place)."""
        for name in ("prompt_ids", "prompt_attention", "prompt_mask"):
            getattr(self, name)[index] = getattr(row, name)[0]
        for name, cont in self.continuations.items():
            other = row.continuations[name]
            cont.ids[index], cont.attention[index] = other.ids[0], other.attention[0]

    def _map(self, fn: Any, *, utility: ChatBatch | None) -> ChatBatch:
        conts = {k: Continuation(ids=fn(c.ids), attention=fn(c.attention)) for k, c in self.continuations.items()}
        tensors = {f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **tensors, continuations=conts, utility=utility)


def _left_pad(rows: Sequence[Tensor], value: int | bool) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = r
    return out


def _right_pad(rows: Sequence[Tensor], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def chat_batch(
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: dict[str, Sequence[str]],
    *,
    max_length: int | None = None,
    eos: bool = True,
) -> ChatBatch:
    """Encode prompts and their continuations (each list as long as ``prompts``) into a :class:`ChatBatch`.

    Each (prompt, continuation) pair is rendered with the chat template by
    :func:`~sparring.language.data.encode_chat` (truncated to ``max_length`` tokens); the prompt block is the
    first continuation's tokens before its response, and each continuation its response tokens, followed by
    the tokenizer's EOS when ``eos`` (so training teaches the model to stop).
    """
    if not prompts:
        raise DataError("a chat batch needs at least one prompt")
    if not continuations:
        raise DataError("a chat batch needs at least one continuation")
    for name, texts in continuations.items():
        if len(texts) != len(prompts):
            raise DataError(f"continuation {name!r} has {len(texts)} texts for {len(prompts)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_id = tokenizer.eos_token_id if eos else None
    prompt_ids: list[Tensor] = []
    prompt_masks: list[Tensor] = []
    conts: dict[str, list[Tensor]] = {name: [] for name in continuations}
    for i, prompt in enumerate(prompts):
        for j, (name, texts) in enumerate(continuations.items()):
            enc = encode_chat(tokenizer, prompt, texts[i], max_length=max_length)
            start = int(enc.response_mask.nonzero()[0])
            if j == 0:
                prompt_ids.append(enc.input_ids[:start])
                prompt_masks.append(enc.prompt_mask[:start])
            response = enc.input_ids[start:][enc.response_mask[start:]]
            if eos_id is not None:
                response = torch.cat([response, torch.tensor([eos_id])])
            conts[name].append(response)
    ones = [torch.ones(len(r), dtype=torch.long) for r in prompt_ids]
    return ChatBatch(
        prompt_ids=_left_pad(prompt_ids, pad),
        prompt_attention=_left_pad(ones, 0),
        prompt_mask=_left_pad(prompt_masks, False),
        continuations={
            name: Continuation(ids=_right_pad(rows, pad), attention=_right_pad([torch.ones_like(r) for r in rows], 0))
            for name, rows in conts.items()
        },
    )


def behaviour_batch(tokenizer: Any, behaviours: Sequence[Behaviour], *, max_length: int | None = None,
                    utility: Sequence[Utility] = ()) -> ChatBatch:
    """Behaviours as a batch with continuations ``target`` (harmful) and ``refusal``, plus optional utility chats."""
    batch = chat_batch(tokenizer, [b.prompt for b in behaviours],
                       {"target": [b.target for b in behaviours], "refusal": [b.refusal for b in behaviours]},
                       max_length=max_length)
    return replace(batch, utility=utility_batch(tokenizer, utility, max_length=max_length) if utility else None)


def utility_batch(tokenizer: Any, chats: Sequence[Utility], *, max_length: int | None = None) -> ChatBatch:
    """Utility chats as a batch with one continuation, ``response``."""
    return chat_batch(tokenizer, [u.prompt for u in chats], {"response": [u.response for u in chats]},
                      max_length=max_length)
