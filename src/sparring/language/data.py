"""Text data for language-model attacks and adversarial training: records, JSONL files, chat encoding.

Records (frozen, keyword-only):

* :class:`Behaviour`: a harmful request, the harmful completion an attacker wants (CAT's *away* target and the
  embedding attack's target) and a safe refusal (CAT's *toward* target).
* :class:`Utility`: a benign prompt and a helpful response (the utility loss that keeps the model useful).
* :class:`InjectionTask`: a prompt-injection case: the user's instruction, the data it applies to, the correct
  answer and optionally an injected instruction; :func:`injection_prompt` builds the user message.

:func:`read_jsonl` reads any of them from a file with one JSON object per line.

:func:`encode_chat` renders (prompt, response) with the tokenizer's chat template and returns the token ids
with two masks: ``response_mask`` (the loss positions) and ``prompt_mask`` (the user prompt's own tokens, where
CAT's embedding attack adds δ, excluding the template's role markers). :func:`collate` pads a list of them into
a batch::

    batch = collate([encode_chat(tok, b.prompt, b.target, max_length=256) for b in behaviours], tok.pad_token_id)
    x = net.embed(batch["input_ids"], batch["attention_mask"])
    threat = TokenL2Ball(eps=0.05 * embedding_scale(net), mask=batch["prompt_mask"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sparring.errors import ConfigError, DataError

Kind = Literal["behaviour", "utility", "injection"]

#: Stands in for the prompt when the chat template is rendered, to split the rendering around the prompt.
SENTINEL = "SPARRINGPROMPTSENTINEL"


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """A harmful request, the harmful completion the attacker wants, and the safe refusal."""

    prompt: str
    target: str
    refusal: str
    category: str | None = None


@dataclass(frozen=True, kw_only=True)
class Utility:
    """A benign prompt and a helpful response; ``answers``: short reference answers a generated response is checked
    against (utility as the fraction answered correctly), when the prompt has one."""

    prompt: str
    response: str
    answers: tuple[str, ...] = ()
    category: str | None = None


@dataclass(frozen=True, kw_only=True)
class InjectionTask:
    """A prompt-injection case: the user's instruction, the data it applies to, and the correct answer.

    ``injection`` (an instruction an attacker hid in the data) is ``None`` for the clean case.
    """

    instruction: str
    data: str
    answer: str
    injection: str | None = None


_RECORDS: dict[str, tuple[type, tuple[str, ...], tuple[str, ...]]] = {
    # kind: (class, required string fields, optional string-or-null fields); a utility record may also hold
    # "answers", a list of strings
    "behaviour": (Behaviour, ("prompt", "target", "refusal"), ("category",)),
    "utility": (Utility, ("prompt", "response"), ("category",)),
    "injection": (InjectionTask, ("instruction", "data", "answer"), ("injection",)),
}


def read_jsonl(path: str | Path, kind: Kind) -> list[Any]:
    """Records of ``kind`` from a JSONL file: one JSON object per line, with the record's field names.

    Extra keys are ignored and blank lines skipped. Raises :class:`DataError` (one line naming the file, the line
    number and the field) for a missing or unreadable file, bad JSON, a line that is not an object, a missing or
    non-string field, or a file with no records.
    """
    if kind not in _RECORDS:
        raise ConfigError(f"kind must be one of {sorted(_RECORDS)}, got {kind!r}")
    cls, required, optional = _RECORDS[kind]
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read {kind} records: {error}") from error
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: invalid JSON: {error.msg} (column {error.colno})") from error
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        for name in required:
            if name not in row:
                raise DataError(f"{path}:{number}: field {name!r} is missing ({kind} needs {', '.join(required)})")
            if not isinstance(row[name], str):
                raise DataError(f"{path}:{number}: field {name!r} must be a string, got {type(row[name]).__name__}")
        for name in optional:
            if row.get(name) is not None and not isinstance(row[name], str):
                raise DataError(f"{path}:{number}: field {name!r} must be a string or null, "
                                f"got {type(row[name]).__name__}")
        fields = {name: row[name] for name in required} | {name: row.get(name) for name in optional}
        if kind == "utility" and row.get("answers") is not None:
            answers = row["answers"]
            if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
                raise DataError(f"{path}:{number}: field 'answers' must be a list of non-empty strings")
            fields["answers"] = tuple(answers)
        records.append(cls(**fields))
    if not records:
        raise DataError(f"{path}: no {kind} records (the file is empty)")
    return records


def injection_prompt(task: InjectionTask, *, separator: str = "\n\n") -> str:
    """The user message of a prompt-injection case: ``instruction + separator + data``.

    When the task has an injection it is appended to the data after a space, i.e. hidden at the end of the data
    the instruction applies to (the usual placement in prompt-injection benchmarks).
    """
    data = task.data if task.injection is None else f"{task.data} {task.injection}"
    return f"{task.instruction}{separator}{data}"


@dataclass(frozen=True)
class EncodedChat:
    """One rendered (prompt, response) pair: ``input_ids`` (T,) and the bool masks (T,) that locate its parts.

    Tokens in neither mask belong to the template (BOS, role markers, generation prompt).
    """

    input_ids: Tensor
    response_mask: Tensor
    prompt_mask: Tensor

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def _template(tokenizer: Any) -> tuple[str, str, bool]:
    """(text before the prompt, text between prompt and response, whether to add the tokenizer's special tokens).

    With a chat template, it is rendered once with :data:`SENTINEL` as the user message (and the generation
    prompt) and split there. Assumption: the template inserts the message content verbatim, once (true of the
    common templates; one that rewrites or repeats the content is rejected). The rendering already holds BOS and
    the like, so no special tokens are added when tokenizing it (Hugging Face's own advice for chat templates).
    """
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                                 add_generation_prompt=True)
        if not isinstance(rendered, str) or rendered.count(SENTINEL) != 1:
            raise ConfigError("the chat template does not insert the user message verbatim exactly once; "
                              "cannot locate the prompt tokens")
        before, after = rendered.split(SENTINEL)
        return before, after, False
    return "User: ", "\nAssistant: ", True


def _truncate(ids: Tensor, prompt: Tensor, response: Tensor, max_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut a too-long sequence to ``max_length`` tokens; the template tokens are always kept.

    Rule: the response keeps its first tokens and the prompt its last ones (the end of the request, next to the
    answer, and the start of the answer are what the loss and the attack depend on most). The response is cut
    first, but not below half the space left after the template unless it is shorter; the prompt takes the rest.
    """
    n_prompt, n_response = int(prompt.sum()), int(response.sum())
    space = max_length - (len(ids) - n_prompt - n_response)
    if space < 2:
        raise ConfigError(f"max_length={max_length} leaves {space} tokens after the chat template; "
                          "need at least one prompt and one response token")
    keep_response = min(n_response, max(space - n_prompt, space // 2))
    keep_prompt = min(n_prompt, space - keep_response)
    drop = (prompt & (prompt.cumsum(0) <= n_prompt - keep_prompt)) | (response & (response.cumsum(0) > keep_response))
    return ids[~drop], prompt[~drop], response[~drop]


def encode_chat(tokenizer: Any, prompt: str, response: str, *, max_length: int | None = None) -> EncodedChat:
    """Token ids of ``prompt`` as the user message and ``response`` as the assistant's answer, with masks.

    The text is the chat template rendered for the user message with the generation prompt, then the response
    (no EOS appended). Without a chat template it is ``"User: {prompt}\\nAssistant: {response}"``, tokenized with
    the tokenizer's special tokens (BOS). Masks come from the character offsets of the tokens (a fast tokenizer
    is required): a token is in ``prompt_mask`` (``response_mask``) when its span overlaps the prompt's
    (response's) characters, so the template's markers and special tokens (empty spans) are in neither.
    A sequence longer than ``max_length`` is truncated as :func:`_truncate` describes.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer: token offsets are needed")
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    before, after, special = _template(tokenizer)
    text = before + prompt + after + response
    p0, p1 = len(before), len(before) + len(prompt)
    r0 = p1 + len(after)
    encoding = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    spans = torch.tensor(encoding["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    start, end = spans[:, 0], spans[:, 1]
    nonempty = end > start
    prompt_mask = nonempty & (start < p1) & (end > p0)
    response_mask = nonempty & (end > r0)
    if not prompt_mask.any():
        raise DataError(f"the prompt has no tokens: {prompt!r}")
    if not response_mask.any():
        raise DataError(f"the response has no tokens: {response!r}")
    if max_length is not None and len(ids) > max_length:
        ids, prompt_mask, response_mask = _truncate(ids, prompt_mask, response_mask, max_length)
    return EncodedChat(input_ids=ids, response_mask=response_mask, prompt_mask=prompt_mask)


def collate(encoded: list[EncodedChat], pad_id: int, *, side: Literal["right", "left"] = "right") -> dict[str, Tensor]:
    """Pad encoded chats to a batch: ``input_ids``, ``attention_mask`` (long), ``response_mask``, ``prompt_mask``
    (bool), all (B, T) with T the longest sequence.

    Right padding (the default) keeps every sequence at positions 0…T_i−1, so training with an attention mask
    needs no position ids and the loss simply reads ``response_mask``. Use ``side="left"`` for generation or for
    :class:`~sparring.language.CausalLMTarget`, which scores the last ``keep`` tokens of each row. Padding is in
    neither mask.
    """
    if not encoded:
        raise DataError("collate needs at least one encoded chat")
    if side not in ("right", "left"):
        raise ConfigError(f"side must be 'right' or 'left', got {side!r}")
    length = max(len(e) for e in encoded)
    batch = {
        "input_ids": torch.full((len(encoded), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(encoded), length, dtype=torch.long),
        "response_mask": torch.zeros(len(encoded), length, dtype=torch.bool),
        "prompt_mask": torch.zeros(len(encoded), length, dtype=torch.bool),
    }
    for row, e in enumerate(encoded):
        cols = slice(0, len(e)) if side == "right" else slice(length - len(e), length)
        batch["input_ids"][row, cols] = e.input_ids
        batch["attention_mask"][row, cols] = 1
        batch["response_mask"][row, cols] = e.response_mask
        batch["prompt_mask"][row, cols] = e.prompt_mask
    return batch
