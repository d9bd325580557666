"""What every attack shares: its result type, its calling convention and the input checks.

An attack is a keyword-only dataclass holding its optimizer settings (steps, step size, restarts, loss,
gradient source). It is called as ``attack(model, x, y, threat)`` and returns an :class:`AttackResult`.
The threat model (the set of allowed perturbations) is an argument, not a setting, so one attack object
serves every ε and norm. ``__call__`` validates the batch, enters the one restoring context
(:func:`sparring.context.frozen_model`) and delegates to ``_run(model, problem, generator)``, where a
:class:`Problem` bundles the batch, the threat model, the loss and the per-sample random streams; subclasses
implement only ``_run``.

Randomness: attacks draw through ``problem.streams`` (:class:`~sparring.attacks.rng.SampleStreams`, one
counter-based stream per sample), so a sample's draws depend on its identity, not on its batch mates or on the
batch size. ``streams=`` gives the identities (``SampleStreams.of(seed, ids)``, as :func:`sparring.evaluate.evaluate`
does with global indices); without it the rows are numbered 0 … B−1 under a seed drawn once from ``generator``.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from sparring.attacks.rng import SampleStreams
from sparring.context import frozen_model
from sparring.errors import ConfigError, DataError
from sparring.gradients import Autograd, GradientSource, GradientStep
from sparring.losses import IGNORE, LossFn, get_loss, targeted
from sparring.registry import Registry
from sparring.threat import ThreatModel

ATTACKS: Registry[type[Attack]] = Registry("attack")


#: What an attack needs as inputs (the ``inputs`` contract flag of :class:`Attack`).
AttackInputs = Literal["any", "points", "point_set", "l1"]


@dataclass
class AttackResult:
    """The outcome of an attack on a batch.

    Attributes:
        x_adv: adversarial inputs, same shape as ``x``, inside the threat set.
        success: (B,) bool; untargeted: the prediction on ``x_adv`` differs from ``y``; targeted: it
            equals the target. None when the attack ran with ``score=False``.
        loss: (B,) the attack loss at ``x_adv`` (the value the attack maximized), or None.
        logits: (B, K) model outputs at ``x_adv``, or None.
        queries: model evaluations (forward passes, with or without backward) per sample.
        time_s: wall-clock seconds spent in the attack.
        min_norm: (B,) for minimum-norm attacks (FMN, FAB-T): the norm of the smallest adversarial perturbation
            found per sample, whatever ε (0 where the clean input is already misclassified, inf where none was
            found); None for the other attacks.
    """

    x_adv: Tensor
    success: Tensor | None
    loss: Tensor | None
    logits: Tensor | None
    queries: int
    time_s: float
    min_norm: Tensor | None = None

    @property
    def robust(self) -> Tensor:
        """(B,) bool: the attack failed on this sample."""
        if self.success is None:
            raise ValueError("this attack ran with score=False: build it with score=True to know which points it broke")
        return ~self.success


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One batch to attack: what every attack's inner loop needs, indexable by rows together.

    Attributes:
        x: clean inputs (B, ...); y: labels (B,); threat: the perturbation set (per-sample ε allowed);
        loss_fn / loss_ref: the per-example loss to maximize and its per-sample reference;
        target: (B,) target classes of a targeted attack, else None;
        streams: the samples' random streams (:class:`~sparring.attacks.rng.SampleStreams`; set by
        :meth:`Attack.__call__`, None only for a problem built by hand).
    """

    x: Tensor
    y: Tensor
    threat: ThreatModel
    loss_fn: LossFn
    loss_ref: Tensor
    target: Tensor | None = None
    streams: SampleStreams | None = None

    def rows(self, index: Tensor) -> Problem:
        """The sub-problem of the samples ``index`` (restarts attack only the still-robust ones); each sample
        keeps its random stream."""
        return Problem(
            x=self.x[index], y=self.y[index], threat=self.threat.subset(index), loss_fn=self.loss_fn,
            loss_ref=self.loss_ref[index], target=None if self.target is None else self.target[index],
            streams=None if self.streams is None else self.streams.rows(index),
        )

    def random(self) -> SampleStreams:
        """The samples' random streams (a problem built by hand without them: rows 0 … B−1, a fresh seed)."""
        if self.streams is None:
            return SampleStreams.from_generator(None, self.x.shape[0], self.x.device)
        return self.streams

    def query(self, gradients: GradientSource, model: nn.Module, x_adv: Tensor, *, scores: bool = True) -> GradientStep:
        """Input gradient at ``x_adv`` from the given gradient source, with loss and logits if ``scores``."""
        step = gradients(model, x_adv, self.loss_fn, self.loss_ref)
        if scores and not step.scored:
            raise ConfigError(
                "this gradient source stops the forward pass early and gives no loss or logits, which this attack "
                "needs to rank its iterates: use FGSM, or PGD with keep_best=False and score=False"
            )
        return step

    def success(self, logits: Tensor) -> Tensor:
        """(B,) bool: misclassified (untargeted) or predicted as the target (targeted)."""
        return success_of(logits, self.y, self.target)


