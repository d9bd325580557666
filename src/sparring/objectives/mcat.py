"""MCAT, manifold-constrained adversarial training (Xian, Yang & Yu, "Manifold-Constrained Adversarial Training for
Long-Tailed Robustness via Geometric Alignment", arXiv 2605.02183).

    x' = MS-PGD:   max_{x' ∈ B(x,ε)}  CE(f(x'), y) − λ · d_{M_y}(φ(x'))
    L_i = CE(f(x'_i), y_i) + λ_man · d_{M_{y_i}}(φ(x'_i)) + β · R_ETF(W)

    d_{M_y}(u) = min_z ‖u − G_y(z)‖²                          (per-class feature generators, ``mcat_manifold``)
    R_ETF(W)   = mean_ij (Ŵ Ŵᵀ − M)²,   Ŵ = rows of W normalized,   M = 1 on the diagonal, −1/(C−1) off it

φ(x) is the penultimate feature (the head's input) and W (C, d) the head's weight. The attack is penalized for leaving
the class manifold (it stays on it); the outer loss pulls adversarial features back to the manifold and the head's
class directions toward a simplex equiangular tight frame (an exact ETF needs d ≥ C − 1; below that R_ETF > 0 at
its optimum and a warning is logged). R_ETF is added to every example's loss so the batch mean is the paper's
objective.

Paper defaults (Table 8): ε = 8/255, PGD-10 of step 2/255 (= ε/4 here), λ = λ_man = 0.1, β = 3e-3, generators
d_z = 128 → 1024 → 1024 → 512 fitted 10 epochs with Adam 1e-3, batch 256, T_z = 5 latent steps of lr 0.1. The
generator sizes default to the released code's (64 → 256 → 256 → 512), scaled down for narrower features
(``sparring.objectives.mcat_manifold``); ``latent_dim=128, gen_hidden=1024`` gives the paper's.

The released code (``mcat/trainer.py``) differs; ``code_compat=True`` reproduces it:

* it fits the generators once, before adversarial training, on the backbone as it is then (randomly initialized
  unless a clean checkpoint is given), with the ``"mse"`` fit, which collapses each generator to its class mean;
* its MS-PGD computes d under ``no_grad`` from detached features, so the manifold term adds no gradient and the
  attack is plain PGD on CE;
* its outer loss has no manifold term (``CE + β_g R_ETF``); the drift ``d_adv − d_clean`` is only logged.
Its defaults are ``lambda_m`` 0.2 (our ``lambda_attack``) and ``beta_g`` 1.0 (our ``beta``): set them too.

Here (the paper's version) the generators are fitted with ``fit="autoencoder"`` (``"glo"`` also available) on the
clean training features of the current backbone at the start of epoch 0 and refitted every ``refit_every`` epochs
(default every epoch: the features move as the backbone trains, and one clean pass over the training data plus the
fit is small next to an epoch of PGD-10). Fitting leaves the model untouched (eval mode, no gradients, restored).
Fit randomness comes from ``seed`` and the epoch, so a refit is reproducible. The training data comes from
``on_train_begin(..., train=(x, y))``, which the Trainer calls; without it the objective raises a ConfigError rather
than fit on one batch (that would make a sample's loss depend on its batch mates).

Resume: :meth:`state_dict` embeds the fitted generators (base64 safetensors) when they take at most
``max_state_mb``; a resumed run then continues with exactly those generators. Larger ones are refitted on the
resumed backbone at the first epoch (exact when refit happens every epoch, else it does not reproduce the
uninterrupted run).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.context import device_of, frozen_model
from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.models.features import classifier_head, logits_and_features
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.mcat_manifold import FITS, ClassGenerators, manifold_distance
from sparring.objectives.pgd_at import attack_metrics
from sparring.threat import LinfBall, ThreatModel

log = logging.getLogger(__name__)


def etf_target(num_classes: int, *, device: torch.device | None = None) -> Tensor:
    """The Gram matrix of a simplex ETF: 1 on the diagonal, −1/(C−1) off it, (C, C)."""
    off = -1.0 / max(num_classes - 1, 1)
    eye = torch.eye(num_classes, device=device)
    return eye + off * (1 - eye)


def etf_penalty(weight: Tensor) -> Tensor:
    """``R_ETF(W) = mean_ij (Ŵ Ŵᵀ − M)²`` for a head weight W (C, d); a differentiable scalar (float32)."""
    w = nn.functional.normalize(weight.float(), dim=1)  # Ŵ: unit rows
    return (w @ w.T - etf_target(weight.shape[0], device=weight.device)).pow(2).mean()


@OBJECTIVES.register("mcat")
@dataclass(kw_only=True)
class MCAT(Objective):
    """PGD on ``CE − λ d`` (manifold-supported), trained on ``CE + λ_man d + β R_ETF``.

    Attributes:
        threat: the training threat model (default L∞, ε = 8/255, box [0, 1]).
        attack: the inner maximizer (default PGD-10, α = ε/4, random start, last iterate, unscored).
        lambda_attack: λ, the manifold penalty inside the attack (paper 0.1; code ``lambda_m`` 0.2).
        lambda_manifold: λ_man, the manifold term of the outer loss (paper 0.1; the code has none).
        beta: β, the ETF weight (paper 3e-3; code ``beta_g`` 1.0).
        fit: how the class generators are fitted: ``"autoencoder"``, ``"glo"`` or ``"mse"`` (the code's).
        latent_dim, gen_hidden: generator sizes (default: scaled to the feature width, see ``mcat_manifold``).
        gen_epochs, gen_lr, gen_batch_size: the generator fit (paper: 10, Adam 1e-3, 256). On small data raise
            ``gen_epochs``: 10 passes over a thousand features are only 40 Adam steps.
        latent_steps, latent_lr: T_z steps of the latent projection and their step size (paper/code: 5, 0.1).
        refit_every: refit the generators every this many epochs (0: fit once, at epoch 0).
        log_drift: also compute d at the clean features (one more forward) to log ``manifold_drift``.
        seed: randomness of the generator fits.
        code_compat: reproduce the released code (MSE fit once at train begin, no attack gradient from d, no outer
            manifold term).
        max_state_mb: largest generators embedded in :meth:`state_dict`.
    """

    name = "mcat"
    #: At ε = 0 the ETF and manifold terms remain: the loss is not plain CE.
    reduces_to_clean_ce: ClassVar[bool] = False
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    attack: Attack = field(default_factory=lambda: PGD(steps=10, keep_best=False, score=False))
    lambda_attack: float = 0.1
    lambda_manifold: float = 0.1
    beta: float = 3e-3
    fit: str = "autoencoder"
    latent_dim: int | None = None
    gen_hidden: int | None = None
    gen_epochs: int = 10
    gen_lr: float = 1e-3
    gen_batch_size: int = 256
    latent_steps: int = 5
    latent_lr: float = 0.1
    refit_every: int = 1
    log_drift: bool = True
    seed: int = 0
    code_compat: bool = False
    max_state_mb: float = 16.0
    _train: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    _generators: ClassGenerators | None = field(default=None, init=False, repr=False, compare=False)
    _fitted_epoch: int | None = field(default=None, init=False, repr=False, compare=False)
    _warned_etf: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for label in ("lambda_attack", "lambda_manifold", "beta"):
            if getattr(self, label) < 0:
                raise ConfigError(f"MCAT needs {label} >= 0, got {getattr(self, label)}")
        if self.fit not in FITS:
            raise ConfigError(f"unknown MCAT fit {self.fit!r}; choose one of {', '.join(FITS)}")
        if self.gen_epochs < 1 or self.gen_batch_size < 1 or not self.gen_lr > 0:
            raise ConfigError(
                f"MCAT needs gen_epochs >= 1, gen_batch_size >= 1, gen_lr > 0; got {self.gen_epochs}, "
                f"{self.gen_batch_size}, {self.gen_lr}"
            )
        if self.latent_steps < 0 or not self.latent_lr > 0:
            raise ConfigError(
                f"MCAT needs latent_steps >= 0 and latent_lr > 0, got {self.latent_steps}, {self.latent_lr}"
            )
        if self.refit_every < 0:
            raise ConfigError(f"refit_every must be >= 0 (0 = fit once), got {self.refit_every}")
        for label in ("latent_dim", "gen_hidden"):
            if (value := getattr(self, label)) is not None and value < 1:
                raise ConfigError(f"{label} must be >= 1 or None (scaled to the feature width), got {value}")

    # ------------------------------------------------------------------ lifecycle
    def on_train_begin(
        self, model: nn.Module, *, class_counts: list[int], epochs: int, train: tuple[Tensor, Tensor] | None = None
    ) -> None:
        if train is not None:
            self._train = train
            if self.code_compat and self._generators is None:  # the code: once, before any training
                self._refit(model, epoch=0)
        super().on_train_begin(model, class_counts=class_counts, epochs=epochs, train=train)

    def on_epoch_begin(self, model: nn.Module, *, epoch: int) -> dict[str, Any]:
        out = super().on_epoch_begin(model, epoch=epoch)
        if self._train is not None and self._needs_fit(epoch):
            out["manifold_fit_error"] = self._refit(model, epoch=epoch)
        return out

    def _needs_fit(self, epoch: int) -> bool:
        if self._generators is None:
            return True
        if self.code_compat or self.refit_every == 0:
            return False
        return epoch % self.refit_every == 0 and epoch != self._fitted_epoch

    def _refit(self, model: nn.Module, *, epoch: int) -> float:
        """Fit the generators on the model's clean training features; returns the final fit error."""
        assert self._train is not None
        x, y = self._train
        device = device_of(model)
        feats = []
        with frozen_model(model), torch.no_grad():  # eval mode, nothing recorded, model restored exactly
            for xb in x.split(512):
                feats.append(logits_and_features(model, xb.to(device))[1].float())
        features = torch.cat(feats)
        num_classes = classifier_head(model).out_features
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        method = "mse" if self.code_compat else self.fit
        gens = ClassGenerators(
            num_classes, features.shape[1], latent_dim=self.latent_dim, hidden=self.gen_hidden,
            encoder=method == "autoencoder", generator=generator,
        ).to(device)
        error = gens.fit(features, y.to(device), method=method, epochs=self.gen_epochs, lr=self.gen_lr,
                         batch_size=self.gen_batch_size, generator=generator)
        self._generators, self._fitted_epoch = gens.eval(), epoch
        return error * float(gens.scale) ** 2  # the last fit epoch's mean ‖u − G_y(z)‖², in feature units

    @property
    def generators(self) -> ClassGenerators | None:
        """The fitted class generators (None before the first fit)."""
        return self._generators

    # ------------------------------------------------------------------ loss
    def distance(self, feats: Tensor, y: Tensor, *, generator: torch.Generator | None, differentiable: bool) -> Tensor:
        """``d_{M_y}(feats)`` (B,) with this objective's latent settings."""
        assert self._generators is not None
        return manifold_distance(
            self._generators, feats, y, steps=self.latent_steps, lr=self.latent_lr, generator=generator,
            differentiable=differentiable,
        )

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        if self._generators is None:
            if self._train is None:
                raise ConfigError(
                    "MCAT fits its class manifolds on the training features: call "
                    "on_train_begin(model, class_counts=..., epochs=..., train=(x, y)) first (the Trainer does)"
                )
            self._refit(model, epoch=0)
        head = classifier_head(model)
        self._check_etf(head)
        gens = self._generators
        assert gens is not None
        gens.to(x.device)

        # MS-PGD: the head's input is captured in the attack's own forward pass, so each step is one forward.
        box: dict[str, Tensor] = {}
        handle = head.register_forward_pre_hook(lambda _m, inputs: box.__setitem__("features", inputs[0]))

        def manifold_supported_ce(logits: Tensor, ref: Tensor) -> Tensor:
            ce = cross_entropy(logits, ref)
            if self.lambda_attack == 0:
                return ce
            d = self.distance(box["features"].flatten(1), ref, generator=generator,
                              differentiable=not self.code_compat)
            return ce - self.lambda_attack * d

        try:
            x_adv = self.attack(model, x, y, self.threat, loss_fn=manifold_supported_ce, generator=generator).x_adv
        finally:
            handle.remove()

        d_clean = None
        if self.log_drift:  # before the training forward: restoring BatchNorm buffers after it would break backward
            with frozen_model(model), torch.no_grad():
                clean_feats = logits_and_features(model, x)[1]
            d_clean = self.distance(clean_feats, y, generator=generator, differentiable=False).mean()

        logits, feats = logits_and_features(model, x_adv)  # the training forward, in the model's own mode
        outer_manifold = self.lambda_manifold > 0 and not self.code_compat
        d_adv = self.distance(feats, y, generator=generator, differentiable=outer_manifold)
        etf = etf_penalty(head.weight)
        loss = cross_entropy(logits, y) + etf * self.beta
        if outer_manifold:
            loss = loss + self.lambda_manifold * d_adv
        metrics: dict[str, float | Tensor] = {
            **attack_metrics(logits, y), "manifold_adv": d_adv.detach().mean(), "etf_penalty": etf.detach(),
        }
        if d_clean is not None:
            metrics.update(manifold_clean=d_clean, manifold_drift=metrics["manifold_adv"] - d_clean)
        return ObjectiveOutput(loss=loss, logits=logits, metrics=metrics)

    def _check_etf(self, head: nn.Linear) -> None:
        classes, dim = head.weight.shape
        if dim < classes - 1 and not self._warned_etf:
            self._warned_etf = True
            log.warning("MCAT: feature width %d < classes - 1 = %d, so no exact simplex ETF exists and R_ETF stays "
                        "above 0 at its optimum", dim, classes - 1)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {**super().state_dict(), "fitted_epoch": self._fitted_epoch, "generators": None}
        gens = self._generators
        if gens is None:
            return state
        blob = save_tensors({k: v.detach().cpu().contiguous() for k, v in gens.state_dict().items()})
        if len(blob) > self.max_state_mb * 2**20:
            log.info("mcat: generators of %.1f MB not embedded in the state (max_state_mb=%g); a resumed run refits",
                     len(blob) / 2**20, self.max_state_mb)
            return state
        state["generators"] = {
            "num_classes": gens.num_classes, "feature_dim": gens.feature_dim, "latent_dim": gens.latent_dim,
            "hidden": gens.hidden, "encoder": gens.has_encoder, "tensors": base64.b64encode(blob).decode("ascii"),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._generators, self._fitted_epoch = None, state.get("fitted_epoch")
        spec = state.get("generators")
        if not spec:
            self._fitted_epoch = None  # refit at the next epoch
            return
        gens = ClassGenerators(
            spec["num_classes"], spec["feature_dim"], latent_dim=spec["latent_dim"], hidden=spec["hidden"],
            encoder=spec["encoder"],
        )
        gens.load_state_dict(load_tensors(base64.b64decode(spec["tensors"])))
        self._generators = gens.eval()
