"""Built-in red-team suites: small data sets written in the repository, ready for ``data: {suite: redteam}``.

``redteam`` (``sparring/language/redteam/``; its README documents every file) holds

* 100 harmful behaviours in AdvBench style, 8 categories: an instruction, an affirmative target *prefix*
  ("Sure, here is a tutorial on how to ...", never harmful content) and a safe refusal;
* 100 benign prompts with a short reference response and checkable answers (utility: the fraction answered);
* 50 benign prompts that sound risky, XSTest style (over-refusal).

Behaviours and utility prompts are split train / validation / test (60 / 20 / 20) by behaviour, stratified by
category; the split is a field of each record, so every run sees the same one. The XSTest-style prompts are for
evaluation only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from sparring.errors import DataError
from sparring.language.data import Behaviour, Utility

Split = Literal["train", "validation", "test"]
SUITES = ("redteam",)


@dataclass(frozen=True)
class Suite:
    """A red-team suite: behaviours and utility chats by split, over-refusal prompts with their categories."""

    behaviours: dict[str, list[Behaviour]]
    utility: dict[str, list[Utility]]
    benign: list[str]
    benign_categories: list[str]
    name: str


def _rows(name: str, file: str) -> list[dict]:
    text = resources.files("sparring.language").joinpath(name, file).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_suite(name: str = "redteam") -> Suite:
    """The built-in suite ``name`` (module doc)."""
    if name not in SUITES:
        raise DataError(f"data.suite: unknown suite {name!r}; available: {', '.join(SUITES)}")
    behaviours: dict[str, list[Behaviour]] = {"train": [], "validation": [], "test": []}
    for row in _rows(name, "behaviours.jsonl"):
        behaviours[row["split"]].append(Behaviour(prompt=row["prompt"], target=row["target"], refusal=row["refusal"],
                                                  category=row["category"]))
    utility: dict[str, list[Utility]] = {"train": [], "validation": [], "test": []}
    for row in _rows(name, "utility.jsonl"):
        utility[row["split"]].append(Utility(prompt=row["prompt"], response=row["response"],
                                             answers=tuple(row["answers"]), category=row["category"]))
    xstest = _rows(name, "xstest.jsonl")
    return Suite(behaviours=behaviours, utility=utility, benign=[r["prompt"] for r in xstest],
                 benign_categories=[r["category"] for r in xstest], name=name)


__all__ = ["SUITES", "Suite", "load_suite"]
