"""The ``language`` task's data: behaviours, utility chats, benign prompts and injection tasks read from the config's
files (or the built-in toy task), split into training and held-out parts, and :class:`LanguageEpochData`, the
epochs the core Trainer trains on (each behaviour with a fresh draw of utility chats per epoch)."""


from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from sparring.errors import ConfigError, DataError
from sparring.language.batch import ChatBatch, behaviour_batch
from sparring.language.data import Behaviour, InjectionTask, Utility, read_jsonl
from sparring.language.run_config import LanguageRunConfig
from sparring.language.toy import injection_words, toy_injection_tasks


@dataclasses.dataclass
class LanguageData:
    train: list[Behaviour]
    test: list[Behaviour]
    utility: list[Utility]
    utility_test: list[Utility]
    benign: list[str]
    injection: list[InjectionTask]
    injection_test: list[InjectionTask]
    words: list[str]  # the vocabulary of the tiny model's word tokenizer
    source: str


def _split(items: list[Any], fraction: float, seed: int, what: str) -> tuple[list[Any], list[Any]]:
    """(train, test): a seeded held-out ``fraction`` (at least one of each)."""
    if len(items) < 2:
        raise DataError(f"data.{what}: {len(items)} record(s), need at least 2 to hold some out for evaluation "
                        f"(or give data.test_{what})")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = min(len(items) - 1, max(1, round(fraction * len(items))))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [items[i] for i in train], [items[i] for i in test]


