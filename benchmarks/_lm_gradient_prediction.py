"""Gradient prediction on a real chat LM: cheap estimates of ∂L/∂x for one-step (FGSM-style) embedding attacks.

Setting. A batch of behaviours is seen through :class:`~sparring.language.view.PromptView` of its ``target``:
``view(x)`` returns the target tokens' logits, x (B, P, D) is the prompt block's input embeddings divided by the
embedding scale s, and L = :func:`~sparring.losses.cross_entropy` is each behaviour's mean target NLL. The attack
is one FGM step per token in ``TokenL2Ball(eps, mask=view.mask())``: δ_t = ε g_t/‖g_t‖ on the user-prompt tokens.
Every method below replaces the gradient g = ∂L/∂x by an estimate ĝ; ``study`` compares the FGM steps they give.

Methods (ℓ is a decoder-layer index; h_ℓ(t) the residual stream after block ℓ at position t; one ridge map per
method and layer, :class:`~sparring.gradients.ridge.RidgeAccumulator`, fitted on calibration behaviours whose
true gradients are computed once, λ chosen on a held-out quarter of them):

* ``true``: the exact gradient, one full forward + backward (backward ≈ forward here: the parameters are frozen,
  so only activation gradients are computed).
* ``direct``: ĝ(t) = W h_ℓ(t), one row per user-prompt token. The forward runs the prompt block alone and stops
  after block ℓ (a hook raises): with causal attention the prompt's states do not depend on the target anyway.
  Cost ≈ (ℓ+1)/n · P/(P+K) of a forward (n blocks, K target tokens).
* ``context``: ĝ(t) = W [h_ℓ(t), h_ℓ(last)], the last real position of prompt + target (it is the only one that
  has seen the whole prompt and the target; an early prompt token has seen neither the rest of the prompt nor the
  target, so its own state cannot tell which direction raises *this* target's loss). Cost ≈ (ℓ+1)/n of a forward.
* ``two_stage``: predict the gradient at the residual stream, ĝ_h(t) ≈ ∂L/∂h_ℓ(t), with context features
  [h_ℓ(t), h_ℓ(last)], then ONE exact backward through blocks 0..ℓ: ``autograd.grad(h_ℓ, x, ĝ_h)`` on the graph of
  the forward truncated at ℓ. Two maps: one for the prompt block's positions from the first user-prompt token on
  (earlier positions cannot influence the user prompt's gradient: causal), one for the target positions (the last
  real position is left out: its output predicts nothing, so ∂L/∂h = 0 there); λ is chosen by the *end-to-end*
  held-out cosine of ĝ on the user-prompt tokens. The exact backward lets target positions reach the prompt through
  the attention of blocks 0..ℓ. Cost ≈ 2(ℓ+1)/n of a forward, i.e. (ℓ+1)/n of the true gradient.
* ``residual_lowrank`` (the exact ∂L/∂h_final at the targets through a learned low-rank map) is not implemented:
  it needs the full forward, which here is already half of the true gradient's cost, so it cannot reach 5×.

What was measured on the shipped SmolLM2-135M-Instruct (30 blocks, hidden 576, float32, 2 shared CPU cores, ε 0.05,
batch 10; prompt block ≈ 41 tokens of which ≈ 9 are the user's, target ≈ 15 tokens; true FGSM raises the target
NLL by ≈ 0.6 nat):

* A full ``study`` (24 hand-written calibration behaviours, 10 attacked, layers 2, 4, 6, 10, 15, 3 rounds; an
  earlier two_stage with one map over all positions and λ by row cosine) gave success ratios direct 0.38-0.40 at
  every layer, context 0.35-0.38, two_stage 0.32, 0.40, 0.44, 0.55, 0.70 at ℓ = 2, 4, 6, 10, 15, and throughput
  ratios direct 21×, 22×, 8×, 2.6×, 1.8×, context 7.8×, 5.1×, 3.8×, 2.5×, 1.7×, two_stage 3.5×, 2.2×, 1.6×,
  1.0×, 0.9× (the box was heavily loaded: two-thread timings there carry large straggler overheads, so these sit
  below the cost model). Success ratio tracks the mean cosine closely (within ≈ 0.03).
* Offline, on the true gradients of the redteam suite (``sparring/language/redteam/behaviours.jsonl``: the 80
  train + validation behaviours calibrate, the 20 test ones are scored): ``direct`` saturates at a per-token
  cosine ≈ 0.37 at every layer from 0 to 15, and its test cosine goes 0.30 → 0.34 → 0.37 → 0.38 with 10 → 20 → 40
  → 80 calibration behaviours: more data hardly helps, the part it captures is a function of the token alone.
* ``context`` does not help (cosine 0.33-0.34, below ``direct``: twice the features, no gain). Even an oracle
  per-behaviour offset added to ``direct`` (the best any additive term in h(last) could do) only reaches cosine
  0.43: the missing part is an *interaction* between the token and the target, which a map linear in
  [h(t), h(last)] cannot express; elementwise products h(t)⊙h(last), attention-like summaries of the target states
  and low-rank (PCA) context features did not help either (0.37 ± 0.01), nor did a shallow surrogate model (the
  middle blocks replaced by the identity or a ridge "bridge" from h_a to h_m: cosine < 0.1).
* Why two_stage needs its exact backward: at ℓ ≤ 10 the true ∂L/∂h_ℓ at the user-prompt tokens is nearly
  orthogonal to ∂L/∂x there (cosine ≤ 0.12; the first blocks dominate the Jacobian), and ≥ 90 % of ∂L/∂x at the
  prompt flows through the prompt positions' own residual streams, i.e. it is created by attention *after* layer
  ℓ (back-propagating the exact ∂L/∂h_ℓ of the target positions alone gives cosine 0.26 at ℓ = 2; the logit lens
  at ℓ gives a negative cosine). Its quality therefore grows with ℓ while its cost grows as (ℓ+1)/n: end-to-end
  test cosine 0.40, 0.44, 0.48, 0.59 at ℓ = 2, 4, 6, 10 with the two maps here (0.38, 0.42, 0.46, 0.57 with one
  map over all positions).
* The goal (≥ 5× throughput at ≥ 0.8 of true FGSM's loss increase) is not reached: 5× leaves ℓ+1 ≲ 12 blocks of
  truncated forward (direct, context) or ≲ 6 blocks of forward + backward (two_stage), where every predictor stays
  at ≈ 0.4 of the true step's success; ≈ 0.7 needs two_stage at ℓ = 15 (≈ 2× by the cost model). The best
  trade-off is ``direct`` at a shallow layer: ≈ 20× the throughput at ≈ 0.4 of the success.

Timing: for each attacked batch, each method's step (its gradient or prediction + the FGM step, not the loss
evaluation that follows) is timed in rounds that alternate the methods' order; ``time_s`` is the mean over batches
of the median over rounds, and ``throughput_ratio`` = true's ``time_s`` / the method's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparring.context import frozen_model
from sparring.errors import ConfigError, DataError
from sparring.gradients.ridge import RidgeAccumulator, RidgeMap, choose_lambda, cosine
from sparring.language.batch import behaviour_batch
from sparring.language.data import Behaviour
from sparring.language.view import PromptView, decoder_layers
from sparring.losses import cross_entropy
from sparring.threat import TokenL2Ball

METHODS = ("direct", "context", "two_stage")
#: Ridge penalties tried (relative to standardized features; a few hundred rows per map need large ones).
LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
HOLDOUT = 0.25  # share of the calibration behaviours that chooses λ (then joins the fit)
Config = tuple[str, int | None]  # (method, layer); ("true", None)


class _Stop(Exception):
    """Raised by the hook of a truncated forward pass once the hidden state is recorded."""


@contextmanager
def _taps(blocks: nn.ModuleList, layers: Sequence[int], *, stop: int | None = None) -> Iterator[dict[int, Tensor]]:
    """Record the outputs of decoder blocks ``layers`` (and ``stop``) in the yielded dict; ``stop`` ends the forward
    pass right after its block (catch :class:`_Stop`)."""
    box: dict[int, Tensor] = {}

    def hook_for(layer: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            box[layer] = output[0] if isinstance(output, tuple) else output
            if layer == stop:
                raise _Stop
        return hook

    wanted = set(layers) | (set() if stop is None else {stop})
    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in sorted(wanted)]
    try:
        yield box
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Batch:
    """One batch of behaviours seen through a :class:`PromptView` of its target, prepared once (not timed).

    Positions t index prompt + target (T = P + K columns)."""

    view: PromptView
    x0: Tensor  # (B, P, D) clean prompt embeddings / scale
    threat: TokenL2Ball
    mask: Tensor  # (B, P) the user-prompt positions the attack moves
    parts: tuple[Tensor, Tensor]  # (B, T) two_stage's rows: prompt block from the first moved token on; target
    last: Tensor  # (B,) the last real position of each sequence (it sees the whole prompt and target)
    _clean: Tensor | None = None

    @staticmethod
    def of(model: nn.Module, tokenizer: Any, behaviours: Sequence[Behaviour], *, eps: float,
           max_length: int) -> _Batch:
        batch = behaviour_batch(tokenizer, behaviours, max_length=max_length).to(_device(model))
        view = PromptView(model, batch, ["target"])
        x0, mask = view.reference(), view.mask()
        width = x0.shape[1]
        target = batch.continuation("target").attention
        rows = torch.cat([batch.prompt_attention, target], 1).bool()
        last = width + target.sum(1) - 1
        # the last token's output predicts nothing: ∂L/∂h = 0 there
        rows[torch.arange(len(batch), device=rows.device), last] = False
        column = torch.arange(rows.shape[1], device=rows.device)[None]
        first = mask.float().argmax(1, keepdim=True)  # the first moved token: earlier positions cannot reach it
        parts = (rows & (column >= first) & (column < width), rows & (column >= width))
        return _Batch(view=view, x0=x0, threat=TokenL2Ball(eps=eps, mask=mask), mask=mask, parts=parts, last=last)

    def loss(self, x: Tensor) -> Tensor:
        return cross_entropy(self.view(x), self.view.labels)

    @property
    def clean(self) -> Tensor:
        """(B,) the clean target loss (computed on first use: calibration batches never need it)."""
        if self._clean is None:
            with torch.no_grad():
                self._clean = self.loss(self.x0)
        return self._clean


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    """Wait for the accelerator, so that a wall-clock time covers the work it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _with_last(h: Tensor, last: Tensor) -> Tensor:
    """(B, T, 2D): each position's state beside the state of its sequence's last real position."""
    tail = h[torch.arange(h.shape[0], device=h.device), last]
    return torch.cat([h, tail[:, None].expand_as(h)], -1)


