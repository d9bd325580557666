"""Adversarial weight perturbation over any objective (AWP; Wu, Xia & Wang, "Adversarial Weight Perturbation
Helps Robust Generalization", NeurIPS 2020).

    min_w  max_{‖v_l‖ ≤ γ‖w_l‖ ∀l}  ρ(w + v),     ρ(w) = the base objective's mean loss on adversarial inputs

The inputs are attacked at w (x' is generated *before* the weights move); the weights then take one
layer-wise normalized ascent step and the loss is trained at w + v, the perturbation being removed before
the optimizer step, so the update applied to w is ∇_w ρ(w + v):

    g_l = ∇_{w_l} ρ(w) on x',    v_l = γ · ‖w_l‖ · g_l / ‖g_l‖     (weights with more than one dimension only)

Only matrices and kernels are perturbed: biases and normalization parameters (1-D) are not, as in the code
(``if len(w.size()) <= 1: continue``). Paper / code defaults: γ = 5e-3 for PGD-AT and TRADES (methods.md
§10.7 quotes 5e-3 to 1e-2; RobustLT's AWP runs use 5e-3), one ascent step, ``awp_warmup`` = 0 epochs for
PGD-AT (10 in some of the code's TRADES configs). The ascent loss is the base's own training loss (the code
uses CE for PGD-AT, the TRADES loss for TRADES).

How the code's mechanics map here (``csdongxian/AWP``, ``utils_awp.py``): the code copies the model into a
proxy, takes one SGD step (lr 0.01) on −ρ in train mode, and rescales the weight difference; one plain SGD
step makes the difference proportional to ∇ρ and the rescaling cancels the rate, so here g is one
``torch.autograd.grad`` of ρ (no ``.grad`` is touched). The code then perturbs the model in place, runs
backward and restores it after ``opt.step()``. The trainer back-propagates after the objective returns, so
weights are never mutated here: the second pass runs the base on a view whose forward evaluates the model
at ``w + v`` through ``torch.func.functional_call`` with v a constant, so autograd gives ∇_w ρ(w + v) on the
real parameters exactly. Buffers pass through, so only that final pass updates BatchNorm statistics (the
ascent pass's updates are undone, as the code's proxy never touches the model's).

Reusing x': a base whose (possibly nested, through ``.base``) objective holds an ``attack`` field has its
attack recorded on the first pass and replayed on the second, with the random state it left behind; any
other attack (TRADES's KL maximization) runs again under the same random state, and the view shows it the
unperturbed weights (attacks run inside :func:`sparring.context.frozen_model`, which the view detects by
the weights' ``requires_grad`` being off), so it rebuilds the same x'. The second pass sees exactly the
randomness of the first (the generator and the global RNG that dropout draws from), so γ = 0 reproduces
the base exactly, and a call is deterministic under a generator. State a stateful base changes during the
ascent pass (DRO's temperature step) is undone, so it changes once per call.

Differences from the code: the ascent direction and the loss share their dropout masks (the code's proxy
draws its own); parameters are selected by dimension only (the code also requires ``'weight'`` in the
state-dict key). Limits: the view forwards only ``model(...)``; a base that calls other methods of the model
sees w there. Bases that step the optimizer themselves (Free-AT) are not supported. The ascent direction
depends on the whole batch, as in the code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sparring.attacks import Attack
from sparring.errors import ConfigError
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput, holder_of, walk
from sparring.objectives.pgd_at import PGDAT

RngState = tuple[Tensor | None, Tensor, Tensor | None]


@OBJECTIVES.register("awp")
@dataclass(kw_only=True)
class AWP(Objective):
    """Train the base objective at adversarially perturbed weights ``w + v`` (see the module doc).

    Attributes:
        base: the objective whose loss is maximized over weights and trained (default PGD-AT).
        gamma: γ, the layer-wise relative size ‖v_l‖ / ‖w_l‖ of the perturbation (default 5e-3, the paper's
            PGD-AT / TRADES value); 0 reproduces the base (at twice its cost: use the base itself).
        warmup_epochs: epochs (as counted by ``on_epoch_begin``) trained on the plain base first.
    """

    name = "awp"
    batch_dependent: ClassVar[bool] = True  # v is one ascent step on the whole batch's loss
    base: Objective = field(default_factory=PGDAT)
    gamma: float = 5e-3
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.base, Objective):
            raise ConfigError(f"AWP base must be an Objective, not {type(self.base).__name__}")
        if not self.gamma >= 0:
            raise ConfigError(f"AWP needs gamma >= 0 (relative weight-perturbation size, e.g. 5e-3), got {self.gamma}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"AWP needs warmup_epochs >= 0, got {self.warmup_epochs}")
        if any(hasattr(inner, "optimizer") for inner in walk(self.base)):
            raise ConfigError("AWP cannot wrap an objective that steps the optimizer itself (Free-AT); use PGD-AT")
        self._epoch = 0  # set by on_epoch_begin; not a field, so describe() and configs do not carry it

    def on_epoch_begin(self, model: nn.Module, *, epoch: int) -> dict[str, Any]:
        self._epoch = epoch
        return {**super().on_epoch_begin(model, epoch=epoch), "awp_active": float(epoch >= self.warmup_epochs)}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        weights = {n: p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1}
        if not (model.training and torch.is_grad_enabled()) or self._epoch < self.warmup_epochs or not weights:
            return self.base(model, x, y, generator=generator)  # evaluation, warm-up, or nothing to perturb

        holder = holder_of(self.base, "attack")
        attack = holder.attack if holder is not None else None
        state = [(inner, dict(vars(inner))) for inner in walk(self.base)]
        rng = _rng_state(generator, x.device)
        recorder = _Recorder(attack, generator, x.device) if attack is not None else None
        try:
            # 1. At w: the adversarial inputs and the ascent direction g = ∇_w ρ(w).
            if holder is not None:
                holder.attack = recorder
            with _kept_buffers(model), _no_sync(model):
                first = self.base(model, x, y, generator=generator)
                loss_w = first.loss.float().mean()
                grads = torch.autograd.grad(loss_w, list(weights.values()), allow_unused=True)
            for inner, saved in state:  # undo what the ascent pass changed in stateful bases
                vars(inner).clear()
                vars(inner).update(saved)

            # 2. v_l = γ ‖w_l‖ g_l / ‖g_l‖ (0 where ρ does not depend on w_l), a constant.
            offsets: dict[str, Tensor] = {}
            with torch.no_grad():
                for (n, p), g in zip(weights.items(), grads, strict=True):
                    if g is None:
                        offsets[n] = torch.zeros_like(p)
                        continue
                    g_norm = torch.linalg.vector_norm(g.float()).clamp_min(torch.finfo(torch.float32).tiny)
                    offsets[n] = (self.gamma * torch.linalg.vector_norm(p.float()) / g_norm * g.float()).to(p.dtype)

            # 3. At w + v, on the same x' and with the same randomness: the loss the trainer back-propagates.
            _set_rng_state(rng, generator, x.device)
            if holder is not None and recorder is not None:
                holder.attack = _Replayer(recorder)
            out = self.base(_Shifted(model, offsets), x, y, generator=generator)
        finally:
            if holder is not None:
                holder.attack = attack

        with torch.no_grad():
            v_sq = sum(torch.linalg.vector_norm(v.float()).square() for v in offsets.values())
            w_sq = sum(torch.linalg.vector_norm(p.float()).square() for p in weights.values())
            relative = (v_sq / w_sq.clamp_min(torch.finfo(torch.float32).tiny)).sqrt()
            gain = out.loss.detach().float().mean() - loss_w.detach()
        metrics = {**out.metrics, "awp_relative_norm": relative, "awp_loss_gain": gain}
        return ObjectiveOutput(loss=out.loss, logits=out.logits, metrics=metrics)


class _Shifted(nn.Module):
    """``model`` with its weights shifted by constant offsets: ``model(x)`` evaluated at ``w + v``.

    Inside an attack (:func:`~sparring.context.frozen_model` turns ``requires_grad`` off) it is the plain model,
    so attacks the base runs itself still see w. Only ``forward`` is shifted.
    """

    def __init__(self, model: nn.Module, offsets: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # bases read the mode (DRO updates only in training); children untouched
        params = dict(model.named_parameters())
        self._shifted = [(n, params[n], v) for n, v in offsets.items()]  # a list: not registered as parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not any(p.requires_grad for _, p, _ in self._shifted):
            return self.model(*args, **kwargs)
        return functional_call(self.model, {n: p + v for n, p, v in self._shifted}, args, kwargs)


class _Recorder:
    """Stands in for the base's attack on the first pass: runs it, keeps each result and the RNG state after."""

    def __init__(self, attack: Attack, generator: torch.Generator | None, device: torch.device) -> None:
        self.attack, self.generator, self.device = attack, generator, device
        self.calls: list[tuple[Any, RngState]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.attack(*args, **kwargs)
        self.calls.append((result, _rng_state(self.generator, self.device)))
        return result

    def __getattr__(self, name: str) -> Any:  # settings the base reads (e.g. ``attack.loss``)
        return getattr(self.__dict__["attack"], name)


class _Replayer:
    """Stands in for the attack on the second pass: returns the recorded results, leaving the RNG as the attack did."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.calls = iter(recorder.calls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recorded = next(self.calls, None)
        if recorded is None:  # more calls than recorded: attack afresh (the view shows the attack w)
            return self.recorder.attack(*args, **kwargs)
        result, rng = recorded
        _set_rng_state(rng, self.recorder.generator, self.recorder.device)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["recorder"].attack, name)


@contextlib.contextmanager
def _kept_buffers(model: nn.Module) -> Iterator[None]:
    """Undo buffer updates (BatchNorm running statistics) made inside the block."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP: the ascent gradient is local (no all-reduce is prepared for a backward that never comes)."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


def _rng_state(generator: torch.Generator | None, device: torch.device) -> RngState:
    """The generator's state, the global CPU state (dropout on CPU), and the device's CUDA state."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return (generator.get_state() if generator is not None else None), torch.get_rng_state(), cuda


def _set_rng_state(state: RngState, generator: torch.Generator | None, device: torch.device) -> None:
    gen, cpu, cuda = state
    if generator is not None and gen is not None:
        generator.set_state(gen)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
