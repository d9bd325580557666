"""Cascades of attacks and the named evaluation suites (AutoAttack's composition, Croce & Hein 2020).

A cascade runs its attacks in order; each attack only sees the points no earlier attack broke, and a
point is robust only if every attack failed on it (the per-sample worst case). Running later attacks on
fewer points is what makes a strong suite affordable.

Named suites (``suite(name)``; ``sparring eval --suite NAME`` takes the same names):

* ``fast``: APGD-CE (100 steps) → APGD on the CW margin (100 steps). The margin's gradient does not vanish
  when the logits saturate, which fools CE (AutoAttack's lesson: a scale-invariant loss in every suite).
* ``standard``: AutoAttack's standard version without FAB-T: APGD-CE (100 steps, 1 restart) →
  APGD-T (targeted DLR, 9 target classes × 100 steps) → Square (5000 queries, p_init 0.8).
* ``plus``: APGD-CE and APGD-DLR with 5 restarts each → APGD-T (9 targets) → Square (5000 queries).
  AutoAttack's plus runs Square before APGD-T; here the black-box attack runs last so the evaluation's
  black-box check compares it with every white-box attack. The worst case is the same set of attacks.
* ``rand``: for randomized models (the ``deterministic_model`` check fails): AutoAttack's ``rand`` version,
  APGD-CE → APGD-DLR (100 steps, 1 restart each) with every gradient an EOT average of 20 draws
  (:class:`~sparring.gradients.eot.EOT`); success is judged on the last draw, as AutoAttack does.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparring.attacks.apgd import APGD, APGDTargeted
from sparring.attacks.base import Attack
from sparring.attacks.rng import SampleStreams
from sparring.attacks.square import Square
from sparring.errors import ConfigError
from sparring.gradients.eot import EOT
from sparring.progress import listening
from sparring.threat import ThreatModel

NOT_BROKEN = -1


@dataclass
class CascadeResult:
    """The outcome of a cascade on a batch.

    Attributes:
        broken_by: (B,) long: index of the first attack that broke the point, ``NOT_BROKEN`` (−1) if none
            did or the point was not attacked.
        x_adv: (B, ...) the breaking input where broken, else the clean input.
        time_s / queries: per attack, seconds spent and the most queries any point used.
        attacked: per attack, how many points it ran on.
    """

    broken_by: Tensor
    x_adv: Tensor
    time_s: list[float]
    queries: list[int]
    attacked: list[int]


@dataclass(frozen=True)
class Cascade:
    """Attacks run in order, each on the points still robust.

    Attributes:
        attacks: the attacks, in order.
        labels: one readable, unique label per attack (default: derived from the attacks).
        name: the suite's name, for reports.
    """

    attacks: tuple[Attack, ...]
    labels: tuple[str, ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ConfigError("a cascade needs at least one attack")
        unscored = [a.name for a in self.attacks if not a.score]
        if unscored:
            raise ConfigError(f"evaluation needs scored attacks; {unscored} were built with score=False")
        if not self.labels:
            object.__setattr__(self, "labels", tuple(unique_labels(self.attacks)))
        if len(self.labels) != len(self.attacks) or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"a cascade needs one unique label per attack, got {list(self.labels)}")

    @property
    def has_black_box(self) -> bool:
        return any(a.black_box for a in self.attacks)

    def with_precision(self, precision: str) -> Cascade:
        """The same cascade with every attack's forward passes at ``precision`` (``fp32`` / ``bf16``)."""
        attacks = tuple(dataclasses.replace(a, precision=precision) for a in self.attacks)
        return Cascade(attacks=attacks, labels=self.labels, name=self.name)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "attacks": [{"label": label, **a.describe()}
                                               for label, a in zip(self.labels, self.attacks, strict=True)]}

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        active: Tensor | None = None,
        generator_for: Callable[[int], torch.Generator | None] = lambda k: None,
        streams_for: Callable[[int], SampleStreams | None] = lambda k: None,
        verify: Callable[[Tensor, Tensor], Tensor] | None = None,
        progress: Callable[[int, float], None] | None = None,
    ) -> CascadeResult:
        """Run the cascade on a batch.

        Args:
            active: (B,) bool, the points to attack (default all; evaluation passes the correctly
                classified ones).
            generator_for: the random generator of attack ``k`` (one per attack keeps attacks independent).
            streams_for: the per-sample random streams (B rows) of attack ``k``; each attack gets the rows it
                attacks, so a point's draws do not depend on which other points are still robust.
            verify: ``(x_adv, y) -> (B,) bool`` confirming a break (evaluation re-checks bf16 attacks in fp32).
            progress: called with ``(attack index, fraction of this batch done)`` as attacks report progress.
        """
        still = torch.ones_like(y, dtype=torch.bool) if active is None else active.clone()
        broken_by = torch.full_like(y, NOT_BROKEN)
        x_adv = x.detach().clone()
        times, queries, attacked = [], [], []
        for k, attack in enumerate(self.attacks):
            rows = still.nonzero().squeeze(1)
            attacked.append(int(rows.numel()))
            if rows.numel() == 0:
                times.append(0.0)
                queries.append(0)
                continue
            start = time.perf_counter()
            with listening(None if progress is None else functools.partial(_fraction, progress, k)):
                streams = streams_for(k)
                result = attack(model, x[rows], y[rows], threat.subset(rows), generator=generator_for(k),
                                streams=None if streams is None else streams.rows(rows))
            success = result.success
            assert success is not None  # scored attacks only (checked in __post_init__)
            if verify is not None and bool(success.any()):
                success = success & verify(result.x_adv, y[rows])
            times.append(time.perf_counter() - start)
            queries.append(result.queries)
            hit = rows[success]
            broken_by[hit] = k
            x_adv[hit] = result.x_adv[success]
            still[hit] = False
        return CascadeResult(broken_by=broken_by, x_adv=x_adv, time_s=times, queries=queries, attacked=attacked)


