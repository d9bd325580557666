"""REACT's humanisation attacker: a best-of-n, retrieval-augmented LLM rewrite chosen by a surrogate detector.

For a machine text x the humanizer retrieves the nearest human-written exemplar r(x) from the training topics
(cosine similarity of the frozen encoder's embeddings: retrieval-augmented generation, as REACT's attacker does),
prompts the chat model with

    "Here is a paragraph written by a person: {r(x)}. Rewrite the following paragraph in your own words, in the
     same plain style as the person's paragraph. Reply with the rewritten paragraph only. {x}"

samples ``n`` rewrites c₁ … c_n (seeds 0 … n−1, cached by :mod:`~sparring.language.mgt.generation`) and keeps

    x' = argmin_k  s̃(c_k),

with s̃ a **surrogate** detector's P(machine) (trained by the attacker on a shot set disjoint from the target's):
the output-only black-box setting, in which the target is never queried. Paper (abstract level): the attacker is
an LLM guided by a surrogate of the target detector; n, the prompt and the retriever are not given. Defaults here:
n = 4, SmolLM2-135M-Instruct, 96 new tokens, T = 0.8, top-p 0.95 — CPU-sized.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sparring.errors import ConfigError
from sparring.language.mgt.encoder import TextEncoder
from sparring.language.mgt.generation import GenerationConfig, LanguageModel, generate

PROMPT = ("Here is a paragraph written by a person:\n{exemplar}\n\nRewrite the following paragraph in your own words, "
          "in the same plain style as the person's paragraph. Reply with the rewritten paragraph only.\n\n{text}")
PROMPT_NO_EXEMPLAR = ("Rewrite the following paragraph in your own words, in a plain human style. Reply with the "
                      "rewritten paragraph only.\n\n{text}")
_PREAMBLE = re.compile(r"^(sure[,.!]?\s*)?(here(?:'s| is)[^:]{0,80}:)\s*", re.IGNORECASE)


def retrieve(encoder: TextEncoder, texts: Sequence[str], pool: Sequence[str]) -> list[str]:
    """For each text, the most similar text of ``pool`` (cosine of the encoder's embeddings)."""
    if not pool:
        raise ConfigError("retrieval needs a non-empty pool of human exemplars")
    q = F.normalize(encoder.embed(list(texts)), dim=-1)
    k = F.normalize(encoder.embed(list(pool)), dim=-1)
    return [pool[i] for i in (q @ k.T).argmax(1).tolist()]


@dataclass(kw_only=True)
class Humanizer:
    """Best-of-n humanizer (module doc)."""

    lm: LanguageModel
    n: int = 4
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        mode="chat", max_new_tokens=96, batch_size=8))
    cache: Path | None | Literal[False] = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"humanizer n must be >= 1, got {self.n}")
        self.generation = replace(self.generation, mode="chat")

    def candidates(self, texts: Sequence[str], exemplars: Sequence[str] | None = None) -> list[list[str]]:
        """``n`` rewrites of each text (a text itself stands in for an empty rewrite)."""
        if exemplars is not None and len(exemplars) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(exemplars)} exemplars")
        prompts = [PROMPT.format(exemplar=e, text=t) for t, e in zip(texts, exemplars, strict=True)] \
            if exemplars is not None else [PROMPT_NO_EXEMPLAR.format(text=t) for t in texts]
        draws = [generate(self.lm, prompts, config=replace(self.generation, seed=self.generation.seed + k),
                          cache=self.cache) for k in range(self.n)]
        return [[_PREAMBLE.sub("", d[i]).strip() or texts[i] for d in draws] for i in range(len(texts))]

    @staticmethod
    def select(candidates: Sequence[Sequence[str]], score: Callable[[list[str]], Tensor]) -> list[str]:
        """Best of n: per text, the candidate the (surrogate) ``score`` finds least machine-like."""
        flat = [c for group in candidates for c in group]
        values = score(flat) if flat else torch.zeros(0)
        out, at = [], 0
        for group in candidates:
            out.append(group[int(values[at:at + len(group)].argmin())])
            at += len(group)
        return out


__all__ = ["PROMPT", "Humanizer", "retrieve"]
