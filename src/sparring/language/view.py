"""A causal LM seen as ``model(x) → logits`` of continuations, with x the prompt's representation at chosen layers.

:class:`PromptView` is how the core's attacks, threat models and gradient sources reach a language model. Its
input x is the prompt block of a :class:`~sparring.language.batch.ChatBatch` at one or more *layers*:

* ``"embedding"``: the input token embeddings (B, P, D), the space of CAT's embedding attack;
* an int ℓ: the residual stream after decoder layer ℓ (B, P, D), the space of latent adversarial training;
  a float f in [0, 1) names layer ⌊f·n⌋ of the model's n, so a setting carries across depths.

With L layers, x stacks them along the token axis: (B, L·P, D), layer after layer, so a per-token ball
(:class:`~sparring.threat.TokenL2Ball`) bounds each layer's perturbation of each token separately (LAT's
per-layer, per-token L2 budget). The perturbation is **additive**: ``forward(x)`` adds δ_ℓ = (x_ℓ − x⁰_ℓ)·s
to layer ℓ's output at the prompt positions with a forward hook, so a perturbation at a low layer still
propagates to the higher ones. x⁰ (:meth:`PromptView.reference`) is the clean representation divided by
the scale s, so budgets are relative: s is the mean embedding-row norm for ``"embedding"`` (CAT's unit,
:func:`~sparring.language.embedding_scale`) and, for a hidden layer, the sample's own mean token norm there
(``relative=False``: s = 1, LAT's absolute ε = 6 on Llama-3-8B).

``forward(x)`` returns the logits (B, K₁+…+K_c, V) predicting each named continuation in turn, and
:attr:`PromptView.labels` the matching (B, K₁+…) references with padding ignored, so
``cross_entropy(view(x), view.labels)`` is each example's mean NLL over all its continuation tokens and
:meth:`PromptView.split` cuts logits back into per-continuation pieces. The embeddings are recomputed from the
token ids in every call, so the same view trains the model (gradients reach the embedding matrix) when the
parameters require gradients.

Gradient prediction: the view calls its submodule ``prompt_states`` (an identity) on the first decoder block's
output at the prompt positions (B, P, D), token-aligned with an embedding-layer x, so a per-token
:class:`~sparring.gradients.GradientPredictor` with ``layer="prompt_states"`` can be calibrated on the view and
every attack can run on :class:`~sparring.gradients.Predicted` gradients (single-layer embedding views).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.language.batch import ChatBatch, Continuation
from sparring.language.embedding import embedding_scale

Layer = str | int | float


def _resolve(layer: Layer, blocks: nn.ModuleList | None) -> Layer:
    """A float f in (0, 1) names decoder layer ⌊f·n⌋ (LAT's layers 8, 16, 24 of 32 are 0.25, 0.5, 0.75)."""
    if isinstance(layer, float) and blocks is not None:
        if not 0 <= layer < 1:
            raise ConfigError(f"a fractional layer must be in [0, 1), got {layer}")
        return int(layer * len(blocks))
    return layer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (also under a peft wrapper): the first ModuleList named
    ``layers`` (``model.model.layers`` for Llama, Qwen, Mistral, Gemma)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h"):
            return module
    raise ConfigError(f"{type(model).__name__} has no decoder-layer list (a ModuleList named 'layers' or 'h')")


def continuation_logits(model: nn.Module, batch: ChatBatch, cont: Continuation, *,
                        prompt_embeds: Tensor | None = None) -> Tensor:
    """(B, K, V) logits predicting ``cont`` after the batch's prompts: one forward pass that keeps only the K + 1
    last positions (position P−1+k predicts continuation token k).

    The model reads token ids (its own embedding lookup runs inside its forward, so sharded embeddings, FSDP or
    ZeRO-3, work); ``prompt_embeds`` (B, P, D) replaces the prompt's embeddings instead (GCG's one-hot gradient).
    """
    ids = torch.cat([batch.prompt_ids, cont.ids], 1)
    attention = torch.cat([batch.prompt_attention, cont.attention], 1)
    positions = (attention.cumsum(1) - 1).clamp_min(0)
    k = cont.ids.shape[1]
    if prompt_embeds is None:
        inputs: dict[str, Tensor] = {"input_ids": ids}
    else:
        tail = model.get_input_embeddings()(cont.ids).to(prompt_embeds.dtype)
        inputs = {"inputs_embeds": torch.cat([prompt_embeds, tail], 1)}
    out = model(**inputs, attention_mask=attention, position_ids=positions, logits_to_keep=k + 1)
    return out.logits[:, :-1]


def _cache_of(out: Any) -> dict[str, Any]:
    """The key/value cache of a forward's output, as the keyword the next forward takes: ``cache`` (transformers
    5.x) or ``past_key_values`` (4.x)."""
    cache = getattr(out, "cache", None)
    return {"cache": cache} if cache is not None else {"past_key_values": out.past_key_values}


class PromptView(nn.Module):
    """``model(x) → logits`` of the batch's ``continuations`` given the prompt representation x (module doc).

    Args:
        model: a Hugging Face causal LM (``inputs_embeds``, ``logits_to_keep``), peft-wrapped or not.
        batch: the prompts and continuations.
        continuations: names of the continuations whose logits ``forward`` returns, in order.
        layers: ``"embedding"`` and/or decoder-layer indices, each perturbed at the prompt positions.
        relative: budgets in units of the scale s (see the module doc); else absolute.
    """

    def __init__(self, model: nn.Module, batch: ChatBatch, continuations: Sequence[str], *,
                 layers: Sequence[Layer] = ("embedding",), relative: bool = True) -> None:
        super().__init__()
        if not continuations:
            raise ConfigError("a prompt view needs at least one continuation")
        if not layers or len(set(layers)) != len(layers):
            raise ConfigError(f"layers must be a non-empty list without repeats, got {list(layers)}")
        try:
            blocks: nn.ModuleList | None = decoder_layers(model)
        except ConfigError:  # no decoder-layer list: the embedding layer only, and no prompt_states tap
            blocks = None
        layers = list(dict.fromkeys(_resolve(layer, blocks) for layer in layers))  # fractions may meet on shallow nets
        for layer in layers:
            if layer != "embedding" and not (isinstance(layer, int) and blocks is not None
                                             and -len(blocks) <= layer < len(blocks)):
                raise ConfigError(f"layer {layer!r} is neither 'embedding' nor a decoder-layer index "
                                  f"(the model has {0 if blocks is None else len(blocks)})")
        self.model, self.batch = model, batch
        self.prompt_states = nn.Identity()  # the first block's output at the prompt positions (module doc)
        self.names = list(continuations)
        self.conts = [batch.continuation(name) for name in self.names]
        self.layers = list(layers)
        self._blocks = blocks
        self._relative = relative
        self._clean_state: tuple[Tensor, Tensor] | None = None  # (x⁰, s), computed on first use

    @property
    def width(self) -> int:
        """P, the prompt block's length."""
        return int(self.batch.prompt_ids.shape[1])

    @property
    def labels(self) -> Tensor:
        """(B, K₁+…+K_c) the continuations' token ids, padding set to IGNORE."""
        return torch.cat([c.labels for c in self.conts], 1)

    def reference(self) -> Tensor:
        """The clean x⁰ (B, L·P, D), detached: attack around it."""
        return self._state()[0]

    @property
    def scale(self) -> Tensor:
        """(B, L·P, 1) the unit s of x at each layer (module doc)."""
        return self._state()[1]

    def _state(self) -> tuple[Tensor, Tensor]:
        """(x⁰, s), from one clean pass the first time they are needed (a view only read clean never runs it)."""
        if self._clean_state is None:
            self._clean_state = self._clean(self._relative)
        return self._clean_state

    def clean_logits(self) -> Tensor:
        """``forward(reference())`` without the reference: the continuations' logits at the clean prompts, in one
        pass each (supervised and utility losses; gradients reach the parameters when they require them)."""
        return torch.cat([continuation_logits(self.model, self.batch, c) for c in self.conts], 1)

    def mask(self) -> Tensor:
        """(B, L·P) bool: the positions a per-token threat may move (the user prompt's tokens at every layer)."""
        return self.batch.prompt_mask.repeat(1, len(self.layers))

    def over(self, continuations: Sequence[str]) -> PromptView:
        """The same view (same x⁰ and scale, so the same x) returning other continuations' logits."""
        return self._with([self.batch.continuation(name) for name in continuations], list(continuations))

    def delta(self, x: Tensor) -> Tensor:
        """(B, L·P, D) the absolute perturbation (x − x⁰)·s that ``forward(x)`` adds."""
        reference, scale = self._state()
        return (x - reference) * scale

    def at(self, delta: Tensor) -> Tensor:
        """The x whose :meth:`delta` is ``delta``: moves another view's perturbation into this one."""
        reference, scale = self._state()
        return reference + delta / scale

    def split(self, logits_or_labels: Tensor) -> dict[str, Tensor]:
        """Cut (B, K₁+…, …) along dim 1 into the continuations' pieces, by name."""
        sizes = [c.ids.shape[1] for c in self.conts]
        return dict(zip(self.names, logits_or_labels.split(sizes, dim=1), strict=True))

    def forward(self, x: Tensor) -> Tensor:
        deltas = dict(zip(self.layers, self.delta(x).split(self.width, dim=1), strict=True))  # layer → (B, P, D)
        with self._adding(deltas):
            return torch.cat([continuation_logits(self.model, self.batch, c) for c in self.conts], 1)

    @torch.no_grad()
    def generate(self, x: Tensor, *, max_new_tokens: int = 32, eos_token_id: int | None = None,
                 pad_token_id: int = 0) -> Tensor:
        """(B, n ≤ max_new_tokens) greedy continuation ids of the prompts represented by x, with the view's
        perturbation applied. The prompts are read once, with the perturbation added at the prompt positions,
        and their keys and values cached; each new token then reads only itself. That is exact for a causal LM,
        latent perturbations included: a prompt position's states never depend on later tokens, so rerunning the
        prompt at every step would give the same cache. Rows that emitted ``eos_token_id`` are padded with
        ``pad_token_id`` afterwards."""
        b, device = len(self.batch), self.batch.device
        deltas = dict(zip(self.layers, self.delta(x).split(self.width, dim=1), strict=True))
        attention = self.batch.prompt_attention
        positions = (attention.cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            with self._adding(deltas):
                out = self.model(input_ids=self.batch.prompt_ids, attention_mask=attention, position_ids=positions,
                                 use_cache=True, logits_to_keep=1)
            done = torch.zeros(b, dtype=torch.bool, device=device)
            tokens: list[Tensor] = []
            for i in range(max_new_tokens):
                step = torch.where(done, torch.full_like(done, pad_token_id, dtype=torch.long),
                                   out.logits[:, -1].argmax(-1))
                tokens.append(step)
                if eos_token_id is not None:
                    done |= step == eos_token_id
                if bool(done.all()) or i == max_new_tokens - 1:
                    break
                attention = torch.cat([attention, attention.new_ones(b, 1)], 1)
                positions = positions[:, -1:] + 1
                out = self.model(input_ids=step[:, None], attention_mask=attention, position_ids=positions,
                                 **_cache_of(out), use_cache=True, logits_to_keep=1)
        return torch.stack(tokens, 1) if tokens else torch.empty(b, 0, dtype=torch.long, device=device)

    def _with(self, conts: list[Continuation], names: list[str]) -> PromptView:
        """A shallow copy returning ``conts``' logits (x⁰ and s shared: computed first, so only once)."""
        self._state()
        view = copy.copy(self)
        view.names, view.conts = names, conts
        return view

    def _module(self, layer: Layer) -> nn.Module:
        """The module whose output is the representation at ``layer``: the embedding or a decoder block."""
        if layer == "embedding":
            return self.model.get_input_embeddings()
        assert self._blocks is not None and isinstance(layer, int)
        return self._blocks[layer]

    @contextmanager
    def _adding(self, deltas: dict[Layer, Tensor]) -> Iterator[None]:
        """Forward hooks adding δ_ℓ to the output of layer ℓ (the embedding lookup or a decoder block) at the
        prompt positions, the first P of every sequence."""
        handles = []
        width = self.width

        def hook_for(delta: Tensor) -> Any:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                pad = hidden.new_zeros(hidden.shape[0], hidden.shape[1] - width, hidden.shape[2])
                hidden = hidden + torch.cat([delta.to(hidden.dtype), pad], 1)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            return hook

        def tap(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.prompt_states((output[0] if isinstance(output, tuple) else output)[:, :width])

        try:
            for layer, delta in deltas.items():
                handles.append(self._module(layer).register_forward_hook(hook_for(delta)))
            if self._blocks is not None:
                handles.append(self._blocks[0].register_forward_hook(tap))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def _clean(self, relative: bool) -> tuple[Tensor, Tensor]:
        """(x⁰ (B, L·P, D), s (B, L·P, 1)): the clean prompt representation at each layer and its scale, recorded
        by forward hooks during one whole pass over the prompts (not cut short: sharded models must finish it)."""
        states: dict[Layer, Tensor] = {}
        handles = []
        for layer in self.layers:
            def record(_m: nn.Module, _i: Any, output: Any, layer: Layer = layer) -> None:
                states[layer] = (output[0] if isinstance(output, tuple) else output).detach()
            handles.append(self._module(layer).register_forward_hook(record))
        try:
            positions = (self.batch.prompt_attention.cumsum(1) - 1).clamp_min(0)
            self.model(input_ids=self.batch.prompt_ids, attention_mask=self.batch.prompt_attention,
                       position_ids=positions, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        weights = self.batch.prompt_mask[..., None].float()
        chunks, scales = [], []
        for layer in self.layers:
            state = states[layer].float()
            if not relative:
                scale = torch.ones(state.shape[0], 1, 1, device=state.device)
            elif layer == "embedding":
                scale = torch.full((state.shape[0], 1, 1), embedding_scale(self.model), device=state.device)
            else:  # the sample's mean token norm over its prompt tokens (batch-independent)
                norms = state.norm(dim=-1, keepdim=True)
                scale = (norms * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)
            chunks.append(state / scale)
            scales.append(scale.expand(-1, state.shape[1], 1))
        return torch.cat(chunks, 1).detach(), torch.cat(scales, 1).detach()
