"""LocalAlign (arXiv 2605.01462): prompt-injection defence trained on near-target adversarial answers.

With a_c and a_j the length-normalised log-probabilities (mean per token) of the correct answer ("chosen") and of
the j-th near-target answer ("rejected_j") given the prompt with the injected data, and m_j = a_c − a_j::

    ℓ_j = −log σ(β·m_j − γ)                              (SimPO's reference-free pairwise loss)
    w_j = σ(−(m_j − m₀)/τ)                               (margin-aware weight, no gradient)
    L   = Σ_j w_j ℓ_j / Σ_j w_j  +  λ_sft · NLL(chosen)   per example

A near-target answer differs from the correct one by one small, consequential edit (a number, a word, the word
order, a negation; :func:`near_target_edits`). The weight is 0.5 at m = m₀ and grows towards 1 as the wrong
answer becomes as likely as the right one, so the examples closest to the intended response dominate.

Reconstruction: methods.md §8.1 knows the paper at abstract level only (near-target examples generated
automatically, margin-aware weighting that up-weights the examples closest to the intended response). The loss
above is our reading: SecAlign-style preference optimisation in its reference-free SimPO form, several
rejected answers per prompt, the weight w = σ(−(m − m₀)/τ) of methods.md. Defaults: β = 2.0 and γ = 0.5 lie in
SimPO's ranges (Meng et al. 2024, β ∈ [2, 2.5], γ/β ∈ [0.3, 0.5]); m₀ = 0, τ = 1 and λ_sft = 0 are ours.
``weighted=False`` gives plain multi-negative SimPO (uniform weights), the ablation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.context import frozen_model
from sparring.errors import ConfigError, DataError
from sparring.language.batch import ChatBatch, Continuation, chat_batch
from sparring.language.data import InjectionTask, injection_prompt
from sparring.language.view import continuation_logits
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NEGATIONS = ("not",)
# Words after which "not" reads naturally; without one, the negation goes in front of the answer.
_AUXILIARIES = frozenset("is are was were am be can could will would shall should must may might do does did has have "
                         "had".split())


def _number_edits(answer: str) -> list[str]:
    """The answer with one number changed: by ±1…9 (kept non-negative) or one digit replaced by another."""
    out = []
    for match in _NUMBER.finditer(answer):
        text, (start, end) = match.group(), match.span()
        values = []
        if text.isdigit():
            n = int(text)
            values += [str(n + d) for d in (*range(1, 10), *range(-1, -10, -1)) if n + d >= 0]
        for i, ch in enumerate(text):
            if ch.isdigit():
                values += [text[:i] + d + text[i + 1:] for d in "0123456789"
                           if d != ch and not (i == 0 and d == "0" and len(text) > 1 and text[1] != ".")]
        out += [answer[:start] + v + answer[end:] for v in dict.fromkeys(values) if v != text]
    return out


def _word_edits(words: list[str], pool: list[str], per_word: int, rng: random.Random) -> dict[str, list[list[str]]]:
    """Word-level edits of ``words``, by kind (each a list of edited word lists)."""
    n = len(words)
    swaps = []
    for i, word in enumerate(words):
        if _NUMBER.fullmatch(word):
            continue  # numbers have their own, consequential edits
        options = [w for w in pool if w != word]
        for other in rng.sample(options, min(per_word, len(options))):
            swaps.append(words[:i] + [other] + words[i + 1:])
    lowered = [w.lower() for w in words]
    removals = [words[:i] + words[i + 1:] for i, w in enumerate(lowered) if w in _NEGATIONS and n > 1]
    after = [i + 1 for i, w in enumerate(lowered) if w in _AUXILIARIES]
    inserts = [] if removals else [words[:i] + ["not"] + words[i:] for i in (after or [0])]
    order = [words[:i] + [words[i + 1], words[i]] + words[i + 2:] for i in range(n - 1) if words[i] != words[i + 1]]
    return {
        "swap": swaps,
        "order": order,
        "negation": removals + inserts,
        "drop": [words[:i] + words[i + 1:] for i in range(n)] if n > 1 else [],
    }


def near_target_edits(answer: str, *, count: int, rng: random.Random, vocabulary: Sequence[str] = ()) -> list[str]:
    """``count`` distinct near-target versions of ``answer``, each one small edit away from it.

    Edit kinds: change a number (±1…9 or another digit), swap one word for another (from ``vocabulary``, else
    from the answer itself), swap two adjacent words, insert or remove a negation ("not"), drop a word. When the
    answer holds a number the first edit changes a number (the most consequential error); the others cycle
    through the kinds in an order drawn from ``rng``, so kinds the answer does not allow are skipped. Each edit
    is at most two word substitutions (one for all kinds but the adjacent swap). Deterministic given ``rng``.

    Raises DataError for an empty answer or one that admits fewer than ``count`` distinct edits.
    """
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    words = answer.split()
    if not words:
        raise DataError(f"cannot edit an empty answer ({answer!r}); every injection task needs a correct answer")
    pool = list(dict.fromkeys([*(w for v in vocabulary for w in v.split()), *words]))
    kinds = {"number": [s.split() for s in _number_edits(" ".join(words))], **_word_edits(words, pool, count, rng)}
    for candidates in kinds.values():
        rng.shuffle(candidates)
    order = [k for k in kinds if k != "number"]
    rng.shuffle(order)
    order = ["number", *order]
    edits: list[str] = []
    seen = {" ".join(words)}
    while len(edits) < count and any(kinds.values()):
        for kind in order:
            while kinds[kind] and len(edits) < count:
                text = " ".join(kinds[kind].pop())
                if text not in seen:
                    seen.add(text)
                    edits.append(text)
                    break
    if len(edits) < count:
        raise DataError(f"answer {answer!r} admits only {len(edits)} distinct near-target edits, {count} asked; "
                        "pass a vocabulary of replacement words or ask for fewer")
    return edits


def injection_batch(tokenizer: Any, tasks: Sequence[InjectionTask], *, rejected: int = 3, seed: int = 0,
                    vocabulary: Sequence[str] = (), max_length: int | None = None) -> ChatBatch:
    """Prompt-injection tasks as a batch with continuations ``chosen`` (the correct answer) and ``rejected_0`` …
    ``rejected_{m−1}`` (m = ``rejected`` near-target edits of it, drawn with ``random.Random(seed)``).

    The prompt is :func:`~sparring.language.data.injection_prompt` (the injected instruction hidden in the
    data). Word swaps draw from ``vocabulary``, by default the words of all the tasks' answers.
    """
    if rejected < 1:
        raise ConfigError(f"rejected must be >= 1 near-target answer per task, got {rejected}")
    if not tasks:
        raise DataError("an injection batch needs at least one task")
    rng = random.Random(seed)
    vocabulary = vocabulary or [w for task in tasks for w in task.answer.split()]
    edits = [near_target_edits(task.answer, count=rejected, rng=rng, vocabulary=vocabulary) for task in tasks]
    continuations = {"chosen": [task.answer for task in tasks]}
    continuations |= {f"rejected_{j}": [e[j] for e in edits] for j in range(rejected)}
    return chat_batch(tokenizer, [injection_prompt(task) for task in tasks], continuations, max_length=max_length)


def rejected_names(batch: ChatBatch) -> list[str]:
    """The batch's ``rejected_j`` continuation names, by j (other continuations are ignored)."""
    names = [n for n in batch.continuations if re.fullmatch(r"rejected_\d+", n)]
    if not names:
        raise DataError(f"the batch has no rejected_j continuations (it has {', '.join(batch.continuations)}); "
                        "build it with injection_batch")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _pad(ids: Tensor, width: int, value: int) -> Tensor:
    return F.pad(ids, (0, width - ids.shape[1]), value=value)


