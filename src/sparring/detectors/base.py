"""What every detector shares: the scoring contract, the threshold, and a tap on one layer's activations.

A detector maps inputs x (B, ...) to a score (B,), higher meaning more likely adversarial. ``score`` is the
deployed statistic (no gradients, the model left exactly as it was: it runs inside
:func:`sparring.context.frozen_model`); ``soft_score`` is a differentiable relaxation of it, for adaptive attacks
that maximise ``loss(model(x), y) − λ·soft_score(x)``. An input is flagged when its score exceeds ``threshold``,
which :meth:`Detector.calibrate_threshold` sets at a false-positive rate on clean scores.

:class:`ActivationTap` records a submodule's output on a forward pass (optionally stopping the pass there), and
:func:`as_tokens` lays any activation out as tokens (B, T, d):

* (B, d): one token (an MLP layer, a pooled feature);
* (B, T, d): T tokens of width d (a language model's residual stream);
* (B, C, H, W) and other channel-first maps (B, C, ...): H·W tokens of width C (a conv layer's feature map).

A 3-D activation is always read as (B, T, d); tap a Conv1d's output through a layer that puts channels last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparring.detectors.metrics import ScoreLike, threshold_at_fpr
from sparring.errors import ConfigError
from sparring.registry import Registry

DETECTORS: Registry[type[Detector]] = Registry("detector")


class Detector(ABC):
    """Base class: scores inputs (higher = more likely adversarial) and flags those above ``threshold``.

    Class attribute ``name``: the registry name. Attribute ``threshold``: the flag rule's cut-off (None until
    calibrated).
    """

    name: ClassVar[str]
    threshold: float | None = None

    @abstractmethod
    def score(self, x: Tensor) -> Tensor:
        """(B,) float detection scores of inputs x (B, ...), without gradients; the model is left untouched."""

    @abstractmethod
    def soft_score(self, x: Tensor) -> Tensor:
        """(B,) a differentiable relaxation of :meth:`score`: gradients flow through the model to x.

        Runs the model in eval mode without weight gradients (:func:`sparring.context.frozen_model`) and leaves grad
        mode to the caller; an adaptive attack calls it inside its own :func:`~sparring.context.frozen_model`.
        """

    def describe(self) -> dict[str, Any]:
        """The detector's settings as plain JSON-able data (for reports)."""
        return {"name": self.name, "threshold": self.threshold}

    def flag(self, x: Tensor) -> Tensor:
        """(B,) bool: score > threshold."""
        if self.threshold is None:
            raise ConfigError(
                f"the {self.name} detector has no threshold yet: call calibrate_threshold(clean_scores, fpr=...) "
                "or set .threshold"
            )
        return self.score(x) > self.threshold

    def calibrate_threshold(self, clean_scores: ScoreLike, fpr: float) -> float:
        """Set (and return) the threshold that flags at most a share ``fpr`` of ``clean_scores``.

        The threshold is the smallest clean score t with (share of clean scores > t) ≤ fpr, the same rule as
        :func:`sparring.detectors.metrics.tpr_at_fpr`.
        """
        self.threshold = threshold_at_fpr(clean_scores, fpr)
        return self.threshold


class _StopForward(Exception):
    """Raised by a stopping tap's hook once the layer has run, to skip the rest of the forward pass."""


def first_tensor(output: Any) -> Tensor | None:
    """A module's output tensor: itself, or the first tensor of a tuple / list (Hugging Face decoder layers)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list):
        return next((item for item in output if isinstance(item, Tensor)), None)
    return None


def find_module(model: nn.Module, layer: str) -> nn.Module:
    """``model``'s submodule at the dotted path ``layer``; a :class:`ConfigError` naming valid paths if none."""
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        raise ConfigError(
            f"{type(model).__name__} has no layer {layer!r}; valid module paths include: {shown or '(none)'}"
        ) from None


class ActivationTap:
    """Records the output of ``model``'s submodule ``layer`` (a dotted path such as ``"features.3"``).

    Use it as a context manager (the forward hook lives only inside it) and call it to run the model::

        with ActivationTap(model, "model.layers.1", stop=True) as tap:
            h = tap(x)  # the layer's output; with stop=True the forward pass ends at the layer

    The recorded tensor keeps its autograd graph, so gradients flow from it back to x when grad mode is on.
    """

    def __init__(self, model: nn.Module, layer: str, *, stop: bool = False) -> None:
        self.model, self.layer, self.stop = model, layer, stop
        self.module = find_module(model, layer)
        self.output: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None:
            raise ConfigError(f"layer {self.layer!r} returned {type(output).__name__}, which holds no tensor")
        if self.stop:
            self.output = tensor
            raise _StopForward
        self.output = tensor.clone()  # the rest of the pass may write it in place (ReLU(inplace=True))

    def __enter__(self) -> ActivationTap:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, x: Tensor) -> Tensor:
        """Run ``model(x)`` and return the layer's output (the rest of the pass is skipped when stopping)."""
        if self._handle is None:
            raise RuntimeError("call an ActivationTap inside its `with` block")
        self.output = None
        try:
            self.model(x)
        except _StopForward:
            pass
        if self.output is None:
            raise ConfigError(f"the model's forward pass did not run layer {self.layer!r}: tap a layer it uses")
        output, self.output = self.output, None  # hold no reference to the graph between calls
        return output


def as_tokens(h: Tensor) -> Tensor:
    """Activations as tokens (B, T, d): (B, d) → (B, 1, d); (B, T, d) as is; (B, C, *spatial) → (B, ∏spatial, C)."""
    if h.dim() == 2:
        return h.unsqueeze(1)
    if h.dim() == 3:
        return h
    if h.dim() >= 4:
        return h.flatten(2).transpose(1, 2)
    raise ConfigError(f"cannot read an activation of shape {tuple(h.shape)} as tokens: expected (B, d) or more dims")
