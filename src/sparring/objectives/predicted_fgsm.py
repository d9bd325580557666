"""Fast adversarial training on predicted gradients: FGSM-RS whose step comes from a gradient predictor
that is refitted every N steps as the model changes (methods.md §1; FGSM-RS: Wong, Rice & Kolter, "Fast
is better than free", ICLR 2020).

    δ₀ ~ U(B(x, ε)),   x₀ = x + δ₀
    ĝ  = vec(r ⊗ [h_ℓ(x₀), 1]) · W_t,   r = ∂CE/∂z at the logits z = f(x₀)      (``mode="residual"``)
    x' = Π_{B(x,ε) ∩ box}( x₀ + α · sign(ĝ) ),   α = 1.25 ε,   train on CE(f_θ(x'), y)

    every N-th step t:  g = ∇ₓ CE(f(x₀), y) (one true backward, used for that step's FGSM),
                        S ← decay · S + pairs(x₀, g),   W_t = ridge(S)   (λ kept from calibration)

The ridge sums ``S`` and the map ``W`` are :class:`~sparring.gradients.GradientPredictor`'s. Warm-up:
until ``calibration_points`` examples have been seen, the steps are exact FGSM-RS (true gradient) and
their random starts are kept; then the predictor is calibrated on them (λ on a held-out 20%: one
forward and backward per kept example, once) and every later step uses ``Predicted(predictor,
refit_every=N, decay=...)``: one forward pass, no backward, except the refit steps.

Defaults: ε = 8/255 L∞ and α = 1.25 ε (FGSM-RS's CIFAR-10 settings); ``layer=None`` = the module whose
output is the input of the model's last ``nn.Linear`` (found by one probe forward on the first batch:
the last hidden ReLU of an MLP), ``mode="residual"``, N = 10, decay 0.5, 512 calibration examples.
Measured on digits (a 64-64-10 MLP, ε = 0.2, 15 epochs, 2-4 seeds): 256-1024 calibration examples give
the same robustness (64 track the model worse), fewer examples than the K·(p + 1) = 650 residual
features are fine (λ is chosen on held-out cosine); decay 0.5 beat 0.8 and 0.95 by about a point of PGD
accuracy; N = 5 tracks the model better (refit cosine ≥ 0.79 against ≥ 0.59) for the same robustness at
twice the refit cost; N = 20 and 50 lose 3 and 10 points, and **without refits (N = 0) PGD accuracy
collapses to 0**: trained against a fixed map, the model learns to make the predicted gradient useless
(cosine at the refits falls below 0 at N = 50). See ``benchmarks/predicted_training.py``.

Cost: a predicted step replaces only the attack's input-gradient backward (about one forward pass) by
the predictor (K·(p + 1) features per example and one matrix product); the training update (forward +
backward with weight gradients) is unchanged, so a step costs at best about 4/5 of FGSM-RS's, and every
N-th step adds a true backward and an F × F ridge solve (F = K·(p + 1)). On digits, one CPU core
(``benchmarks/predicted_training.py``), the solve (≈ 13-20 ms at F = 650) outweighs the saved backward:
3.3x FGSM-RS's time per epoch on the 64-64-10 MLP, 1.07x on a 1024-1024-64 MLP whose predicted attack
is 0.64x the exact one; PGD-20 accuracy 0.33 against FGSM-RS's 0.37 and PGD-AT's 0.39 (MLP), 0.35
against 0.47 and 0.54 (deep MLP, where the refit cosine dips below 0 between refits).

**Reconstructed**, not from a paper: the gradient predictor itself (methods.md §1.3, the paper's
abstract only says it is a linear regression on hidden states), adversarial training with it (the
abstract names training as a use, without details), the periodic refit with decayed sums (after the
authors' predecessor on parameter gradients, arXiv 2511.05187: "recomputed periodically, alignment
tracked"), the warm-up and every default above except ε and α.

Metrics (per step, averaged per epoch by the trainer): ``attack_success``; ``predicted_step`` (1 when the
step used the predicted gradient, 0 on warm-up and refit steps); ``predictor_cosine`` and
``predictor_sign_agreement``: the fidelity of the map measured at the most recent refit, *before* that
refit (the calibration's held-out figures until the first refit) — how well the map still tracks the
model. They are emitted from the calibration on, so epoch 0's average is diluted by the warm-up steps.
``history`` keeps each measurement with its step. After each epoch, :class:`~sparring.objectives.FastAT`'s
catastrophic-overfitting detector runs on the trainer's held-out batch (held-out PGD-5 accuracy).

Resume: :meth:`state_dict` embeds the predictor (map and running sums, as base64 safetensors bytes) when
it is at most ``max_state_mb``; a resumed run then continues exactly. A larger predictor is not
embedded: the resumed run re-runs the warm-up and calibrates afresh (it does not reproduce the
uninterrupted run). A run stopped during the warm-up also warms up again.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks import FGSM
from sparring.context import frozen_model
from sparring.errors import ConfigError
from sparring.gradients import GradientPredictor, Predicted, tap
from sparring.gradients.predicted import MODES
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.fast_at import FastAT
from sparring.objectives.pgd_at import attack_metrics
from sparring.threat import LinfBall, ThreatModel

log = logging.getLogger(__name__)


@OBJECTIVES.register("predicted_fgsm")
@dataclass(kw_only=True)
class PredictedFGSM(Objective):
    """FGSM-RS adversarial training whose step is predicted from a hidden layer and refitted every N steps.

    Attributes:
        threat: training threat model (default L∞ ε = 8/255).
        layer: module path of the hidden layer the gradient is predicted from; None: the module whose
            output is the input of the model's last ``nn.Linear``.
        mode: the predictor's feature map: ``"residual"`` (r ⊗ [h, 1], r = ∂CE/∂logits), ``"label"`` or
            ``"direct"`` (see :mod:`sparring.gradients.predicted`).
        rel_step: α / ε (1.25: FGSM-RS).
        refit_every: N; every N-th predicted step spends one true backward on its batch and refits.
            0: never refit after the calibration.
        decay: weight of the older ridge sums at each refit (1: never forget).
        calibration_points: examples of exact FGSM-RS warm-up steps the predictor is calibrated on.
        max_features: refuse a predictor with more regression features than this (its float64 sums take
            8·F² bytes: 0.5 GB at 8192; each refit solves an F × F system).
        max_state_mb: embed the predictor in :meth:`state_dict` up to this size; larger ones recalibrate
            after a resume.
        co_drop: catastrophic-overfitting detector, as :class:`~sparring.objectives.FastAT`'s (held-out
            PGD-5 after each epoch; a fall below the best by more than this is an event and a warning).
    """

    name = "predicted_fgsm"
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    layer: str | None = None
    mode: str = "residual"
    rel_step: float = 1.25
    refit_every: int = 10
    decay: float = 0.5
    calibration_points: int = 512
    max_features: int = 8192
    max_state_mb: float = 16.0
    co_drop: float = 0.2
    predictor: GradientPredictor | None = field(default=None, init=False, repr=False)
    steps: int = field(default=0, init=False)
    history: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _layer: str | None = field(default=None, init=False, repr=False)
    _source: Predicted | None = field(default=None, init=False, repr=False)
    _kept: list[tuple[Tensor, Tensor]] = field(default_factory=list, init=False, repr=False)
    _monitor: FastAT = field(init=False, repr=False)  # a wrapped objective: the base hooks forward on_epoch_end

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.rel_step > 0:
            raise ConfigError(f"rel_step must be > 0, got {self.rel_step}")
        if self.refit_every < 0:
            raise ConfigError(f"refit_every must be >= 0 (0: never refit), got {self.refit_every}")
        if not 0 <= self.decay <= 1:
            raise ConfigError(f"decay must be in [0, 1], got {self.decay}")
        if self.calibration_points < 4:
            raise ConfigError(f"calibration_points must be >= 4, got {self.calibration_points}")
        self._monitor = FastAT(threat=self.threat, co_drop=self.co_drop)  # only its detector is used

    @property
    def events(self) -> list[dict[str, Any]]:
        """Catastrophic-overfitting events (:meth:`training_events` reports them)."""
        return self._monitor.events

    def training_events(self) -> list[dict[str, Any]]:
        return self._monitor.training_events()

    def describe(self) -> dict[str, Any]:
        """The settings only (the training state, steps and predictor, is not a setting)."""
        settings = {f.name for f in fields(self) if f.init}
        return {k: v for k, v in super().describe().items() if k == "name" or k in settings}

    @property
    def refits(self) -> int:
        """Refits done since the calibration (each one true backward on a batch)."""
        return sum(1 for h in self.history if h["kind"] == "refit")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        self.steps += 1
        if self._layer is None:
            self._layer = self._check_layer(model, x)
        if self._source is None:
            x_adv, predicted = self._warm_up(model, x, y, generator), 0.0
        else:
            done = len(self._source.fidelity)
            attack = FGSM(gradients=self._source, random_start=True, rel_step=self.rel_step, score=False)
            x_adv = attack(model, x, y, self.threat, generator=generator).x_adv
            predicted = 1.0
            if len(self._source.fidelity) > done:  # this step was a refit: its gradient was the true one
                predicted = 0.0
                self.history.append({"step": self.steps, "kind": "refit", **self._source.fidelity[-1]})
        logits = model(x_adv)
        metrics = attack_metrics(logits, y)
        metrics["predicted_step"] = predicted
        if self.history:
            metrics["predictor_cosine"] = self.history[-1]["cosine"]
            metrics["predictor_sign_agreement"] = self.history[-1]["sign_agreement"]
        return ObjectiveOutput(loss=cross_entropy(logits, y), logits=logits, metrics=metrics)

    # ------------------------------------------------------------------------------- warm-up, calibration
    def _warm_up(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        """An exact FGSM-RS step; keeps a fresh random start of the batch for the calibration."""
        attack = FGSM(random_start=True, rel_step=self.rel_step, score=False)
        x_adv = attack(model, x, y, self.threat, generator=generator).x_adv
        # Drawn after the attack, so the step itself is FGSM-RS's; the predictor will be queried at such points.
        self._kept.append((self.threat.random_start(x.detach(), generator), y.detach()))
        if sum(len(k[1]) for k in self._kept) >= self.calibration_points:
            self._calibrate(model)
        return x_adv

    def _calibrate(self, model: nn.Module) -> None:
        x = torch.cat([k[0] for k in self._kept])
        y = torch.cat([k[1] for k in self._kept])
        self._kept = []
        assert self._layer is not None
        self.predictor = GradientPredictor(layer=self._layer, mode=self.mode)
        report = self.predictor.calibrate(model, x, y)
        self._start_predicting()
        self.history.append({"step": self.steps, "kind": "calibration", "cosine": report["holdout_cosine"],
                             "sign_agreement": report["holdout_sign_agreement"]})
        log.info("predicted_fgsm: calibrated on %d examples at layer %r, held-out cosine %.3f",
                 len(y), self._layer, report["holdout_cosine"])

    def _start_predicting(self, queries: int = 0) -> None:
        assert self.predictor is not None
        self._source = Predicted(self.predictor, refit_every=self.refit_every, decay=self.decay)
        self._source.queries = queries

    def _check_layer(self, model: nn.Module, x: Tensor) -> str:
        """The hidden layer's module path, after checking the predictor's size on one probe example."""
        layer = self.layer if self.layer is not None else input_of_last_linear(model, x[:2])
        with frozen_model(model), torch.no_grad(), tap(model, layer) as box:
            logits = model(x[:1])
        if "h" not in box:
            raise ConfigError(f"predicted_fgsm: layer {layer!r} is not run by the model's forward pass")
        p = box["h"][:1].flatten(1).shape[1]
        features = p + 1 if self.mode == "direct" else logits.shape[-1] * (p + 1)
        if features > self.max_features:
            raise ConfigError(
                f"predicted_fgsm: the {self.mode} predictor at layer {layer!r} (width {p}) would have {features} "
                f"regression features, more than max_features={self.max_features} (its ridge sums alone take "
                f"{8 * features**2 / 2**30:.1f} GB): name a narrower layer, use mode='direct', or raise max_features"
            )
        return layer

    # -------------------------------------------------------------------------------------- state (resume)
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps, "layer": self._layer, "history": list(self.history),
                                 "queries": 0, "predictor": None, "monitor": self._monitor.state_dict()}
        if self.predictor is None or self._source is None:
            return state
        blob = _predictor_bytes(self.predictor)
        if len(blob) > self.max_state_mb * 2**20:
            log.info("predicted_fgsm: predictor of %.1f MB not embedded in the state (max_state_mb=%g); a resumed "
                     "run recalibrates", len(blob) / 2**20, self.max_state_mb)
            return state
        state.update(queries=self._source.queries, predictor=base64.b64encode(blob).decode("ascii"))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self._layer = state.get("layer")
        self.history = list(state.get("history", []))
        self._monitor.load_state_dict(state.get("monitor", {}))
        self._kept, self.predictor, self._source = [], None, None
        if state.get("predictor"):
            self.predictor = _predictor_from_bytes(base64.b64decode(state["predictor"]))
            self._start_predicting(int(state.get("queries", 0)))


def input_of_last_linear(model: nn.Module, x: Tensor) -> str:
    """Module path of the leaf module whose output is the input of ``model``'s last ``nn.Linear``.

    One probe forward on ``x`` records every earlier leaf module's output and the last Linear's input;
    the latest-registered module whose output equals that input (up to a reshape, e.g. a functional
    flatten) is the answer."""
    modules = list(model.named_modules())
    linears = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Linear)]
    names = ", ".join(name for name, _ in modules[1:30])
    if not linears:
        raise ConfigError(f"predicted_fgsm: the model has no nn.Linear, so layer=None means nothing; set layer to "
                          f"a module path ({names})")
    leaves = [(name, m) for name, m in modules[: linears[-1]] if name and not any(True for _ in m.children())]
    seen: dict[str, Tensor] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                seen[name] = output.detach().clone()  # clone: a later in-place op must not change it

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in leaves]
    handles.append(modules[linears[-1]][1].register_forward_pre_hook(
        lambda _m, inputs: seen.__setitem__("", inputs[0].detach().clone())))
    try:
        with frozen_model(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    target = seen.get("")
    for name, _ in reversed(leaves):
        out = seen.get(name)
        if target is not None and out is not None and out.numel() == target.numel() and len(out) == len(target):
            if torch.equal(out.reshape(target.shape), target):
                return name
    raise ConfigError(f"predicted_fgsm: no module's output is the input of the last nn.Linear "
                      f"{modules[linears[-1]][0]!r}; set layer to a module path ({names})")


def _predictor_bytes(predictor: GradientPredictor) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "predictor.safetensors"
        predictor.save(path)
        return path.read_bytes()


def _predictor_from_bytes(blob: bytes) -> GradientPredictor:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "predictor.safetensors"
        path.write_bytes(blob)
        return GradientPredictor.load(path)
