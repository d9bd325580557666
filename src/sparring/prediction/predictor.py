"""Predict input gradients from a hidden layer, and the ``Predicted`` gradient source (methods.md §1.3).

Calibration (the only backward passes): for calibration inputs, one forward pass records the hidden
state ``h_ℓ`` of the layer named ``layer`` (its module path, e.g. ``"features.3"``) with a forward hook,
one backward pass gives the true input gradient ``g``; a ridge map ``h ↦ ĝ`` is fitted by
:class:`~sparring.prediction.ridge.RidgeAccumulator`, λ chosen on held-out cosine similarity.

Attack time: :class:`Predicted` is a gradient source (the protocol of :mod:`sparring.gradients`), so every
attack runs on predicted gradients: one forward pass, no backward. With ``control_fraction = p > 0`` the
true gradient is also computed on a random fraction p of the rows and the step uses the control-variate
estimate ``ĝ + (g − ĝ)·1[selected]/p``, whose expectation is the true gradient.

Two feature maps (reconstructed, methods.md §1.3; the paper's exact choice is unknown):

* ``"residual"`` (default): the chain rule ``g = J(x)ᵀ r`` with ``r = ∂L/∂z`` the loss gradient at the
  logits, computed *exactly* from the forward pass (for CE, ``softmax(z) − onehot(y)``); only the
  Jacobian part is predicted, linearly in the hidden state: features ``vec(r ⊗ [h, 1])``. The label and
  the loss enter through r, so one calibration serves CE, margin, DLR and targeted losses alike. Its
  size is K·(p + 1): pick a layer with a few hundred features when K is large.
* ``"direct"``: regress g on h alone (the cheap variant; the label enters only through the calibration
  gradients). On a trained digits MLP it reaches a held-out cosine of ~0.2 where ``residual`` reaches ~0.96.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparring.context import device_of, frozen_model
from sparring.errors import ConfigError, DataError, SparringError
from sparring.gradients import Autograd, GradientStep
from sparring.losses import LossFn, get_loss
from sparring.prediction.ridge import DEFAULT_LAMBDAS, RidgeAccumulator, RidgeMap, choose_lambda, cosine, sign_agreement


@contextmanager
def tap(model: nn.Module, layer: str) -> Iterator[dict[str, Tensor]]:
    """Record the output of ``model``'s submodule ``layer`` in the yielded dict under ``"h"``."""
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        raise ConfigError(f"the model has no layer {layer!r}; layers: {', '.join(names[:30])}") from None
    box: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        box["h"] = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@dataclass(kw_only=True)