def _fraction(progress: Callable[[int, float], None], k: int, done: int, total: int) -> None:
    progress(k, done / max(total, 1))


# ----------------------------------------------------------------------------- named suites
def _fast() -> Cascade:
    return Cascade(attacks=(APGD(loss="ce"), APGD(loss="margin")), labels=("apgd_ce", "apgd_margin"), name="fast")


def _standard() -> Cascade:
    return Cascade(
        attacks=(APGD(loss="ce"), APGDTargeted(targets=9), Square(queries=5000, p_init=0.8)),
        labels=("apgd_ce", "apgd_t", "square"), name="standard",
    )


def _plus() -> Cascade:
    return Cascade(
        attacks=(APGD(loss="ce", restarts=5), APGD(loss="dlr", restarts=5), APGDTargeted(targets=9),
                 Square(queries=5000, p_init=0.8)),
        labels=("apgd_ce", "apgd_dlr", "apgd_t", "square"), name="plus",
    )


def _rand() -> Cascade:
    return Cascade(
        attacks=(APGD(loss="ce", restarts=1, gradients=EOT(n=20)), APGD(loss="dlr", restarts=1, gradients=EOT(n=20))),
        labels=("apgd_ce", "apgd_dlr"), name="rand",
    )


SUITES: dict[str, Callable[[], Cascade]] = {"fast": _fast, "standard": _standard, "plus": _plus, "rand": _rand}


def suite(name: str) -> Cascade:
    """A named suite: ``fast``, ``standard``, ``plus`` or ``rand`` (randomized models)."""
    try:
        return SUITES[name]()
    except KeyError:
        raise ConfigError(f"unknown suite {name!r}; available: {', '.join(SUITES)}") from None


def as_cascade(attacks: str | Cascade | Sequence[Attack]) -> Cascade:
    """A suite name, a cascade, or a list of attacks (run in that order) as a :class:`Cascade`."""
    if isinstance(attacks, str):
        return suite(attacks)
    if isinstance(attacks, Cascade):
        return attacks
    return Cascade(attacks=tuple(attacks))


def check_attacks_fit(attacks: Sequence[Attack], threat: ThreatModel) -> None:
    """A ConfigError naming the first attack that cannot run under ``threat``: gradient attacks need a norm ball
    (a threat with a step), point-set attacks (``inputs == "point_set"``) need the ``points`` threat."""
    for attack in attacks:
        wants_set = attack.inputs == "point_set"
        if wants_set and threat.norm != "points":
            raise ConfigError(f"attack {attack.name!r} needs the point-set threat (norm: points), got {threat.norm}")
        if not wants_set and not threat.steppable:
            raise ConfigError(
                f"attack {attack.name!r} needs a norm-ball threat; under norm: {threat.norm} use point_drop / point_add"
            )


def unique_labels(attacks: Sequence[Attack]) -> list[str]:
    """Unique, readable labels: ``pgd``, ``pgd_margin``, ``pgd_2`` ..."""
    labels: list[str] = []
    for attack in attacks:
        label, k = attack.label, 2
        while label in labels:
            label, k = f"{attack.label}_{k}", k + 1
        labels.append(label)
    return labels