def read_prompts(path: str | Path) -> list[str]:
    """Benign prompts: a JSONL file (objects with a ``prompt`` string, or strings) or a text file, one a line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read benign prompts: {error}") from error
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON: {error.msg} (column {error.colno})") from error
            row = row.get("prompt") if isinstance(row, dict) else row
            if not isinstance(row, str):
                raise DataError(f"{path}:{number}: expected a string or an object with a 'prompt' string")
            prompts.append(row)
        else:
            prompts.append(line.strip())
    if not prompts:
        raise DataError(f"{path}: no benign prompts (the file is empty)")
    return prompts


def check_files(config: LanguageRunConfig) -> None:
    """Data fields consistent with each other and their files present: one ConfigError / DataError line."""
    data = config.data
    files = ("behaviours", "utility", "benign", "test_behaviours", "test_utility")
    built_in = "toy" if data.toy_sizes() is not None else "suite" if data.suite is not None else None
    if data.toy_sizes() is not None and data.suite is not None:
        raise ConfigError("data.suite: give toy or suite, not both")
    if built_in is not None:
        given = [name for name in ("behaviours", "utility", "test_behaviours", "test_utility")
                 if getattr(data, name) is not None]
        if given:
            raise ConfigError(f"data.{given[0]}: {built_in} brings its own behaviours and utility chats; drop "
                              f"data.{given[0]} or {built_in}")
    else:
        for name in ("behaviours", "utility"):
            if getattr(data, name) is None:
                kind = "prompt, target, refusal" if name == "behaviours" else "prompt, response"
                raise ConfigError(f"data.{name}: required (a JSONL file of {kind}), or use data.suite: redteam "
                                  "or data.toy: true")
    for name in files:
        value = getattr(data, name)
        if value is not None and not Path(value).is_file():
            raise DataError(f"data.{name}: no such file: {value}")
    if data.injection is not None and data.injection != "toy" and not Path(data.injection).is_file():
        raise DataError(f"data.injection: no such file: {data.injection} (or write injection: toy)")
    if config.model.adapter is not None:
        from sparring.language.pretrained import adapter_folder

        adapter_folder(config.model.adapter)
    if config.model.path is not None and not Path(config.model.path).is_dir():
        raise DataError(f"model.path: no such folder: {config.model.path} (a local Hugging Face causal-LM folder)")


def load_language_data(config: LanguageRunConfig, *, injection: bool) -> LanguageData:
    data, seed = config.data, config.seed
    toy = data.toy_sizes()
    words: list[str] = []
    if toy is not None:
        from sparring.language.toy import safety_task

        task = safety_task(seed=seed, train=toy.train, test=toy.test, utility=toy.utility,
                           utility_test=toy.utility_test, benign=toy.benign)
        train, test, utility, utility_test = task.train, task.test, task.utility, task.utility_test
        benign = list(task.benign)
        words += task.words
        source = "toy safety task"
    elif data.suite is not None:
        from sparring.language.suites import load_suite

        suite = load_suite(data.suite)
        train, test = suite.behaviours["train"], suite.behaviours[data.split]
        utility, utility_test = suite.utility["train"], suite.utility[data.split]
        benign = list(suite.benign)
        source = f"the built-in {data.suite} suite ({data.split} split)"
    else:
        assert data.behaviours is not None and data.utility is not None
        behaviours = read_jsonl(data.behaviours, "behaviour")
        chats = read_jsonl(data.utility, "utility")
        if data.test_behaviours is not None:
            train, test = behaviours, read_jsonl(data.test_behaviours, "behaviour")
        else:
            train, test = _split(behaviours, data.test_fraction, seed, "behaviours")
        if data.test_utility is not None:
            utility, utility_test = chats, read_jsonl(data.test_utility, "utility")
        else:
            utility, utility_test = _split(chats, data.test_fraction, seed + 1, "utility")
        benign = []
        source = str(data.behaviours)
    if data.benign is not None:
        benign = read_prompts(data.benign)
    tasks: list[InjectionTask] = []
    tasks_test: list[InjectionTask] = []
    if data.injection is not None:
        if data.injection == "toy":
            all_tasks = toy_injection_tasks(max(8, 2 * len(train)), seed=seed)
            words += injection_words()
        else:
            all_tasks = read_jsonl(data.injection, "injection")
        tasks, tasks_test = _split(all_tasks, data.test_fraction, seed + 2, "injection")
    elif injection:
        raise ConfigError("data.injection: localalign trains on prompt-injection tasks; give a JSONL file "
                          "(instruction, data, answer, injection) or injection: toy")
    if data.max_train is not None:
        train = train[: data.max_train]
    texts = [t for b in (*train, *test) for t in (b.prompt, b.target, b.refusal)]
    texts += [t for u in (*utility, *utility_test) for t in (u.prompt, u.response)] + benign
    texts += [t for x in (*tasks, *tasks_test) for t in (x.instruction, x.data, x.answer, x.injection or "")]
    words = list(dict.fromkeys([*words, *(w for text in texts for w in text.split())]))
    return LanguageData(train=list(train), test=list(test), utility=list(utility), utility_test=list(utility_test),
                        benign=benign, injection=tasks, injection_test=tasks_test, words=words, source=source)


class LanguageEpochData:
    """The training rows of a language run for the core Trainer (:class:`~sparring.data.epochs.EpochData`).

    Rows are the training behaviours (or, for LocalAlign, the prompt-injection tasks). ``batch(indices)`` is a
    :class:`~sparring.language.batch.ChatBatch` of those behaviours (continuations ``target`` and ``refusal``)
    with ``utility_ratio`` utility chats per behaviour in its ``utility`` part, as
    :class:`~sparring.integrations.hf_trainer.ChatCollator` builds from a
    :class:`~sparring.integrations.hf_trainer.BehaviourDataset` (CAT's 12.5% / 87.5% mix at the default 7): row i
    takes chats i·k … i·k + k − 1 of a permutation of the utility chats, wrapping around. The permutation is new
    every epoch, drawn from ``(seed, epoch)`` only, so a resumed run sees the chats the uninterrupted one saw.
    Injection tasks become :func:`~sparring.language.localalign.injection_batch` batches (``chosen`` and
    ``rejected_j``; near-target edits drawn from ``(seed, epoch, first row)``); no utility chats travel with them.
    ``y`` is None: the objectives read the batch only.
    """

    shuffle = True

    def __init__(self, tokenizer: Any, rows: Sequence[Behaviour] | Sequence[InjectionTask],
                 utility: Sequence[Utility] = (), *, utility_ratio: int = 7, max_length: int | None = 256,
                 seed: int = 0, rejected: int = 3) -> None:
        if not rows:
            raise DataError("a language run needs at least one training row")
        if utility_ratio < 0:
            raise ConfigError(f"train.utility_ratio must be >= 0, got {utility_ratio}")
        self.tokenizer, self.rows, self.utility = tokenizer, list(rows), list(utility)
        self.injection = isinstance(self.rows[0], InjectionTask)
        self.k = utility_ratio if self.utility and not self.injection else 0
        self.max_length, self.seed, self.rejected = max_length, seed, rejected
        self.epoch = 0
        self._order: list[int] = []
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        order = list(range(len(self.utility)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        self._order = order

    def chats(self, index: int) -> list[Utility]:
        """The utility chats row ``index`` carries this epoch."""
        n = len(self._order)
        return [self.utility[self._order[(index * self.k + j) % n]] for j in range(self.k)]

    def batch(self, indices: Sequence[int]) -> tuple[ChatBatch, Tensor | None]:
        indices = [int(i) for i in indices]
        if self.injection:
            from sparring.language.localalign import injection_batch

            seed = (self.seed * 100_003 + self.epoch) * 1_000_003 + indices[0]
            return injection_batch(self.tokenizer, [self.rows[i] for i in indices], rejected=self.rejected,
                                   seed=seed, max_length=self.max_length), None
        utility = [u for i in indices for u in self.chats(i)]
        return behaviour_batch(self.tokenizer, [self.rows[i] for i in indices], max_length=self.max_length,
                               utility=utility), None

    def class_counts(self) -> list[int]:
        return [len(self.rows)]

    def tensors(self) -> None:
        return None


__all__ = ["LanguageData", "LanguageEpochData", "check_files", "load_language_data", "read_prompts"]