class GradientPredictor:
    """A ridge map from the hidden state of ``layer`` to the input gradient of ``loss``.

    Attributes:
        layer: module path of the hidden layer (``dict(model.named_modules())`` keys).
        loss: the per-example loss of the calibration gradients (``"ce"``, ``"margin"``, ...).
        mode: ``"residual"`` (features ``r ⊗ [h, 1]``, r = ∂L/∂logits) or ``"direct"`` (features h).
        lambdas: the ridge penalties tried (relative to standardized features).
        holdout: share of the calibration points held out to choose λ (then added to the fit).
        ridge: the fitted map (None before :meth:`calibrate` or :meth:`load`).
        report: calibration metrics (λ, held-out cosine per λ, sign agreement, points).
    """

    layer: str
    loss: str = "ce"
    mode: str = "residual"
    lambdas: tuple[float, ...] = (1e-6, 1e-5, *DEFAULT_LAMBDAS)
    holdout: float = 0.2
    ridge: RidgeMap | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_loss(self.loss)
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")

    # ------------------------------------------------------------------------------------------ calibrate
    def calibrate(
        self, model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256, seed: int = 0
    ) -> dict[str, Any]:
        """Fit the map on ``(x, y)`` (held-out share chooses λ); returns the calibration report."""
        if len(x) < 4:
            raise DataError(f"calibration needs at least 4 points, got {len(x)}")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_hold = max(2, int(round(self.holdout * len(x))))
        hold, fit_rows = order[:n_hold], order[n_hold:]
        device = device_of(model)
        fit: RidgeAccumulator | None = None
        for rows in fit_rows.split(batch_size):
            h, g = self._pairs(model, x[rows].to(device), y[rows].to(device))
            fit = fit or RidgeAccumulator(h.shape[1], g.shape[1], device=device)
            fit.add(h, g)
        held = [self._pairs(model, x[rows].to(device), y[rows].to(device)) for rows in hold.split(batch_size)]
        h_hold, g_hold = torch.cat([h for h, _ in held]), torch.cat([g for _, g in held])
        assert fit is not None
        chosen, scores = choose_lambda(fit, h_hold, g_hold, self.lambdas)
        held_pred = chosen(h_hold)
        fit.add(h_hold, g_hold)  # λ is chosen: every calibration point goes into the final map
        self.ridge = fit.solve(chosen.lam)
        self.report = {
            "layer": self.layer, "loss": self.loss, "mode": self.mode, "points": len(x), "features": fit.features,
            "lambda": chosen.lam,
            "holdout_cosine": scores[chosen.lam], "holdout_cosine_per_lambda": scores,
            "holdout_sign_agreement": float(sign_agreement(held_pred, g_hold).mean()),
        }
        return self.report

    def _pairs(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(features, g) rows of one batch: the regression's inputs and the true input gradients."""
        loss_fn = get_loss(self.loss)
        with frozen_model(model), tap(model, self.layer) as box, torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            logits = model(xg)
            (g,) = torch.autograd.grad(loss_fn(logits, y).sum(), xg)
        return self._features(box["h"].detach(), logits.detach(), loss_fn, y), g.flatten(1)

    def _features(self, h: Tensor, logits: Tensor, loss_fn: LossFn, ref: Tensor) -> Tensor:
        """(B, features): h, or r ⊗ [h, 1] with r = ∂L/∂logits (exact and cheap: no pass through the model)."""
        h = h.flatten(1)
        if self.mode == "direct":
            return h
        with torch.enable_grad():
            z = logits.detach().float().requires_grad_(True)
            (r,) = torch.autograd.grad(loss_fn(z, ref).sum(), z)  # (B, K)
        h1 = torch.cat([h.float(), torch.ones(len(h), 1, device=h.device)], 1)  # (B, p + 1)
        return (r[:, :, None] * h1[:, None, :]).flatten(1)  # (B, K · (p + 1))

    # -------------------------------------------------------------------------------------------- predict
    def predict(
        self, model: nn.Module, x: Tensor, *, loss_fn: LossFn | None = None, ref: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(ĝ shaped like ``x``, logits) from one forward pass without a backward.

        ``loss_fn`` / ``ref``: the loss being attacked and its reference (labels or targets); the
        ``residual`` mode needs ``ref`` (``loss_fn`` defaults to the calibration loss)."""
        if self.ridge is None:
            raise SparringError("the gradient predictor is not calibrated: call calibrate() or load() first")
        if self.mode == "residual" and ref is None:
            raise ConfigError("the residual gradient predictor needs the labels (ref=) of the loss it predicts")
        with torch.no_grad(), tap(model, self.layer) as box:
            logits = model(x)
        features = self._features(box["h"], logits, loss_fn or get_loss(self.loss), ref)  # type: ignore[arg-type]
        ridge = self.ridge if self.ridge.weight.device == x.device else self.ridge.to(x.device)
        return ridge(features).view_as(x).to(x.dtype), logits

    def fidelity(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        """Mean cosine similarity and sign agreement of predicted against true gradients on ``(x, y)``."""
        pred, _ = self.predict(model, x, ref=y)
        _, true = self._pairs(model, x, y)
        return {"cosine": float(cosine(pred, true).mean()), "sign_agreement": float(sign_agreement(pred, true).mean())}

    # ---------------------------------------------------------------------------------------- save / load
    def save(self, path: Path | str) -> None:
        if self.ridge is None:
            raise SparringError("nothing to save: the gradient predictor is not calibrated")
        meta = {"layer": self.layer, "loss": self.loss, "mode": self.mode, "report": json.dumps(self.report)}
        save_file({k: v.contiguous().cpu() for k, v in self.ridge.state_dict().items()}, str(path), metadata=meta)

    @staticmethod
    def load(path: Path | str) -> GradientPredictor:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"gradient predictor file not found: {path}")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        if "layer" not in meta:
            raise DataError(f"{path} is not a sparring gradient predictor (no layer in its metadata)")
        predictor = GradientPredictor(layer=meta["layer"], loss=meta.get("loss", "ce"), mode=meta.get("mode", "direct"))
        predictor.ridge = RidgeMap.from_state_dict(load_file(str(path)))
        predictor.report = json.loads(meta.get("report", "{}"))
        return predictor


@dataclass
class Predicted:
    """Gradient source: gradients predicted from a hidden layer, optionally with a control variate.

    Attributes:
        predictor: a calibrated :class:`GradientPredictor`.
        control_fraction: p; the true gradient is computed on a random fraction p of the rows and the
            returned gradient is ``ĝ + (g − ĝ)·1[selected]/p`` (unbiased). 0 = prediction only.
        seed: seed of the row selection.

    The returned loss is the attack's loss at the current point (from the same forward pass). In the
    ``residual`` mode the prediction follows the attack's loss (through ∂L/∂logits); in the ``direct``
    mode it is the gradient of the loss the predictor was calibrated on.
    """

    predictor: GradientPredictor
    control_fraction: float = 0.0
    seed: int = 0
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.control_fraction <= 1:
            raise ConfigError(f"control_fraction must be in [0, 1], got {self.control_fraction}")

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        grad, logits = self.predictor.predict(model, x.detach(), loss_fn=loss_fn, ref=ref)
        loss = loss_fn(logits, ref).detach()
        p = self.control_fraction
        if p > 0:
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
            chosen = (torch.rand(len(x), generator=self._generator, device=x.device) < p).nonzero().squeeze(1)
            if chosen.numel():
                true = Autograd()(model, x[chosen], loss_fn, ref[chosen]).grad
                grad = grad.clone()
                grad[chosen] += (true - grad[chosen]) / p
        return GradientStep(loss=loss, grad=grad, logits=logits.detach())


MODES = ("residual", "direct")

