"""GCG: greedy coordinate gradient search for an adversarial suffix (Zou et al. 2023, "Universal and
Transferable Adversarial Attacks on Aligned Language Models").

The attacker appends L suffix tokens s = (s_1 … s_L) to the user prompt and minimizes the target NLL

    L(s) = −(1/K) Σ_k log p(y_k | prompt ⊕ s, y_<k)        (y: the ``toward`` continuation, K tokens)

over discrete tokens. Each step:

1. **Gradient.** With e_i the one-hot vector of s_i, ∇_{e_i} L = ∇_{x_i} L · Eᵀ (x_i = e_i E the suffix
   embeddings, E the (V, D) embedding matrix): one forward and backward pass gives a linearized loss change for
   every (position, token) swap.
2. **Candidates.** The ``top_k`` tokens with the most negative gradient at each position; ``candidates`` single-
   token swaps are sampled (position uniform, token uniform among that position's top-k).
3. **Evaluation.** Every candidate's exact L(s') in batched forward passes (``chunk`` sequences each), and s
   moves to the best candidate, even when it is worse than s (GCG does this); the best suffix ever seen is what
   is returned.

Paper defaults: L = 20 tokens initialized to "! ! … !", 500 steps, top-k 256, 512 candidates per step. The defaults
here (L = 8, 20 steps, top-k 32, 64 candidates) are a CPU-sized search; raise them for a real evaluation.

Every example searches independently, vectorized over the batch: each row has its own random stream (a seed drawn
from the caller's generator, in row order), so a row's result does not depend on its batch mates. The search
works on token ids only: the suffix is spliced into the prompt's ids after its last user-prompt token (before the
template's closing tokens), with no decode/retokenize round trip. GCG's filter that drops candidates whose
decoded text retokenizes differently is therefore not needed here, but the suffix found may not survive a
round trip through text; also unlike GCG, non-ASCII tokens are not excluded (pass ``allowed`` to do so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from sparring.context import frozen_model
from sparring.errors import ConfigError, DataError
from sparring.language.batch import ChatBatch, Continuation
from sparring.language.view import continuation_logits
from sparring.losses import IGNORE, cross_entropy


@dataclass(frozen=True)
class SuffixResult:
    """The search's outcome for B prompts.

    Attributes:
        batch: the input batch with the best suffix inserted (prompt width P + L; the suffix counts as prompt tokens
            in ``prompt_mask``).
        suffix_ids: (B, L) the best suffix found.
        loss: (B,) its target NLL (mean over the target tokens).
        success: (B,) bool, greedy decoding reproduces the target tokens under it.
        initial_loss: (B,) the target NLL under the initial suffix.
    """

    batch: ChatBatch
    suffix_ids: Tensor
    loss: Tensor
    success: Tensor
    initial_loss: Tensor


@dataclass(kw_only=True)
class SuffixSearch:
    """GCG suffix search (module doc).

    Attributes:
        length: L, suffix tokens (GCG: 20).
        steps: coordinate steps (GCG: 500).
        top_k: candidate tokens per position (GCG: 256).
        candidates: single-token swaps evaluated per step and example (GCG: 512).
        init_token_id: the token the suffix starts as; default the id of ``"!"`` if the tokenizer has it, else
            the first allowed id.
        allowed: token ids the suffix may use; default every id of the tokenizer (given to ``__call__``) except
            its special tokens, or every row of the embedding matrix without a tokenizer.
        toward: the continuation to make likely (the behaviour's harmful ``target``).
        chunk: sequences per forward pass when evaluating candidates (bounds memory).
        early_stop: a row stops searching once its best suffix makes greedy decoding produce the target.
    """

    length: int = 8
    steps: int = 20
    top_k: int = 32
    candidates: int = 64
    init_token_id: int | None = None
    allowed: Sequence[int] | Tensor | None = None
    toward: str = "target"
    chunk: int = 256
    early_stop: bool = False

    def __post_init__(self) -> None:
        for name in ("length", "top_k", "candidates", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SuffixSearch.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ConfigError(f"SuffixSearch.steps must be >= 0, got {self.steps}")
        if self.allowed is not None and len(self.allowed) == 0:
            raise ConfigError("SuffixSearch.allowed is empty; give at least one token id")

    # -- settings resolved against a model and tokenizer ------------------------------------------------------

    def allowed_ids(self, vocab: int, tokenizer: Any = None) -> Tensor:
        """(n,) long: the token ids the suffix may use, among the embedding matrix's ``vocab`` rows."""
        if self.allowed is not None:
            ids = torch.as_tensor(self.allowed, dtype=torch.long).flatten().unique()
        elif tokenizer is not None:
            ids = torch.arange(min(len(tokenizer), vocab))
            special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
            ids = ids[~torch.isin(ids, special)]
        else:
            ids = torch.arange(vocab)
        if len(ids) == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ConfigError(f"allowed suffix tokens must be non-empty ids in [0, {vocab})")
        return ids

    def initial_id(self, allowed: Tensor, tokenizer: Any = None) -> int:
        if self.init_token_id is not None:
            return self.init_token_id
        if tokenizer is not None and "!" in tokenizer.get_vocab():
            return int(tokenizer.convert_tokens_to_ids("!"))
        return int(allowed[0])

    # -- the search --------------------------------------------------------------------------------------------

    def __call__(self, model: nn.Module, batch: ChatBatch, *, tokenizer: Any = None,
                 generator: torch.Generator | None = None) -> SuffixResult:
        """Search a suffix for every row of ``batch`` (toward its ``toward`` continuation); module doc.

        ``tokenizer`` supplies the default allowed ids and initial token; ``generator`` (default: seeded with 0)
        the per-row random streams. The model is left as it was (:func:`~sparring.context.frozen_model`).
        """
        if len(batch) == 0:
            raise DataError("SuffixSearch needs a non-empty batch")
        cont = batch.continuation(self.toward)
        with frozen_model(model):
            weight = model.get_input_embeddings().weight  # (V, D)
            vocab, device = weight.shape[0], batch.device
            allowed = self.allowed_ids(vocab, tokenizer).to(device)
            init = self.initial_id(allowed, tokenizer)
            if not 0 <= init < vocab:
                raise ConfigError(f"init_token_id {init} is not a token id in [0, {vocab})")
            blocked = torch.ones(vocab, dtype=torch.bool, device=device)
            blocked[allowed] = False
            top_k = min(self.top_k, len(allowed))
            b, n_cand = len(batch), self.candidates

            base, pos = insert_suffix(batch, torch.full((b, self.length), init, dtype=torch.long, device=device))
            generator = generator if generator is not None else torch.Generator().manual_seed(0)
            seeds = torch.randint(2**62, (b,), generator=generator, device=generator.device).tolist()
            streams = [torch.Generator().manual_seed(int(s)) for s in seeds]  # one per row: batch independence

            suffix = base.prompt_ids.gather(1, pos)  # (B, L)
            with torch.no_grad():
                loss, hit = self._evaluate(model, base, cont, pos, suffix, torch.arange(b, device=device))
            initial_loss, best_loss, best, best_hit = loss, loss.clone(), suffix.clone(), hit
            for _ in range(self.steps):
                if self.early_stop and bool(best_hit.all()):
                    break
                grad = self._token_gradient(model, base, cont, pos, suffix, weight)  # (B, L, V)
                grad = grad.masked_fill(blocked, float("inf"))
                top = (-grad).topk(top_k, dim=-1).indices  # (B, L, k)
                where, which = self._sample(streams, n_cand, top_k, device)  # (B, C) each
                rows = torch.arange(b, device=device)[:, None]
                tokens = top[rows, where, which]  # (B, C)
                cands = suffix[:, None, :].repeat(1, n_cand, 1).scatter(2, where[..., None], tokens[..., None])
                with torch.no_grad():
                    owner = torch.arange(b, device=device).repeat_interleave(n_cand)
                    losses, hits = self._evaluate(model, base, cont, pos, cands.flatten(0, 1), owner)
                losses, hits = losses.view(b, n_cand), hits.view(b, n_cand)
                pick = losses.argmin(1)  # GCG moves to the best candidate of the step
                step_loss, step_hit = losses[rows[:, 0], pick], hits[rows[:, 0], pick]
                step_suffix = cands[rows[:, 0], pick]
                active = ~best_hit if self.early_stop else torch.ones_like(best_hit)
                suffix = torch.where(active[:, None], step_suffix, suffix)
                better = active & (step_loss < best_loss)
                best = torch.where(better[:, None], step_suffix, best)
                best_loss = torch.where(better, step_loss, best_loss)
                best_hit = torch.where(better, step_hit, best_hit)
            final, _ = insert_suffix(batch, best)
        return SuffixResult(batch=final, suffix_ids=best, loss=best_loss, success=best_hit, initial_loss=initial_loss)

    def _sample(self, streams: list[torch.Generator], n: int, top_k: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
        """(B, n) positions and (B, n) top-k ranks of the candidate swaps, row b from its own stream."""
        where = torch.stack([torch.randint(self.length, (n,), generator=g) for g in streams])
        which = torch.stack([torch.randint(top_k, (n,), generator=g) for g in streams])
        return where.to(device), which.to(device)

    def _token_gradient(self, model: nn.Module, base: ChatBatch, cont: Continuation, pos: Tensor, suffix: Tensor,
                        weight: Tensor) -> Tensor:
        """(B, L, V) ∂L/∂e: the target NLL's gradient w.r.t. the suffix's one-hot encoding, ∇ₓL · Eᵀ."""
        embed = model.get_input_embeddings()
        with torch.no_grad():
            embeds = embed(base.prompt_ids)  # (B, P+L, D)
        x = embed(suffix).detach().requires_grad_(True)  # (B, L, D) = one_hot(s) @ E
        with torch.enable_grad():
            full = embeds.scatter(1, pos[..., None].expand(-1, -1, embeds.shape[-1]), x)
            loss = cross_entropy(continuation_logits(model, base, cont, prompt_embeds=full), cont.labels)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return grad.float() @ weight.float().T

    def _evaluate(self, model: nn.Module, base: ChatBatch, cont: Continuation, pos: Tensor, suffixes: Tensor,
                  owner: Tensor) -> tuple[Tensor, Tensor]:
        """Target NLL (N,) and greedy success (N,) of N suffixes, suffix i placed in row ``owner[i]`` of ``base``;
        ``chunk`` sequences per forward pass."""
        losses, hits = [], []
        for start in range(0, len(suffixes), self.chunk):
            rows, part = owner[start:start + self.chunk], suffixes[start:start + self.chunk]
            ids = base.prompt_ids[rows].scatter(1, pos[rows], part)
            sub = ChatBatch(prompt_ids=ids, prompt_attention=base.prompt_attention[rows],
                            prompt_mask=base.prompt_mask[rows])
            c = Continuation(ids=cont.ids[rows], attention=cont.attention[rows])
            logits = continuation_logits(model, sub, c)  # (n, K, V)
            labels = c.labels
            losses.append(cross_entropy(logits, labels))
            hits.append(((logits.argmax(-1) == labels) | (labels == IGNORE)).all(1))
        return torch.cat(losses), torch.cat(hits)


def insert_suffix(batch: ChatBatch, suffix: Tensor) -> tuple[ChatBatch, Tensor]:
    """``batch`` with ``suffix`` (B, L) spliced into each prompt after its last ``prompt_mask`` token, and the
    (B, L) columns where it sits. The prompt block grows to P + L columns and stays aligned at its end (each row
    shifts its tokens up to the splice point L columns left, into its padding); the suffix counts as prompt."""
    b, width = batch.prompt_ids.shape
    length = suffix.shape[1]
    if suffix.shape[0] != b:
        raise DataError(f"{suffix.shape[0]} suffixes for a batch of {b}")
    has_prompt = batch.prompt_mask.any(1)
    if not bool(has_prompt.all()):
        raise DataError("a row of the batch has no user-prompt tokens to append a suffix to")
    last = width - 1 - batch.prompt_mask.flip(1).int().argmax(1)  # (B,) column of the last prompt token
    cols = torch.arange(width + length, device=batch.device)[None]  # (1, P+L)
    offset = cols - (last[:, None] + 1)
    in_suffix = (offset >= 0) & (offset < length)  # (B, P+L)
    source = torch.where(cols <= last[:, None], cols, cols - length).clamp(0, width - 1)
    ids = batch.prompt_ids.gather(1, source).masked_scatter(in_suffix, suffix.to(batch.prompt_ids.dtype))
    attention = batch.prompt_attention.gather(1, source).masked_fill(in_suffix, 1)
    mask = batch.prompt_mask.gather(1, source) | in_suffix
    pos = last[:, None] + 1 + torch.arange(length, device=batch.device)[None]
    return replace(batch, prompt_ids=ids, prompt_attention=attention, prompt_mask=mask), pos


__all__ = ["SuffixResult", "SuffixSearch", "insert_suffix"]