@dataclass(kw_only=True)
class Attack(ABC):
    """Base class. Settings are keyword-only fields; the threat model is passed at call time.

    Attributes:
        loss: name of the per-example loss to maximize (``"ce"``, ``"margin"``, ``"dlr"``).
        gradients: where input gradients come from (default: autograd).
        train_mode: run the model in training mode during the attack (BatchNorm on batch statistics);
            the caller's model is restored either way.
        score: evaluate the returned input with one more forward pass (``success``, ``loss``,
            ``logits``). Training objectives that only need ``x_adv`` turn it off and save that pass.
        precision: ``"fp32"`` or ``"bf16"``: run the model's forward passes under bfloat16 autocast
            (inputs, perturbations and losses stay float32). Evaluation re-checks bf16 successes in fp32.

    Class attributes: ``name`` (the registry name), ``black_box`` (the attack only queries outputs,
    never gradients; the evaluation's check compares such attacks with the white-box ones) and ``inputs``,
    what inputs and threat the attack needs (the contract tests pick their model and batch by it):
    ``"any"`` (any tensor (B, ...), norm-ball threats), ``"points"`` (point clouds (B, N, 3), norm-ball
    threats), ``"point_set"`` (point clouds (B, N, 3) with a :class:`sparring.points.threat.PointSet`) or ``"l1"``
    (any tensor, the L1 threat only: APGD-L1). ``minimum_norm``: the attack searches the smallest adversarial
    perturbation whatever ε and reports it as ``AttackResult.min_norm`` (one run gives a whole ε-curve).
    """

    name: ClassVar[str]
    black_box: ClassVar[bool] = False
    inputs: ClassVar[AttackInputs] = "any"
    minimum_norm: ClassVar[bool] = False
    loss: str = "ce"
    gradients: GradientSource = field(default_factory=Autograd)
    train_mode: bool = False
    score: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        get_loss(self.loss)  # an unknown loss name fails when the attack is built, not mid-training
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def label(self) -> str:
        """A readable name for reports: the registry name, plus the loss when it is not the default."""
        default = type(self).__dataclass_fields__["loss"].default
        return self.name if self.loss == default else f"{self.name}_{self.loss}"

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        target: Tensor | None = None,
        loss_fn: LossFn | None = None,
        loss_ref: Tensor | None = None,
        generator: torch.Generator | None = None,
        streams: SampleStreams | None = None,
    ) -> AttackResult:
        """Attack ``model`` at inputs ``x`` (B, ...) with labels ``y`` (B,) within ``threat``.

        Args:
            target: (B,) target classes for a targeted attack; success means predicting them.
            loss_fn: a custom per-example loss ``(logits, ref) -> (B,)`` to maximize instead of the
                configured one (TRADES maximizes a KL to the clean prediction this way).
            loss_ref: the per-sample reference for ``loss_fn`` (default ``y``, or ``target``).
            generator: the source of randomness when ``streams`` is not given: one seed is drawn from it (from
                the global generator when None) and row i draws from stream i; a seed gives the same result.
            streams: (B,) per-sample random streams, e.g. ``SampleStreams.of(seed, ids)`` with ``ids`` the
                samples' global indices: then a sample's result depends neither on its batch mates nor on the
                batch size (:func:`sparring.evaluate.evaluate` does this).
        """
        check_batch(x, y, threat)
        if target is not None and target.shape != y.shape:
            raise DataError(f"target has shape {tuple(target.shape)}, expected {tuple(y.shape)}")
        if loss_fn is None:
            loss_fn = get_loss(self.loss)
            if target is not None:
                loss_fn = targeted(loss_fn)
        if loss_ref is None:
            loss_ref = y if target is None else target
        if streams is None:
            streams = SampleStreams.from_generator(generator, x.shape[0], x.device)
        elif len(streams) != x.shape[0]:
            raise DataError(f"streams has {len(streams)} rows, the batch has {x.shape[0]} samples")
        problem = Problem(x=x.detach(), y=y, threat=threat, loss_fn=loss_fn, loss_ref=loss_ref, target=target,
                          streams=streams.to(x.device))
        start = time.perf_counter()
        with frozen_model(model, train_mode=self.train_mode), autocast(self.precision, x.device):
            result = self._run(model, problem, generator)
        result.time_s = time.perf_counter() - start
        return result

    @abstractmethod
    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        """The attack itself; runs inside :func:`frozen_model`."""

    def describe(self) -> dict[str, Any]:
        """The attack's settings as plain data (for reports)."""
        settings = {k: v for k, v in vars(self).items() if isinstance(v, int | float | str | bool | None)}
        describe = getattr(self.gradients, "describe", None)
        if describe is not None:  # a non-default gradient source that names itself (EOT: "eot(n=20)")
            settings["gradients"] = describe()
        return {"name": self.name, **settings}


PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast for ``"bf16"`` (CPU and CUDA), nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def success_of(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(B,) bool: misclassified (untargeted) or predicted as the target (targeted).

    For sequence outputs (logits (B, k, V), references (B, k) tokens) untargeted success means the greedy
    prediction differs from the reference at some position, targeted success that it equals the target
    at every position; positions whose reference is :data:`~sparring.losses.IGNORE` do not count."""
    pred = logits.argmax(-1)
    if target is None:
        wrong = pred != y
        return (wrong & (y != IGNORE)).flatten(1).any(1) if wrong.dim() > 1 else wrong
    right = pred == target
    return (right | (target == IGNORE)).flatten(1).all(1) if right.dim() > 1 else right


def row_mask(mask: Tensor, like: Tensor) -> Tensor:
    """A (B,) row mask shaped (B, 1, ..., 1) to select whole rows of ``like``: inputs, logits (B, K) or sequence
    logits (B, k, V) (``torch.where(row_mask(m, x), x_new, x)``)."""
    return mask.view((-1,) + (1,) * (like.dim() - 1))


def check_batch(x: Tensor, y: Tensor, threat: ThreatModel) -> None:
    """Raise a :class:`DataError` naming the problem if the batch cannot be attacked."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError("x and y must be torch tensors")
    if x.dim() < 2:
        raise DataError(f"x must have a batch dimension and at least one feature dimension, got {tuple(x.shape)}")
    if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        b = x.shape[0]
        raise DataError(f"y must have shape ({b},) (labels) or ({b}, k) (tokens), got {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("x contains NaN or infinite values")
    if threat.bounds is not None:
        lo, hi = threat.bounds
        if x.min() < lo - 1e-6 or x.max() > hi + 1e-6:
            raise DataError(
                f"x lies outside the threat model's bounds {threat.bounds} "
                f"(min {x.min().item():.3g}, max {x.max().item():.3g}); rescale the data or set bounds=None"
            )
    threat.eps_for(x)  # checks a per-sample ε matches the batch
