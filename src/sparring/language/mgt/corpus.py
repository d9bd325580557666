"""The offline machine-generated-text (MGT) corpus: human chunks from the Python documentation, split by topic.

Human-written text is the Python documentation that ships with the interpreter: ``pydoc_data.topics`` (79 help
topics, about 65 000 words: the language reference's prose). Each topic is cut into paragraphs (blank lines), a
paragraph into sentences, and consecutive sentences are gathered into chunks of ``min_words``–``max_words`` words
(40–80); paragraphs that are mostly code or grammar (fewer than ``min_alpha`` of their words alphabetic) are
skipped. About 860 chunks from 72 topics come out, the same on every machine with the same Python.

The machine text of a chunk is generated from its opening (its first ``opening_words`` words, see
:mod:`sparring.language.mgt.generation`), so a human chunk and its machine twin start alike and the detector must
read how the text goes on, not what it is about.

:func:`topic_split` assigns whole topics to ``train`` / ``val`` / ``test`` (a seeded shuffle of the topics, then
greedy filling to the target fractions of chunks), so no topic is seen in training and test.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sparring.errors import ConfigError

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """One human-written chunk: its ``topic`` (a ``pydoc_data.topics`` key), ``text`` and ``index`` within it."""

    topic: str
    index: int
    text: str

    def opening(self, words: int) -> str:
        """The first ``words`` words (the prompt the machine twin is generated from)."""
        return " ".join(self.text.split()[:words])


def _alpha_fraction(words: list[str]) -> float:
    return sum(w.strip(".,;:()\"'!?").isalpha() for w in words) / max(len(words), 1)


def human_chunks(*, min_words: int = 40, max_words: int = 80, min_alpha: float = 0.7,
                 topics: dict[str, str] | None = None) -> list[Chunk]:
    """Chunks of ``min_words``–``max_words`` words of prose from ``topics`` (default: ``pydoc_data.topics``),
    sorted by topic then position; deterministic."""
    if not 0 < min_words <= max_words:
        raise ConfigError(f"need 0 < min_words <= max_words, got {min_words} and {max_words}")
    if topics is None:
        from pydoc_data.topics import topics as pydoc_topics

        topics = pydoc_topics
    out: list[Chunk] = []
    for name in sorted(topics):
        index = 0
        current: list[str] = []
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            words = paragraph.split()
            if len(words) < 8 or _alpha_fraction(words) < min_alpha:
                current = []  # code, grammar or a heading breaks the run of prose
                continue
            for sentence in _SENTENCE.split(" ".join(words)):
                current += sentence.split()
                if len(current) >= min_words:
                    if len(current) <= max_words:
                        out.append(Chunk(topic=name, index=index, text=" ".join(current)))
                        index += 1
                    current = []
            current = []  # chunks do not run across paragraphs
    return out


def topic_split(chunks: list[Chunk], *, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
                ) -> dict[str, list[Chunk]]:
    """``{"train", "val", "test"}`` → chunks, whole topics per split (disjoint), about ``fractions`` of the chunks
    each; deterministic in ``seed``."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_topic: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_topic.setdefault(chunk.topic, []).append(chunk)
    names = sorted(by_topic)
    random.Random(seed).shuffle(names)
    total = len(chunks)
    targets = {"test": fractions[2] * total, "val": fractions[1] * total}
    out: dict[str, list[Chunk]] = {"train": [], "val": [], "test": []}
    for name in names:  # fill test, then val; the rest trains
        split = next((s for s in ("test", "val") if len(out[s]) < targets[s]), "train")
        out[split] += by_topic[name]
    return out


__all__ = ["Chunk", "human_chunks", "topic_split"]