def _features(method: str, h: Tensor, b: _Batch) -> list[Tensor]:
    """The regression rows of ``method`` (one block per map) from a layer's states h (B, T, D) of prompt + target
    (or of the prompt block alone for ``direct``); the ridge maps' own intercept is the constant feature."""
    h = h.detach().float()
    width = b.x0.shape[1]
    if method == "direct":
        return [h[:, :width][b.mask]]
    if method == "context":
        return [_with_last(h, b.last)[:, :width][b.mask]]
    both = _with_last(h, b.last)
    return [both[part] for part in b.parts]


def _targets(method: str, g_x: Tensor, g_h: Tensor, b: _Batch) -> list[Tensor]:
    """The regression targets matching :func:`_features`: ∂L/∂x at the moved tokens, or ∂L/∂h_ℓ at two_stage's."""
    if method == "two_stage":
        return [g_h[part].float() for part in b.parts]
    return [g_x[b.mask].float()]


def _truncated(b: _Batch, blocks: nn.ModuleList, layer: int, x: Tensor, *, prompt_only: bool = False) -> Tensor:
    """The states after block ``layer`` of a forward pass stopped there (keeps the graph when grad is enabled).

    ``prompt_only``: run the prompt block alone (the prompt's states do not depend on the target: causal)."""
    with _taps(blocks, [], stop=layer) as box:
        try:
            if prompt_only:
                batch, model = b.view.batch, b.view.model
                embeds = model.get_input_embeddings()(batch.prompt_ids) + b.view.delta(x).to(b.x0.dtype)
                positions = (batch.prompt_attention.cumsum(1) - 1).clamp_min(0)
                model(inputs_embeds=embeds, attention_mask=batch.prompt_attention, position_ids=positions)
            else:
                b.view(x)
        except _Stop:
            pass
    return box[layer]


