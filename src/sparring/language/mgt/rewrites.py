"""Rule-based evasion rewrites of machine text: each a function ``text → text`` with a seeded generator and a budget.

The budget is the fraction of the text's words a rewrite may change: ``n = max(1, ⌊budget · words⌋)`` edits
(none at budget 0). Every rewrite draws its choices from the ``torch.Generator`` it is given, so a seed gives the
same text.

* :func:`synonym_swap`: ``n`` words (alphabetic, 3+ letters) replaced by one of their nearest neighbours in the
  encoder's word-piece embedding table (:meth:`~sparring.language.mgt.encoder.TextEncoder.neighbours`; whole-word
  alphabetic tokens only, the word itself excluded); case and the surrounding punctuation are kept.
* :func:`homoglyphs`: in ``n`` words, every Latin letter that has a Cyrillic lookalike (a→а, e→е, o→о, p→р, c→с,
  x→х, y→у, i→і and the capitals A B C E H K M O P T X) is replaced: the text looks the same and reads the same to
  a person, but its tokens change.
* :func:`reorder_sentences`: ``n`` random transpositions of sentences (at least one when there are two or more
  sentences): the multiset of sentences is kept, their order is not. Counts sentences, not words.
* :func:`punctuation_edits`: ``n`` edits at random words: a comma added after a bare word, or a comma, semicolon or
  colon removed, or a final period made a semicolon; the words themselves stay.

:data:`REWRITES` names them for the black-box search (:mod:`sparring.language.mgt.search`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

#: Latin → Cyrillic lookalikes.
HOMOGLYPHS: dict[str, str] = {
    "a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і",
    "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "K": "К", "M": "М", "O": "О", "P": "Р", "T": "Т", "X": "Х",
}
_WORD = re.compile(r"^(\W*)([A-Za-z]+)(\W*)$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

#: ``neighbours(word) → candidate words``.
Neighbours = Callable[[str], list[str]]


def edits_for(budget: float, words: int) -> int:
    """Edits a ``budget`` (fraction of words) allows on a text of ``words`` words: max(1, ⌊budget·words⌋), 0 at 0."""
    if budget <= 0 or words == 0:
        return 0
    return max(1, int(budget * words))


def _pick(count: int, k: int, generator: torch.Generator) -> list[int]:
    """``k`` distinct positions of ``count``, in random order."""
    return torch.randperm(count, generator=generator)[:k].tolist() if count else []


def _with_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[:1].isupper() else word.lower()


def synonym_swap(text: str, *, neighbours: Neighbours, generator: torch.Generator, budget: float = 0.1) -> str:
    """Swap up to ``⌊budget · words⌋`` words for embedding neighbours (module doc)."""
    words = text.split()
    eligible = []
    for i, w in enumerate(words):
        m = _WORD.match(w)
        if m and len(m.group(2)) >= 3 and neighbours(m.group(2)):
            eligible.append(i)
    for j in _pick(len(eligible), edits_for(budget, len(words)), generator):
        i = eligible[j]
        pre, core, post = _WORD.match(words[i]).groups()  # type: ignore[union-attr]
        options = neighbours(core)
        choice = options[int(torch.randint(len(options), (1,), generator=generator))]
        words[i] = pre + _with_case(choice, core) + post
    return " ".join(words)


def homoglyphs(text: str, *, generator: torch.Generator, budget: float = 0.1) -> str:
    """Replace the Latin letters of up to ``⌊budget · words⌋`` words by Cyrillic lookalikes (module doc)."""
    words = text.split()
    eligible = [i for i, w in enumerate(words) if any(c in HOMOGLYPHS for c in w)]
    for j in _pick(len(eligible), edits_for(budget, len(words)), generator):
        i = eligible[j]
        words[i] = "".join(HOMOGLYPHS.get(c, c) for c in words[i])
    return " ".join(words)


def reorder_sentences(text: str, *, generator: torch.Generator, budget: float = 0.1) -> str:
    """``max(1, ⌊budget · sentences⌋)`` random sentence transpositions (module doc)."""
    sentences = _SENTENCE.split(" ".join(text.split()))
    if len(sentences) < 2:
        return " ".join(text.split())
    for _ in range(edits_for(budget, len(sentences))):
        i, j = _pick(len(sentences), 2, generator)
        sentences[i], sentences[j] = sentences[j], sentences[i]
    return " ".join(sentences)


def punctuation_edits(text: str, *, generator: torch.Generator, budget: float = 0.1) -> str:
    """Up to ``⌊budget · words⌋`` punctuation edits at random words (module doc)."""
    words = text.split()
    for i in _pick(len(words), edits_for(budget, len(words)), generator):
        w = words[i]
        if w[-1:] in ",;:" and len(w) > 1:
            words[i] = w[:-1]  # drop a comma, semicolon or colon
        elif w[-1:] == "." and i < len(words) - 1 and len(w) > 1:
            words[i] = w[:-1] + ";"
        elif w[-1:].isalnum() and i < len(words) - 1:
            words[i] = w + ","
    return " ".join(words)


#: The rewrites by name, each ``(text, *, generator, budget, neighbours) → text``.
REWRITES: dict[str, Callable[..., str]] = {
    "synonym": synonym_swap,
    "homoglyph": lambda text, *, generator, budget, neighbours=None: homoglyphs(text, generator=generator,
                                                                               budget=budget),
    "reorder": lambda text, *, generator, budget, neighbours=None: reorder_sentences(text, generator=generator,
                                                                                    budget=budget),
    "punctuation": lambda text, *, generator, budget, neighbours=None: punctuation_edits(text, generator=generator,
                                                                                        budget=budget),
}

__all__ = ["HOMOGLYPHS", "REWRITES", "edits_for", "homoglyphs", "punctuation_edits", "reorder_sentences",
           "synonym_swap"]