def _scores(model: nn.Module, batch: ChatBatch, names: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """(mean log-probs a (B, C), logits of names[0] (B, K₀, V), same (B, C) bool: continuation j's tokens equal
    names[0]'s). All C continuations go through one forward pass of C·B rows (prompt repeated)."""
    conts = [batch.continuation(name) for name in names]
    b, c, width = len(batch), len(conts), max(cont.ids.shape[1] for cont in conts)
    ids = torch.cat([_pad(cont.ids, width, 0) for cont in conts])  # (C·B, K)
    attention = torch.cat([_pad(cont.attention, width, 0) for cont in conts])
    stacked = ChatBatch(prompt_ids=batch.prompt_ids.repeat(c, 1), prompt_attention=batch.prompt_attention.repeat(c, 1),
                        prompt_mask=batch.prompt_mask.repeat(c, 1))
    cont = Continuation(ids=ids, attention=attention)
    logits = continuation_logits(model, stacked, cont)  # (C·B, K, V)
    labels = cont.labels
    logprobs = -cross_entropy(logits, labels).view(c, b).T  # mean token NLL over non-padding tokens
    same = (labels.view(c, b, width) == labels[:b]).all(-1).T
    return logprobs, logits[:b, :conts[0].ids.shape[1]], same


@torch.no_grad()
def near_target_asr(model: nn.Module, batch: ChatBatch) -> Tensor:
    """(B,) bool: some near-target answer is at least as likely (mean per-token log-prob) as the correct one.

    Runs in eval mode without gradients; the model's state is restored. Rejected answers whose tokens equal the
    chosen ones (a tokenizer collapsing the edit) are not counted."""
    with frozen_model(model):
        a, _, same = _scores(model, batch, ["chosen", *rejected_names(batch)])
    return ((a[:, 1:] >= a[:, :1]) & ~same[:, 1:]).any(1)


@OBJECTIVES.register("localalign")
@dataclass(kw_only=True)
class LocalAlign(Objective):
    """Margin-weighted SimPO of the correct answer over near-target ones (see the module doc).

    Args:
        beta: β, the scale of the length-normalised margin (SimPO).
        gamma: γ, the target reward margin (SimPO).
        m0: m₀, the margin at which a pair's weight is 0.5.
        tau: τ > 0, the weight's temperature (small: only near-ties count).
        sft_weight: λ_sft, weight of the chosen answer's mean token NLL.
        weighted: margin-aware weights; False gives uniform weights (plain multi-negative SimPO).
    """

    name = "localalign"
    inputs: ClassVar[str] = "chat"
    beta: float = 2.0
    gamma: float = 0.5
    m0: float = 0.0
    tau: float = 1.0
    sft_weight: float = 0.0
    weighted: bool = True

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"LocalAlign needs beta > 0, got {self.beta}")
        if not self.tau > 0:
            raise ConfigError(f"LocalAlign needs tau > 0 (the weight's temperature), got {self.tau}")
        if not self.sft_weight >= 0:
            raise ConfigError(f"LocalAlign needs sft_weight >= 0, got {self.sft_weight}")
        for name in ("gamma", "m0"):
            if not torch.isfinite(torch.tensor(float(getattr(self, name)))):
                raise ConfigError(f"LocalAlign needs a finite {name}, got {getattr(self, name)}")

    def weights(self, margin: Tensor) -> Tensor:
        """w = σ(−(m − m₀)/τ), detached: 0.5 at m = m₀, larger for smaller margins."""
        return torch.sigmoid(-(margin.detach().float() - self.m0) / self.tau)

    def __call__(  # type: ignore[override]
        self, model: nn.Module, batch: ChatBatch, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        if not isinstance(batch, ChatBatch):
            raise DataError(f"LocalAlign trains on a ChatBatch (see injection_batch), got {type(batch).__name__}")
        a, logits, same = _scores(model, batch, ["chosen", *rejected_names(batch)])
        margin = a[:, :1] - a[:, 1:]  # (B, m)
        valid = ~same[:, 1:]  # a pair whose rejected tokens equal the chosen ones is no preference
        pair = -F.logsigmoid(self.beta * margin - self.gamma)
        # Normalised weights w_j / Σ w_j as a softmax of log w_j: no 0/0 when every w_j underflows.
        log_w = F.logsigmoid(-(margin.detach() - self.m0) / self.tau) if self.weighted else torch.zeros_like(margin)
        norm = torch.softmax(log_w.masked_fill(~valid, float("-inf")), 1).nan_to_num(0.0)
        nll = -a[:, 0]
        loss = (norm * pair).sum(1) + self.sft_weight * nll
        with torch.no_grad():
            count = valid.sum().clamp_min(1)
            metrics: dict[str, float | Tensor] = {
                "margin": (margin * valid).sum() / count,
                "weight": (self.weights(margin) * valid).sum() / count,
                "preference_accuracy": ((margin > 0) & valid).sum() / count,
                "near_target_asr": ((margin <= 0) & valid).any(1).float().mean(),
                "chosen_nll": nll.mean(),
            }
        return ObjectiveOutput(loss=loss, logits=logits, metrics=metrics)