def _true_gradient(b: _Batch) -> Tensor:
    x = b.x0.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(b.loss(x).sum(), x)
    return g


def _back(h: Tensor, x: Tensor, b: _Batch, maps: Sequence[RidgeMap], *, retain: bool = False) -> Tensor:
    """two_stage's second stage: ĝ_h from the maps at its rows, then the exact backward from h_ℓ to x."""
    g_h = torch.zeros_like(h)
    for part, ridge, feats in zip(b.parts, maps, _features("two_stage", h, b), strict=True):
        g_h[part] = ridge(feats).to(h.dtype)
    (g,) = torch.autograd.grad(h, x, grad_outputs=g_h, retain_graph=retain)
    return g


@dataclass
class _Predictor:
    """The fitted map(s) of one (method, layer) and the held-out cosine that chose λ."""

    method: str
    layer: int
    maps: list[RidgeMap] = field(default_factory=list)
    holdout_cosine: float = float("nan")

    def gradient(self, b: _Batch, blocks: nn.ModuleList) -> Tensor:
        """ĝ (B, P, D) at the clean prompts."""
        if self.method == "two_stage":
            x = b.x0.clone().requires_grad_(True)
            with torch.enable_grad():
                return _back(_truncated(b, blocks, self.layer, x), x, b, self.maps)
        with torch.no_grad():
            h = _truncated(b, blocks, self.layer, b.x0, prompt_only=self.method == "direct")
            g = torch.zeros_like(b.x0)
            g[b.mask] = self.maps[0](_features(self.method, h, b)[0]).to(g.dtype)
        return g


