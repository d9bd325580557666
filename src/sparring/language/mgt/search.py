"""A greedy black-box search that combines the rule-based rewrites against a detector's score.

Threat model: **output-only black box** (REACT's): the attacker sees only ``score(texts) → P(machine)`` (N,), no
gradients, no logits. For each machine text x₀ the search keeps a current text x and, for ``steps`` rounds,

    x ← argmin_{c ∈ C(x)} score(c)   if   min_c score(c) < score(x),   else stop,

where C(x) holds ``candidates`` variants of x, each one rewrite (:data:`~sparring.language.mgt.rewrites.REWRITES`,
the kind drawn uniformly) with budget ``step_budget``. A text stops early once it is classified human
(score < ``threshold``). At most ``steps · step_budget`` of the words change (20% by default: 4 × 5%).

All texts still being attacked are scored in one call per step (the detector's encoder caches embeddings per text,
so a repeated candidate costs nothing). The variants of a text are drawn from a generator seeded by
``(seed, crc32(x))``: the same current text always proposes the same candidates, whichever detector is attacked,
so attacks on similar detectors share their encoder work. ``queries`` counts the texts handed to ``score``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparring.errors import ConfigError
from sparring.language.mgt.rewrites import REWRITES, Neighbours

#: ``score(texts) → (N,)`` probability that each text is machine-written.
Score = Callable[[list[str]], Tensor]


@dataclass
class SearchResult:
    """The final ``texts``, their ``scores`` (N,), ``initial`` scores (N,) and the number of texts ``queries``."""

    texts: list[str]
    scores: Tensor
    initial: Tensor
    queries: int
    steps_taken: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class RuleSearch:
    """Greedy black-box rewrite search (module doc). Defaults: 4 steps × 6 candidates, 5% of words per step."""

    steps: int = 4
    candidates: int = 6
    step_budget: float = 0.05
    rewrites: tuple[str, ...] = ("synonym", "homoglyph", "reorder", "punctuation")
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [r for r in self.rewrites if r not in REWRITES]
        if unknown or not self.rewrites:
            raise ConfigError(f"unknown rewrites {unknown}; choose from {', '.join(REWRITES)}")
        if self.steps < 0 or self.candidates < 1 or not 0 <= self.step_budget <= 1:
            raise ConfigError(f"invalid search settings: {self}")

    def variants(self, text: str, neighbours: Neighbours | None) -> list[str]:
        """The ``candidates`` one-rewrite variants of ``text`` (a function of ``text`` and ``seed`` alone)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(text.encode()))
        names = [n for n in self.rewrites if n != "synonym" or neighbours is not None]
        out = []
        for _ in range(self.candidates):
            name = names[int(torch.randint(len(names), (1,), generator=g))]
            out.append(REWRITES[name](text, generator=g, budget=self.step_budget, neighbours=neighbours))
        return out

    def __call__(self, texts: Sequence[str], score: Score, *, neighbours: Neighbours | None = None) -> SearchResult:
        current = list(texts)
        scores = score(current).detach().float().clone()
        initial = scores.clone()
        queries = len(current)
        taken = [0] * len(current)
        active = [i for i in range(len(current)) if scores[i] >= self.threshold]
        for _ in range(self.steps):
            if not active:
                break
            proposals = {i: [v for v in self.variants(current[i], neighbours) if v != current[i]] for i in active}
            flat = [v for i in active for v in proposals[i]]
            if not flat:
                break
            values = score(flat).detach().float()
            queries += len(flat)
            still, at = [], 0
            for i in active:
                mine = values[at:at + len(proposals[i])]
                at += len(proposals[i])
                if len(mine) and float(mine.min()) < float(scores[i]):
                    best = int(mine.argmin())
                    current[i], scores[i] = proposals[i][best], mine[best]
                    taken[i] += 1
                    if scores[i] >= self.threshold:
                        still.append(i)
            active = still
        return SearchResult(texts=current, scores=scores, initial=initial, queries=queries, steps_taken=taken)


__all__ = ["RuleSearch", "Score", "SearchResult"]
