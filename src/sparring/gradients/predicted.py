"""Predict input gradients from a hidden layer, and the ``Predicted`` gradient source (methods.md §1.3).

Calibration (the only backward passes): for calibration inputs, one forward pass records the hidden
state ``h_ℓ`` of the layer named ``layer`` (its module path, e.g. ``"features.3"`` or
``"model.layers.1"``) with a forward hook, one backward pass gives the true input gradient ``g``; a ridge
map ``features(h) ↦ ĝ`` is fitted by :class:`~sparring.gradients.ridge.RidgeAccumulator`, λ chosen on
held-out cosine similarity. :meth:`GradientPredictor.update` refits on new pairs (older ones decayed),
so the map can follow a model that changes during training.

Attack time: :class:`Predicted` is a gradient source (the protocol of :mod:`sparring.gradients`), so every
attack runs on predicted gradients: one forward pass, no backward. With ``truncate=True`` the forward pass
stops at ``layer`` (the hook raises once it has the hidden state): the cheapest attack step there is, for
attacks that need nothing but the gradient (FGSM/FGM; PGD with ``keep_best=False, score=False``).
``control_fraction = p > 0`` computes the true gradient on a random fraction p of the rows and steps on
the control-variate estimate ``ĝ + (g − ĝ)·1[selected]/p``, whose expectation is the true gradient;
``refit_every = R`` spends one true gradient on the whole batch every R-th query and refits on it.

Feature maps (reconstructed, methods.md §1.3; the paper's exact choice is unknown):

* ``"residual"`` (default): the chain rule ``g = J(x)ᵀ r`` with ``r = ∂L/∂z`` the loss gradient at the
  logits, computed *exactly* from the forward pass (for CE, ``softmax(z) − onehot(y)``); only the
  Jacobian part is predicted, linearly in the hidden state: features ``vec(r ⊗ [h, 1])``. The label and
  the loss enter through r, so one calibration serves CE, margin, DLR and targeted losses alike. It needs
  the logits, so no truncation. Its size is K·(p + 1): pick a layer with a few hundred features.
* ``"label"``: ``vec(onehot(y) ⊗ [h, 1])``, one affine map per class: ``E[g | h, y]``. Needs no logits, so
  it works with truncation; for two classes it equals ``residual`` up to a positive factor per example.
* ``"direct"``: regress g on h alone (the label enters only through the calibration gradients; for a
  language model's target loss the target tokens are part of the input, so h already sees them).

``per_token=True`` serves sequences: x (B, T, D) token embeddings and h (B, T, F) per-token hidden
states; one map shared by all positions, one regression row per non-padding token (all-zero rows of x
are padding, as in :class:`~sparring.threat.TokenBall`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparring.context import device_of, frozen_model
from sparring.errors import ConfigError, DataError, SparringError
from sparring.gradients.autograd import Autograd, GradientStep
from sparring.gradients.ridge import DEFAULT_LAMBDAS, RidgeAccumulator, RidgeMap, choose_lambda, cosine, sign_agreement
from sparring.losses import LossFn, get_loss

MODES = ("residual", "label", "direct")


class _StopForward(Exception):
    """Raised by the hook of a truncated forward pass once the hidden state is recorded."""


@contextmanager
def tap(model: nn.Module, layer: str, *, stop: bool = False) -> Iterator[dict[str, Tensor]]:
    """Record the output of ``model``'s submodule ``layer`` in the yielded dict under ``"h"``.

    ``stop=True`` ends the forward pass right there: run the model under :func:`truncated` (or catch
    :class:`_StopForward` yourself)."""
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        raise ConfigError(f"the model has no layer {layer!r}; layers: {', '.join(names[:30])}") from None
    box: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        box["h"] = output[0] if isinstance(output, tuple) else output
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def hidden_state(model: nn.Module, x: Tensor, layer: str, *, truncate: bool) -> tuple[Tensor, Tensor | None]:
    """(h_ℓ, logits) of one no-grad forward pass; with ``truncate`` the pass stops at ``layer`` (logits None)."""
    with torch.no_grad(), tap(model, layer, stop=truncate) as box:
        try:
            logits: Tensor | None = model(x)
        except _StopForward:
            logits = None
    if "h" not in box:
        raise ConfigError(f"layer {layer!r} was not run by the model's forward pass")
    return box["h"], logits


@dataclass(kw_only=True)
class GradientPredictor:
    """A ridge map from the hidden state of ``layer`` to the input gradient of ``loss``.

    Attributes:
        layer: module path of the hidden layer (``dict(model.named_modules())`` keys).
        loss: the per-example loss of the calibration gradients (``"ce"``, ``"margin"``, ...).
        mode: ``"residual"`` (features r ⊗ [h, 1], r = ∂L/∂logits), ``"label"`` (onehot(y) ⊗ [h, 1]) or
            ``"direct"`` (features h).
        per_token: sequences: one shared map per token position (x (B, T, D), h (B, T, F)).
        lambdas: the ridge penalties tried (relative to standardized features).
        holdout: share of the calibration points held out to choose λ (then added to the fit).
        ridge: the fitted map (None before :meth:`calibrate` or :meth:`load`).
        classes: number of classes (the ``label`` mode's one-hot size; set by :meth:`calibrate`).
        report: calibration metrics (λ, held-out cosine per λ, sign agreement, points).
    """

    layer: str
    loss: str = "ce"
    mode: str = "residual"
    per_token: bool = False
    lambdas: tuple[float, ...] = (1e-6, 1e-5, *DEFAULT_LAMBDAS)
    holdout: float = 0.2
    ridge: RidgeMap | None = None
    classes: int | None = None
    report: dict[str, Any] = field(default_factory=dict)
    _fit: RidgeAccumulator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        get_loss(self.loss)
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")

    @property
    def can_truncate(self) -> bool:
        """Whether predictions can stop the forward pass at ``layer`` (modes that need no logits)."""
        return self.mode != "residual"

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
        chunks = lambda rows: [(model, x[r].to(device), y[r].to(device)) for r in rows.split(batch_size)]  # noqa: E731
        return self._calibrate(chunks(fit_rows), chunks(hold), points=len(x))

    def calibrate_batches(self, batches: Sequence[tuple[nn.Module, Tensor, Tensor]]) -> dict[str, Any]:
        """Fit the map on whole batches ``(model, x, y)``, each with its own model: for models bound to one batch,
        such as a language model's :class:`~sparring.language.PromptView`, whose rows cannot be regrouped. The
        last ``holdout`` share of the batches (at least one) chooses λ."""
        if len(batches) < 2:
            raise DataError(f"calibrate_batches needs at least 2 batches (one is held out), got {len(batches)}")
        n_hold = max(1, int(round(self.holdout * len(batches))))
        return self._calibrate(list(batches[:-n_hold]), list(batches[-n_hold:]),
                               points=sum(len(x) for _, x, _ in batches))

    def _calibrate(self, fit_chunks: list[tuple[nn.Module, Tensor, Tensor]],
                   hold_chunks: list[tuple[nn.Module, Tensor, Tensor]], *, points: int) -> dict[str, Any]:
        fit: RidgeAccumulator | None = None
        for model, x, y in fit_chunks:
            h, g, _, _ = self._pairs(model, x, y)
            fit = fit or RidgeAccumulator(h.shape[1], g.shape[1], device=h.device)
            fit.add(h, g)
        held = [self._pairs(model, x, y) for model, x, y in hold_chunks]
        h_hold, g_hold = torch.cat([pair[0] for pair in held]), torch.cat([pair[1] for pair in held])
        assert fit is not None
        chosen, scores = choose_lambda(fit, h_hold, g_hold, self.lambdas)
        held_pred = chosen(h_hold)
        fit.add(h_hold, g_hold)  # λ is chosen: every calibration point goes into the final map
        self.ridge, self._fit = fit.solve(chosen.lam), fit
        self.report = {
            "layer": self.layer, "loss": self.loss, "mode": self.mode, "per_token": self.per_token,
            "points": points, "rows": int(fit.n), "features": fit.features, "lambda": chosen.lam,
            "holdout_cosine": scores[chosen.lam], "holdout_cosine_per_lambda": scores,
            "holdout_sign_agreement": float(sign_agreement(held_pred, g_hold).mean()),
        }
        return self.report

    def update(self, model: nn.Module, x: Tensor, y: Tensor, *, decay: float = 0.5) -> dict[str, float]:
        """Refit on the true gradients at ``(x, y)`` (one backward): older sums are scaled by ``decay``, λ is
        kept. Returns the fidelity of the map *before* the refit on these points (``cosine``,
        ``sign_agreement``): how far the model has drifted since the last fit."""
        return self.update_with_gradients(model, x, y, decay=decay)[2]

    def update_with_gradients(
        self, model: nn.Module, x: Tensor, y: Tensor, *, decay: float = 0.5
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """:meth:`update`, also returning the true input gradients (shape of ``x``) and the logits it computed."""
        if self.ridge is None or self._fit is None:
            raise SparringError("update() refits a calibrated predictor: call calibrate() first")
        features, g_rows, g, logits = self._pairs(model, x, y)
        before = self.ridge.to(features.device)(features)
        metrics = {"cosine": float(cosine(before, g_rows).mean()),
                   "sign_agreement": float(sign_agreement(before, g_rows).mean())}
        self._fit.decay_(decay)
        self._fit.add(features, g_rows)
        self.ridge = self._fit.solve(self.ridge.lam)
        return g, logits, metrics

    def _pairs(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(feature rows, gradient rows, g, logits) of one batch: the regression's inputs and targets, and
        the true gradient and logits themselves."""
        loss_fn = get_loss(self.loss)
        with frozen_model(model), tap(model, self.layer) as box, torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            logits = model(xg)
            (g,) = torch.autograd.grad(loss_fn(logits, y).sum(), xg)
        if self.mode == "label" and self.classes is None:
            self.classes = int(logits.shape[-1])
        features = self._features(box["h"].detach(), logits.detach(), loss_fn, y)
        return self._rows(features, x), self._rows(g, x), g, logits.detach()

    def _features(self, h: Tensor, logits: Tensor | None, loss_fn: LossFn, ref: Tensor | None) -> Tensor:
        """(B, F) or, per token, (B, T, F): h, or r ⊗ [h, 1] with r = ∂L/∂logits or onehot(y)."""
        if self.per_token:
            if h.dim() != 3:
                raise ConfigError(f"per_token needs a hidden state (B, T, F) at {self.layer!r}, got {tuple(h.shape)}")
        else:
            h = h.flatten(1)
        h = h.float()
        if self.mode == "direct":
            return h
        if ref is None:
            raise ConfigError(f"the {self.mode} gradient predictor needs the labels (ref=) of the loss it predicts")
        if self.mode == "label":
            if ref.dim() != 1 or self.classes is None:
                raise ConfigError("the label gradient predictor needs class labels (B,); use mode='direct' for tokens")
            r = F.one_hot(ref.long(), self.classes).to(h.dtype)
        else:
            if logits is None:
                raise ConfigError("the residual gradient predictor needs the logits: it cannot truncate")
            if logits.dim() != 2:
                raise ConfigError("the residual gradient predictor needs logits (B, K); use mode='direct' for tokens")
            with torch.enable_grad():
                z = logits.detach().float().requires_grad_(True)
                (r,) = torch.autograd.grad(loss_fn(z, ref).sum(), z)  # (B, K)
        h1 = torch.cat([h, torch.ones_like(h[..., :1])], -1)  # (B, [T,] p + 1)
        if self.per_token:
            return (r[:, None, :, None] * h1[:, :, None, :]).flatten(2)  # (B, T, K · (p + 1))
        return (r[:, :, None] * h1[:, None, :]).flatten(1)  # (B, K · (p + 1))

    def _rows(self, values: Tensor, x: Tensor) -> Tensor:
        """Regression rows: one per example, or (per token) one per non-padding token."""
        if not self.per_token:
            return values.flatten(1)
        if x.dim() != 3 or values.shape[:2] != x.shape[:2]:
            raise ConfigError(f"per_token needs x (B, T, D) and hidden states (B, T, F) of the same B, T; got "
                              f"{tuple(x.shape)} and {tuple(values.shape)}")
        return values[(x != 0).any(-1)]

    # -------------------------------------------------------------------------------------------- predict
    def predict(
        self, model: nn.Module, x: Tensor, *, loss_fn: LossFn | None = None, ref: Tensor | None = None,
        truncate: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """(ĝ shaped like ``x``, logits) from one forward pass without a backward.

        ``loss_fn`` / ``ref``: the loss being attacked and its reference (labels or targets); the
        ``residual`` and ``label`` modes need ``ref``. ``truncate``: stop the forward pass at ``layer``
        (logits are then None)."""
        if self.ridge is None:
            raise SparringError("the gradient predictor is not calibrated: call calibrate() or load() first")
        if truncate and not self.can_truncate:
            raise ConfigError("the residual gradient predictor needs the logits: use mode='label' or 'direct' "
                              "to truncate the forward pass")
        h, logits = hidden_state(model, x, self.layer, truncate=truncate)
        features = self._features(h, logits, loss_fn or get_loss(self.loss), ref)
        ridge = self.ridge if self.ridge.weight.device == x.device else self.ridge.to(x.device)
        if not self.per_token:
            return ridge(features).view_as(x).to(x.dtype), logits
        real = (x != 0).any(-1)  # padding rows get a zero gradient
        grad = torch.zeros_like(x)
        grad[real] = ridge(features[real]).to(x.dtype)
        return grad, logits

    def fidelity(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        """Mean cosine similarity and sign agreement of predicted against true gradients on ``(x, y)``
        (per token for sequences)."""
        pred, _ = self.predict(model, x, ref=y)
        true = self._pairs(model, x, y)[1]
        pred = self._rows(pred, x)
        return {"cosine": float(cosine(pred, true).mean()), "sign_agreement": float(sign_agreement(pred, true).mean())}

    def to(self, device: torch.device | str) -> GradientPredictor:
        """Move the map and the running sums to ``device`` (after :meth:`load` on a GPU machine); returns self."""
        if self.ridge is not None:
            self.ridge = self.ridge.to(device)
        if self._fit is not None:
            acc = RidgeAccumulator.from_state_dict({k: v.to(device) for k, v in self._fit.state_dict().items()})
            self._fit = acc
        return self

    # ---------------------------------------------------------------------------------------- save / load
    def save(self, path: Path | str) -> None:
        """safetensors: the map, the running sums (so :meth:`update` can go on after a load), settings."""
        if self.ridge is None:
            raise SparringError("nothing to save: the gradient predictor is not calibrated")
        meta = {"layer": self.layer, "loss": self.loss, "mode": self.mode, "per_token": str(self.per_token),
                "classes": str(self.classes or 0), "report": json.dumps(self.report)}
        tensors = dict(self.ridge.state_dict())
        if self._fit is not None:
            tensors.update(self._fit.state_dict())
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: a reader never sees half a file
        try:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def load(path: Path | str) -> GradientPredictor:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"gradient predictor file not found: {path}")
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
        except Exception as error:  # safetensors raises its own error types for a foreign file
            raise DataError(f"{path} is not a safetensors file: {error}") from None
        if "layer" not in meta:
            raise DataError(f"{path} is not a sparring gradient predictor (no layer in its metadata)")
        predictor = GradientPredictor(
            layer=meta["layer"], loss=meta.get("loss", "ce"), mode=meta.get("mode", "direct"),
            per_token=meta.get("per_token") == "True", classes=int(meta.get("classes", "0")) or None,
        )
        state = load_file(str(path))
        predictor.ridge = RidgeMap.from_state_dict(state)
        if "acc_hth" in state:
            predictor._fit = RidgeAccumulator.from_state_dict(state)
        predictor.report = json.loads(meta.get("report", "{}"))
        return predictor


@dataclass
class Predicted:
    """Gradient source: gradients predicted from a hidden layer, optionally corrected with true ones.

    Attributes:
        predictor: a calibrated :class:`GradientPredictor`.
        truncate: stop the forward pass at the predictor's layer (no loss, no logits: for FGSM/FGM and
            unscored PGD); needs a predictor mode that uses no logits (``label``, ``direct``).
        control_fraction: p; the true gradient is computed on a random fraction p of the rows and the
            returned gradient is ``ĝ + (g − ĝ)·1[selected]/p`` (unbiased). 0 = prediction only.
        refit_every: R > 0: every R-th query computes the true gradient of the whole batch, refits the
            predictor on it (older pairs scaled by ``decay``) and returns it. 0 = never.
        decay: weight of the older calibration pairs at each refit.
        seed: seed of the row selection.

    The returned loss is the attack's loss at the current point (from the same forward pass). In the
    ``residual`` mode the prediction follows the attack's loss (through ∂L/∂logits); in the other modes
    it is the gradient of the loss the predictor was calibrated on. ``fidelity`` holds the cosine and sign
    agreement measured at each refit.
    """

    predictor: GradientPredictor
    truncate: bool = False
    control_fraction: float = 0.0
    refit_every: int = 0
    decay: float = 0.5
    seed: int = 0
    queries: int = field(default=0, init=False)
    fidelity: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.control_fraction <= 1:
            raise ConfigError(f"control_fraction must be in [0, 1], got {self.control_fraction}")
        if self.refit_every < 0:
            raise ConfigError(f"refit_every must be >= 0, got {self.refit_every}")
        if self.truncate and not self.predictor.can_truncate:
            raise ConfigError("truncate=True needs a predictor in mode 'label' or 'direct' (residual needs logits)")

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        self.queries += 1
        if self.refit_every and self.queries % self.refit_every == 0:
            return self._refit(model, x, loss_fn, ref)
        grad, logits = self.predictor.predict(model, x.detach(), loss_fn=loss_fn, ref=ref, truncate=self.truncate)
        p = self.control_fraction
        if p > 0:
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
            chosen = (torch.rand(len(x), generator=self._generator, device=x.device) < p).nonzero().squeeze(1)
            if chosen.numel():
                true = Autograd()(model, x[chosen], loss_fn, ref[chosen]).grad
                grad = grad.clone()
                grad[chosen] += (true - grad[chosen]) / p
        if logits is None:
            return GradientStep(grad=grad)
        return GradientStep(grad=grad, loss=loss_fn(logits, ref).detach(), logits=logits.detach())

    def _refit(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        """One true gradient for the whole batch: refit on it and return it (it is exact, so use it)."""
        grad, logits, metrics = self.predictor.update_with_gradients(model, x.detach(), ref, decay=self.decay)
        self.fidelity.append(metrics)
        if loss_fn is not get_loss(self.predictor.loss):  # the attack maximizes another loss: its own gradient
            return Autograd()(model, x, loss_fn, ref)
        return GradientStep(grad=grad, loss=loss_fn(logits, ref).detach(), logits=logits)