def _fgm(b: _Batch, g: Tensor, eps: float) -> Tensor:
    """One FGM step per token in the threat's L2 ball: δ_t = ε g_t/‖g_t‖ on the moved positions."""
    return b.threat.project(b.x0 + b.threat.step(g, eps), b.x0)


def _batches(model: nn.Module, tokenizer: Any, behaviours: Sequence[Behaviour], *, batch_size: int, eps: float,
             max_length: int) -> list[_Batch]:
    return [_Batch.of(model, tokenizer, behaviours[i:i + batch_size], eps=eps, max_length=max_length)
            for i in range(0, len(behaviours), batch_size)]


def _calibrate(fit_batches: list[_Batch], held: list[_Batch], blocks: nn.ModuleList, methods: Sequence[str],
               layers: Sequence[int], lambdas: Sequence[float]) -> dict[tuple[str, int], _Predictor]:
    """Fit the maps of every (method, layer) on calibration batches: one full forward + backward each gives ∂L/∂x
    and ∂L/∂h_ℓ at every layer. λ: held-out cosine (for two_stage end to end, on ∂L/∂x); the held-out rows then
    join the fit."""
    fits: dict[tuple[str, int], list[RidgeAccumulator]] = {}
    held_rows: dict[tuple[str, int], list[list[tuple[Tensor, Tensor]]]] = {}
    held_grads: list[Tensor] = []
    for i, b in enumerate([*fit_batches, *held]):
        x = b.x0.clone().requires_grad_(True)
        with torch.enable_grad(), _taps(blocks, layers) as box:
            g_x, *g_hs = torch.autograd.grad(b.loss(x).sum(), [x, *(box[layer] for layer in layers)])
        if i >= len(fit_batches):
            held_grads.append(g_x)
        for layer, g_h in zip(layers, g_hs, strict=True):
            for method in methods:
                pairs = list(zip(_features(method, box[layer], b), _targets(method, g_x, g_h, b), strict=True))
                if i < len(fit_batches):
                    if (method, layer) not in fits:
                        fits[(method, layer)] = [RidgeAccumulator(f.shape[1], t.shape[1], device=f.device)
                                                 for f, t in pairs]
                    for acc, (feats, targets) in zip(fits[(method, layer)], pairs, strict=True):
                        acc.add(feats, targets)
                else:
                    held_rows.setdefault((method, layer), []).append(pairs)
    predictors = {}
    for (method, layer), accs in fits.items():
        rows = held_rows[(method, layer)]
        hold = [(torch.cat([p[k][0] for p in rows]), torch.cat([p[k][1] for p in rows])) for k in range(len(accs))]
        if method == "two_stage":
            lam, score = _choose_end_to_end(accs, held, held_grads, blocks, layer, lambdas)
        else:
            chosen, scores = choose_lambda(accs[0], *hold[0], lambdas)
            lam, score = chosen.lam, scores[chosen.lam]
        for acc, (feats, targets) in zip(accs, hold, strict=True):
            acc.add(feats, targets)
        predictors[(method, layer)] = _Predictor(method, layer, [acc.solve(lam) for acc in accs], score)
    return predictors


