"""Hugging Face transformers as ``model(x) → logits`` in embedding space, so every core attack applies.

Language-model attacks perturb the input token embeddings (``inputs_embeds``), not the discrete tokens.
The wrappers here take x (B, T, D) token embeddings and return what the core's losses expect:

* :class:`TextClassifier`: logits (B, K) of an encoder (BERT, MiniLM, ...) with mean or first-token
  pooling and a linear head, or of any ``AutoModelForSequenceClassification`` (``head=None``).
* :class:`CausalLMTarget`: logits (B, k, V) of a causal LM at the k positions that predict the last k
  tokens of each sequence (the target continuation), computed with ``logits_to_keep`` so the output
  layer runs on k + 1 positions instead of T; cross-entropy on them is the target NLL per example.

Padding convention: an all-zero embedding row is padding (:meth:`EmbeddingSpace.embed` writes zeros there).
The attention mask is derived from x at every call, so it stays aligned with x when attacks keep only some
rows of a batch, and :class:`~sparring.threat.TokenBall` never moves those rows. Pad causal LMs on the left
(the target is the last k tokens).

Budgets are per token and usually quoted relative to :func:`embedding_scale`, the mean L2 norm of the
rows of the input-embedding matrix (CAT's convention)::

    net = CausalLMTarget(model=load_pretrained(AutoModelForCausalLM, path), keep=8)  # safetensors only
    x = net.embed(input_ids)
    threat = TokenL2Ball(eps=0.05 * embedding_scale(net), mask=prompt_positions)
    FGSM()(net, x, input_ids[:, -8:], threat)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError, DataError


def padding_free(x: Tensor) -> Tensor:
    """(B, T) long attention mask: 1 where the embedding row is not all zeros."""
    return (x != 0).any(-1).long()


class EmbeddingSpace(nn.Module):
    """Base: holds the Hugging Face model and turns token ids into the embeddings an attack perturbs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "get_input_embeddings"):
            raise ConfigError(f"{type(model).__name__} has no get_input_embeddings(): pass a Hugging Face model")
        self.model = model

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T, D) input embeddings of ``input_ids`` with padding rows (``attention_mask == 0``) zeroed."""
        if input_ids.dim() != 2:
            raise DataError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
        with torch.no_grad():
            x = self.model.get_input_embeddings()(input_ids)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return x.detach()

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3:
            raise DataError(f"expected token embeddings (B, T, D), got shape {tuple(x.shape)}")


def embedding_scale(net: nn.Module) -> float:
    """Mean L2 norm of the input-embedding rows: the unit in which per-token budgets are quoted."""
    model = net.model if isinstance(net, EmbeddingSpace) else net
    weight = model.get_input_embeddings().weight  # type: ignore[operator]
    return float(weight.detach().float().norm(dim=1).mean())


class TextClassifier(EmbeddingSpace):
    """Logits (B, K) of a text classifier on token embeddings x (B, T, D).

    Args:
        model: a Hugging Face encoder (``last_hidden_state``) with ``head`` set, or a sequence-classification
            model (its ``logits``) with ``head=None``.
        head: a module mapping the pooled (B, H) state to (B, K) logits.
        pooling: ``"mean"`` over non-padding tokens (sentence-transformers' choice) or ``"first"`` ([CLS]).
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None, *, pooling: str = "mean") -> None:
        super().__init__(model)
        if pooling not in ("mean", "first"):
            raise ConfigError(f"pooling must be 'mean' or 'first', got {pooling!r}")
        self.head, self.pooling = head, pooling

    def pooled(self, x: Tensor) -> Tensor:
        """(B, H) pooled final hidden state of the encoder."""
        self._check(x)
        mask = padding_free(x)
        states = self.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        if self.pooling == "first":
            return states[:, 0]
        weights = mask[..., None].to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.head is None:
            self._check(x)
            return self.model(inputs_embeds=x, attention_mask=padding_free(x)).logits
        return self.head(self.pooled(x))


class CausalLMTarget(EmbeddingSpace):
    """Logits (B, k, V) predicting the last ``keep`` tokens of each sequence, from embeddings x (B, T, D).

    Position t's logits predict token t + 1, so the k target tokens x[:, T−k:] are predicted by positions
    T−k−1 … T−2: the model is asked for the last k + 1 positions (``logits_to_keep``) and the final one is
    dropped. ``cross_entropy(net(x), input_ids[:, -k:])`` is then the target NLL per example.
    """

    def __init__(self, model: nn.Module, *, keep: int) -> None:
        super().__init__(model)
        if keep < 1:
            raise ConfigError(f"keep must be >= 1, got {keep}")
        self.keep = keep

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if x.shape[1] <= self.keep:
            raise DataError(f"sequences of {x.shape[1]} tokens cannot hold a prompt and {self.keep} target tokens")
        out = self.model(inputs_embeds=x, attention_mask=padding_free(x), logits_to_keep=self.keep + 1)
        return out.logits[:, :-1]

    def prompt_mask(self, x: Tensor) -> Tensor:
        """(B, T) bool: the positions before the target (what an instruction-space attack may move)."""
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask[:, -self.keep:] = False
        return mask
