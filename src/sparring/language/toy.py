"""Small text sets built in code, for tests, examples and benchmarks (no downloads).

* :func:`topic_texts`: English-like documents about one of four topics (sports, science, food, music),
  five short sentences each; 60% of the sentences follow the document's topic and the rest another one,
  so a classifier has to weigh the evidence. Labels are topic indices.
* :func:`topic_prompts`: token-id sequences for a causal LM: a prompt of ``prompt_len`` tokens drawn mostly
  from one of ``topics`` topic vocabularies, then the topic's fixed response of ``target_len`` tokens. A
  model that learns the task must read the prompt to produce the response, so perturbing the prompt's
  embeddings can raise the response's NLL (the target loss of embedding-space attacks).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from sparring.errors import ConfigError

#: The chat template of :func:`word_tokenizer`: ``<s> <|user|> {prompt} <|assistant|> {response}``.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
SPECIAL = ("[PAD]", "[UNK]", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")

TOPICS: dict[str, tuple[str, ...]] = {
    "food": ("recipe", "kitchen", "bread", "cheese", "soup", "flavor", "chef", "restaurant", "dessert", "spice",
             "garlic", "pasta", "bakery", "sauce", "tomato"),
    "music": ("guitar", "concert", "song", "melody", "band", "album", "piano", "rhythm", "singer", "orchestra",
              "lyrics", "drummer", "festival", "chorus", "violin"),
    "science": ("experiment", "laboratory", "molecule", "physics", "theory", "research", "scientist", "data",
                "cell", "quantum", "chemistry", "telescope", "hypothesis", "enzyme", "genome"),
    "sports": ("football", "match", "goal", "team", "coach", "league", "stadium", "player", "score", "tennis",
               "season", "referee", "championship", "athlete", "tournament"),
}
_FILLER = ("the", "a", "this", "that", "and", "with", "about", "from", "people", "today", "yesterday", "really",
           "very", "new", "old", "many", "some", "was", "is", "were", "had", "great", "long", "story", "week",
           "city", "friends", "everyone", "talked", "again")


def topic_texts(n: int, *, seed: int = 0, topics: int = 4, on_topic: float = 0.6) -> tuple[list[str], list[int]]:
    """``n`` documents and their topic labels (``topics`` of the four, sorted by name)."""
    if not 2 <= topics <= len(TOPICS):
        raise ConfigError(f"topics must be in [2, {len(TOPICS)}], got {topics}")
    rng = random.Random(seed)
    names = sorted(TOPICS)[:topics]
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(topics)
        sentences = []
        for _ in range(5):
            topic = names[label] if rng.random() < on_topic else rng.choice(names)
            words = rng.choices(_FILLER, k=rng.randint(6, 10)) + rng.choices(TOPICS[topic], k=rng.randint(1, 2))
            rng.shuffle(words)
            sentences.append(" ".join(words) + ".")
        texts.append(" ".join(sentences))
        labels.append(label)
    return texts, labels


def topic_prompts(
    n: int, *, vocab: int, seed: int = 0, topics: int = 8, prompt_len: int = 56, target_len: int = 8,
    topic_words: int = 50, on_topic: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """(input_ids (n, prompt_len + target_len), topic (n,)): prompts about a topic, then its response.

    Token ids avoid 0–9 (left for special tokens). Each topic owns ``topic_words`` ids; a prompt token is
    from its topic with probability ``on_topic``, else from a shared filler range. The response is a
    fixed random sequence per topic."""
    if vocab < 10 + topics * topic_words + 100 + topics * target_len:
        raise ConfigError(f"vocab {vocab} is too small for {topics} topics of {topic_words} words")
    g = torch.Generator().manual_seed(seed)
    structure = torch.Generator().manual_seed(1234)  # the task (topic vocabularies, responses) is seed-free
    ids = torch.randperm(vocab - 10, generator=structure)[: topics * (topic_words + target_len) + 1000] + 10
    words = ids[: topics * topic_words].view(topics, topic_words)
    responses = ids[topics * topic_words: topics * (topic_words + target_len)].view(topics, target_len)
    filler = ids[topics * (topic_words + target_len):]
    topic = torch.randint(topics, (n,), generator=g)
    from_topic = torch.rand(n, prompt_len, generator=g) < on_topic
    topic_tok = words[topic[:, None], torch.randint(topic_words, (n, prompt_len), generator=g)]
    filler_tok = filler[torch.randint(len(filler), (n, prompt_len), generator=g)]
    prompt = torch.where(from_topic, topic_tok, filler_tok)
    return torch.cat([prompt, responses[topic]], 1), topic


def word_tokenizer(words: Iterable[str], *, chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A Hugging Face fast tokenizer splitting on whitespace, over :data:`SPECIAL` + ``words`` (in that order,
    duplicates dropped), with pad ``[PAD]`` (id 0), BOS ``<s>``, EOS ``</s>`` and :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*SPECIAL, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(SPECIAL[2:]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>",
                                   eos_token="</s>", chat_template=chat_template)