def _choose_end_to_end(accs: list[RidgeAccumulator], held: list[_Batch], grads: list[Tensor], blocks: nn.ModuleList,
                       layer: int, lambdas: Sequence[float]) -> tuple[float, float]:
    """two_stage's λ: the mean held-out cosine of ĝ with ∂L/∂x on the moved tokens (one truncated forward per
    batch, one backward per λ)."""
    maps = {float(lam): [acc.solve(lam) for acc in accs] for lam in lambdas}
    cosines: dict[float, list[Tensor]] = {lam: [] for lam in maps}
    for b, g_x in zip(held, grads, strict=True):
        x = b.x0.clone().requires_grad_(True)
        with torch.enable_grad():
            h = _truncated(b, blocks, layer, x)
            for lam, fitted in maps.items():
                g = _back(h, x, b, fitted, retain=True)
                cosines[lam].append(cosine(g[b.mask], g_x[b.mask]))
    scores = {lam: float(torch.cat(c).mean()) for lam, c in cosines.items()}
    best = max(scores, key=lambda lam: scores[lam])
    return best, scores[best]


def study(model: nn.Module, tokenizer: Any, calibration: list[Behaviour], attacked: list[Behaviour], *,
          layers: list[int], eps: float = 0.05, methods: tuple[str, ...] = METHODS, batch_size: int = 10,
          repeats: int = 3, ridge_lambdas: Sequence[float] | None = None, max_length: int = 128,
          log: Callable[[str], Any] | None = None) -> list[dict]:
    """Predicted-gradient FGM against true FGM on ``attacked``, maps fitted on ``calibration`` (module doc).

    Returns the ``true`` row, the ``random`` row (a Gaussian direction per token: the floor any predictor must
    clear), then one row per (method, layer): ``method``, ``layer`` (None for true),
    ``throughput_ratio``, ``success_ratio`` (mean target-loss increase / true's), ``loss_increase`` (mean),
    ``cosine`` (mean per-token cosine of ĝ with g on the moved tokens), ``time_s`` (per batch), ``features`` (the
    ridge input size), ``lambda`` and ``holdout_cosine`` (the calibration's choice)."""
    say = log or (lambda _message: None)
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if {b.prompt for b in calibration} & {b.prompt for b in attacked}:
        raise DataError("calibration and attacked behaviours share prompts")
    if len(calibration) < 2 or not attacked:
        raise DataError("study needs at least 2 calibration behaviours and 1 attacked behaviour")
    if repeats < 1 or batch_size < 1:
        raise ConfigError(f"repeats and batch_size must be >= 1, got {repeats} and {batch_size}")
    lambdas = tuple(ridge_lambdas or LAMBDAS)
    blocks, device = decoder_layers(model), _device(model)
    layers = sorted({layer % len(blocks) for layer in layers})
    start = time.perf_counter()

    def make(items: Sequence[Behaviour]) -> list[_Batch]:
        return _batches(model, tokenizer, items, batch_size=batch_size, eps=eps, max_length=max_length)

    with frozen_model(model):
        n_hold = max(1, round(HOLDOUT * len(calibration)))
        predictors = _calibrate(make(calibration[:-n_hold]), make(calibration[-n_hold:]), blocks, methods, layers,
                                lambdas)
        say(f"calibrated {len(predictors)} predictors on {len(calibration)} behaviours "
            f"({time.perf_counter() - start:.0f}s)")
        attack = make(attacked)
        configs: list[Config] = [("true", None), ("random", None), *((m, layer) for m in methods for layer in layers)]

        def step(config: Config, b: _Batch, i: int) -> tuple[Tensor, Tensor]:
            method, layer = config
            if method == "random":  # the floor: a Gaussian direction per token, the same size of step
                g = torch.randn(b.x0.shape, generator=torch.Generator(device=device).manual_seed(i), device=device,
                                dtype=b.x0.dtype)
            else:
                g = _true_gradient(b) if layer is None else predictors[(method, layer)].gradient(b, blocks)
            return g, _fgm(b, g, eps)

        times: dict[Config, list[list[float]]] = {c: [[] for _ in attack] for c in configs}
        steps: dict[Config, list[tuple[Tensor, Tensor]]] = {c: [] for c in configs}
        for r in range(repeats):
            order = configs if r % 2 == 0 else configs[::-1]
            for i, b in enumerate(attack):
                for config in order:
                    _sync(device)
                    begin = time.perf_counter()
                    g, x_adv = step(config, b, i)
                    _sync(device)
                    times[config][i].append(time.perf_counter() - begin)
                    if r == 0:
                        steps[config].append((g.detach(), x_adv.detach()))
            say(f"timing round {r + 1}/{repeats} ({time.perf_counter() - start:.0f}s)")

        rows = []
        per_batch = {c: sum(statistics.median(t) for t in times[c]) / len(attack) for c in configs}
        with torch.no_grad():
            for config in configs:
                gains, cosines = [], []
                for b, (g, x_adv), (g_true, _) in zip(attack, steps[config], steps[("true", None)], strict=True):
                    gains.append(b.loss(x_adv) - b.clean)
                    cosines.append(cosine(g[b.mask], g_true[b.mask]))
                method, layer = config
                predictor = None if layer is None else predictors[(method, layer)]
                rows.append({
                    "method": method, "layer": layer, "throughput_ratio": per_batch[("true", None)] / per_batch[config],
                    "success_ratio": float("nan"), "loss_increase": float(torch.cat(gains).mean()),
                    "cosine": float(torch.cat(cosines).mean()), "time_s": per_batch[config],
                    "features": None if predictor is None else predictor.maps[0].weight.shape[0],
                    "lambda": None if predictor is None else predictor.maps[0].lam,
                    "holdout_cosine": None if predictor is None else predictor.holdout_cosine,
                })
        true_gain = rows[0]["loss_increase"]
        for row in rows:
            row["success_ratio"] = row["loss_increase"] / true_gain if true_gain else float("nan")
        say(f"study done ({time.perf_counter() - start:.0f}s)")
    return rows
