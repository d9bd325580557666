"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE / APGD-DLR and targeted APGD-T, step size without tuning.

Update (ascent on a per-example loss L; P projects onto ``B(x, ε) ∩ box``; ``step`` is ``sign`` for L∞ and
``g/‖g‖₂`` for L2, as the threat model decides):

    z^{k+1} = P( x^k + η^k · step(∇ₓ L(x^k)) )
    x^{k+1} = P( x^k + α (z^{k+1} − x^k) + (1 − α)(x^k − x^{k−1}) )     (x¹ = z¹: no momentum at first)

with α = ``momentum`` = 0.75 and η⁰ = 2ε per sample. At the checkpoints w_j (``checkpoints(N)``; for
N = 100: 0, 22, 41, 57, 70, 80, 87, 93, 99) η is halved and the iterate (and its gradient) is reset to
the best-loss point, for the samples where

    (a) Σ_{i=w_{j−1}}^{w_j − 1} 1[L(x^{i+1}) > L(x^i)] ≤ ρ · (w_j − w_{j−1})     (ρ = 0.75), or
    (b) η was not reduced at w_{j−1} and the best loss did not improve since w_{j−1}.

Paper defaults (AutoAttack "standard"): N = 100 iterations, 1 restart, APGD-CE then APGD-T on the
targeted DLR loss ``−(z_y − z_t) / (z_{π1} − (z_{π3} + z_{π4})/2)`` over the 9 classes with the highest
clean logits. Success of APGD-T means misclassified (any class), as in AutoAttack.

Faithful to the released code (fra31/auto-attack ``autopgd_base.py``): the checkpoint schedule in integer
arithmetic (first interval ``⌊0.22 N⌋``, shrinking by ``⌊0.03 N⌋`` down to ``⌊0.06 N⌋``; the paper's
``⌈p_j N⌉`` agrees for N = 100), the ``≤`` in (a), the random start (L∞: ``x + ε t / ‖t‖∞``, t ~ U(−1, 1);
L2: ``x + ε t / ‖t‖₂``, t ~ N(0, I); other norms: the threat model's random start), the momentum term
kept across a reset. One difference: the code compares the first step's loss with 0 at the first
checkpoint (it reads an unfilled slot); here it is compared with the loss at the start, as in the paper.

* **Best points**: the result is the first misclassified (or, targeted, on-target) iterate where one
  exists, else the best-loss iterate; a point broken at any iterate stays broken. Logits and loss come from
  the gradient queries, so no scoring forward is needed.
* **Early stop** (``early_stop=True``, the default): broken samples leave the working batch (one host
  synchronization per step). Each sample's trajectory is its own, so the result equals ``early_stop=False``.
* **Restarts** (and APGD-T's target classes) run only on samples not broken yet. The random start of restart r
  (towards target class k) comes from the sample's own stream, ``problem.streams.at(k, r)``
  (:mod:`sparring.attacks.rng`), so a sample's result depends neither on its batch mates nor, with global ids,
  on the batch size.
* **EOT** for randomized models: pass ``gradients=EOT(n=20)`` (:mod:`sparring.gradients.eot`); every query then
  averages n forward/backward passes (``queries`` counts queries, not passes).
* **Targeted** APGD: pass ``target=``; the loss becomes ``−L(f(x'), t)`` and success means ``f(x') = t``.

``benchmarks/apgd_crosscheck.py`` checks APGD-CE and APGD-T against torchattacks' port of the reference
code. (With the same random starts the per-sample results agreed exactly; since the starts come from per-sample
streams, the two draw different starts and agree in robust accuracy, not point by point.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

import sparring.progress as progress
from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem, row_mask
from sparring.attacks.rng import SampleStreams
from sparring.errors import ConfigError
from sparring.gradients import GradientSource
from sparring.losses import dlr_targeted, get_loss
from sparring.threat import ThreatModel, per_sample

_TINY = 1e-12


def checkpoints(steps: int) -> list[int]:
    """The step counts ``w_0 = 0 < w_1 < …  ≤ steps`` after which APGD may halve its step size.

    As the released code: ``w_1 = max(⌊0.22 N⌋, 1)``, then intervals shrink by ``max(⌊0.03 N⌋, 1)`` down to
    ``max(⌊0.06 N⌋, 1)``. ``checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    interval = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points = [0]
    while points[-1] + interval <= steps:
        points.append(points[-1] + interval)
        interval = max(interval - shrink, shortest)
    return points


def apgd_start(
    threat: ThreatModel, x: Tensor, generator: torch.Generator | None, streams: SampleStreams | None = None
) -> Tensor:
    """The released code's random start, for every row of ``x`` (then projected onto the threat set); from the
    rows' ``streams`` when given (row i's start depends on its stream alone), else from ``generator``."""
    eps = threat.eps_for(x)
    if threat.norm == "linf":
        if streams is not None:
            t = streams.uniform(x.shape[1:], dtype=x.dtype).mul_(2).sub_(1)
        else:
            t = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
        scale = per_sample(t.flatten(1).abs().amax(1), x).clamp_min(_TINY)
    elif threat.norm == "l2":
        if streams is not None:
            t = streams.normal(x.shape[1:], dtype=x.dtype)
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        scale = per_sample(torch.linalg.vector_norm(t.flatten(1), dim=1), x) + _TINY
    else:
        return threat.random_start(x, generator, streams=streams)
    return threat.project(t.mul_(eps).div_(scale).add_(x), x)


@ATTACKS.register("apgd")
@dataclass(kw_only=True)
class APGD(Attack):
    """APGD-``loss`` (``"ce"`` or ``"dlr"``; any registered loss works) with ``restarts`` random starts.

    Attributes:
        steps: iterations N per restart (each one forward and one backward, plus one at the start).
        restarts: number of starts; later ones only attack samples still robust.
        rho: the fraction ρ of loss-increasing steps below which a checkpoint halves the step size.
        momentum: the weight α of the new step against the previous displacement.
        early_stop: stop attacking a sample once it is broken (the result is the same). Ignored with
            ``train_mode=True``, where BatchNorm's batch statistics couple the samples.
    """

    name = "apgd"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    early_stop: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.score:
            raise ConfigError(f"{self.name} always knows which points it broke: score=False is not supported")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not 0.0 < self.rho <= 1.0:
            raise ConfigError(f"rho must lie in (0, 1], got {self.rho}")
        if not 0.0 < self.momentum <= 1.0:
            raise ConfigError(f"momentum must lie in (0, 1], got {self.momentum}")

    @property
    def label(self) -> str:
        """``apgd_ce``, ``apgd_dlr``, ...: AutoAttack's names."""
        return f"apgd_{self.loss}"

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        best = _restarts(self, model, problem, generator, None, stream=0)
        return best.result(queries=(self.steps + 1) * self.restarts)


@ATTACKS.register("apgd_t")
@dataclass(kw_only=True)
class APGDTargeted(APGD):
    """APGD-T: APGD on the targeted DLR loss towards each of the ``targets`` most likely wrong classes.

    Target classes are ranked by the clean logits (the true class excluded), at most K − 1 of them; each
    one (with ``restarts`` starts) attacks only the samples no earlier one broke. Success means the
    prediction differs from ``y``, whichever class it is. The returned ``loss`` is the targeted DLR loss
    towards the target class of the run that produced ``x_adv``.

    Attributes:
        loss: must be ``"dlr"`` (the targeted DLR loss is what APGD-T maximizes). A custom ``loss_fn``
            passed at call time is called as ``loss_fn(logits, ref)`` with ``ref`` (B, 2) = [label, target].
        targets: number of target classes (AutoAttack: 9).
        steps, restarts, rho, momentum, early_stop: as :class:`APGD` (inherited), per target class.
    """

    name = "apgd_t"
    loss: str = "dlr"
    targets: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "dlr":
            raise ConfigError(f"apgd_t maximizes the targeted DLR loss: loss must be 'dlr', got {self.loss!r}")
        if self.targets < 1:
            raise ConfigError(f"targets must be >= 1, got {self.targets}")

    @property
    def label(self) -> str:
        return "apgd_t"

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        if problem.target is not None:
            raise ConfigError("apgd_t picks its own target classes; for a given target use apgd with target=")
        x, y, threat = problem.x, problem.y, problem.threat
        with torch.no_grad():
            clean = model(x).float()  # (B, K): ranks the target classes
        classes = clean.shape[1]
        if classes < 4:
            raise ConfigError(f"apgd_t needs at least 4 classes (targeted DLR), the model has {classes}")
        n_targets = min(self.targets, classes - 1)
        ranked = clean.scatter(1, y[:, None], float("-inf")).sort(dim=1, descending=True, stable=True).indices
        loss_fn = dlr_targeted if problem.loss_fn is get_loss(self.loss) else problem.loss_fn
        best: _Outcome | None = None
        for k in range(n_targets):  # success stays "misclassified": the problem has no target
            progress.report(k, n_targets)
            towards = Problem(x=x, y=y, threat=threat, loss_fn=loss_fn, loss_ref=torch.stack([y, ranked[:, k]], 1),
                              streams=problem.streams)
            best = _restarts(self, model, towards, generator, best, stream=k)
        assert best is not None
        return best.result(queries=1 + (self.steps + 1) * self.restarts * n_targets)


def _restarts(
    attack: APGD, model: nn.Module, problem: Problem, generator: torch.Generator | None,
    best: _Outcome | None, *, stream: int,
) -> _Outcome:
    """``attack.restarts`` APGD runs, each on the rows of ``problem`` that ``best`` (if any) has not broken; restart r
    starts from each row's sub-stream ``(stream, r)``."""
    for restart in range(attack.restarts):
        if best is None:
            start = apgd_start(problem.threat, problem.x, generator, problem.random().at(stream, restart))
            best = _apgd(model, problem, attack.gradients, start, **_settings(attack))
            continue
        rows = (~best.success).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        sub = problem.rows(rows)  # each row keeps its stream: its start is the same in any batch
        start = apgd_start(sub.threat, sub.x, generator, sub.random().at(stream, restart))
        best.merge(_apgd(model, sub, attack.gradients, start, **_settings(attack)), rows)
    assert best is not None
    return best


def _settings(attack: APGD) -> dict[str, object]:
    # In train mode BatchNorm's batch statistics couple the rows: keep the working batch whole.
    early_stop = attack.early_stop and not attack.train_mode
    return {"steps": attack.steps, "rho": attack.rho, "momentum": attack.momentum, "early_stop": early_stop}


# ------------------------------------------------------------------------------------------ the inner loop
@dataclass
class _Outcome:
    """Per-sample result of APGD runs on a batch: the returned point and its success, loss and logits."""

    x: Tensor
    success: Tensor
    loss: Tensor
    logits: Tensor

    def merge(self, other: _Outcome, rows: Tensor) -> None:
        """Take ``other`` (computed on ``rows``) where it ranks higher by (success, loss)."""
        mine_success, mine_loss = self.success[rows], self.loss[rows]
        better = torch.where(other.success == mine_success, other.loss > mine_loss, other.success)
        take = rows[better]
        keep = better.nonzero().squeeze(1)
        self.x[take], self.loss[take], self.logits[take] = other.x[keep], other.loss[keep], other.logits[keep]
        self.success[take] = other.success[keep]

    def result(self, queries: int) -> AttackResult:
        return AttackResult(
            x_adv=self.x, success=self.success, loss=self.loss, logits=self.logits, queries=queries, time_s=0.0
        )


@dataclass
class _State:
    """Per-row state of one APGD run over the rows still attacked (every tensor indexed by row)."""

    x: Tensor  # (b, ...) clean inputs of these rows
    cur: Tensor  # x^k
    prev: Tensor  # x^{k−1}
    grad: Tensor  # gradient at x^k (or at the best point after a reset)
    eta: Tensor  # (b, 1, ..., 1) step size
    loss_prev: Tensor  # (b,) loss at the last iterate
    increases: Tensor  # (b,) loss increases since the last checkpoint
    reduced: Tensor  # (b,) bool: η was halved at the last checkpoint
    best_at_check: Tensor  # (b,) best loss at the last checkpoint
    best_x: Tensor
    best_grad: Tensor
    best_loss: Tensor
    best_logits: Tensor
    found: Tensor  # (b,) bool: broken at some iterate
    found_x: Tensor  # the first broken iterate
    found_loss: Tensor
    found_logits: Tensor

    def rows(self, keep: Tensor) -> _State:
        return _State(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def answer(self) -> tuple[Tensor, Tensor, Tensor]:
        """The returned point, loss and logits: the first broken iterate, else the best-loss one."""
        f = self.found
        return (
            torch.where(row_mask(f, self.x), self.found_x, self.best_x),
            torch.where(f, self.found_loss, self.best_loss),
            torch.where(row_mask(f, self.best_logits), self.found_logits, self.best_logits),
        )


def _apgd(
    model: nn.Module, problem: Problem, gradients: GradientSource, start: Tensor, *,
    steps: int, rho: float, momentum: float, early_stop: bool,
) -> _Outcome:
    """One APGD run from ``start`` on every row of ``problem``: ``steps`` iterations, ``steps + 1`` queries."""
    interval = {w: w - v for v, w in zip(checkpoints(steps), checkpoints(steps)[1:], strict=False)}
    g = problem.query(gradients, model, start)
    with torch.no_grad():
        found = problem.success(g.logits)
        s = _State(
            x=problem.x, cur=start, prev=start, grad=g.grad, eta=2.0 * problem.threat.eps_for(problem.x),
            loss_prev=g.loss, increases=torch.zeros_like(found, dtype=torch.int32),
            reduced=torch.ones_like(found), best_at_check=g.loss.clone(),
            best_x=start.clone(), best_grad=g.grad.clone(), best_loss=g.loss.clone(), best_logits=g.logits.clone(),
            found=found, found_x=start.clone(), found_loss=g.loss.clone(), found_logits=g.logits.clone(),
        )
    out = _Outcome(
        x=torch.empty_like(start), success=torch.zeros_like(found),
        loss=torch.empty_like(g.loss), logits=torch.empty_like(g.logits),
    )
    index = torch.arange(start.shape[0], device=start.device)  # rows of ``problem`` still attacked

    for i in range(steps):
        if early_stop:  # drop the broken rows: one host synchronization per step
            keep = (~s.found).nonzero().squeeze(1)
            if keep.numel() < index.numel():
                _emit(out, index, s)
                if keep.numel() == 0:
                    return out
                s, index, problem = s.rows(keep), index[keep], problem.rows(keep)
        threat = problem.threat  # (the working rows' ε)
        with torch.no_grad():
            z = threat.project(s.cur + threat.step(s.grad, s.eta), s.x)
            if i > 0:  # x^k + α (z − x^k) + (1 − α)(x^k − x^{k−1})
                z = threat.project(torch.lerp(s.cur, z, momentum).add_(s.cur - s.prev, alpha=1.0 - momentum), s.x)
            s.prev, s.cur = s.cur, z
        g = problem.query(gradients, model, s.cur)
        with torch.no_grad():
            _record(s, g.loss, g.grad, g.logits, problem.success(g.logits))
            if i + 1 in interval:
                _checkpoint(s, interval[i + 1], rho)
    _emit(out, index, s)
    return out


def _record(s: _State, loss: Tensor, grad: Tensor, logits: Tensor, success: Tensor) -> None:
    """Book the new iterate ``s.cur``: first broken point, best-loss point, loss increases. No host sync."""
    new = success & ~s.found
    torch.where(row_mask(new, s.cur), s.cur, s.found_x, out=s.found_x)
    torch.where(new, loss, s.found_loss, out=s.found_loss)
    torch.where(row_mask(new, logits), logits, s.found_logits, out=s.found_logits)
    s.found |= success
    s.increases += loss > s.loss_prev
    s.loss_prev = loss
    better = loss > s.best_loss
    rows = row_mask(better, s.cur)
    torch.where(rows, s.cur, s.best_x, out=s.best_x)
    torch.where(rows, grad, s.best_grad, out=s.best_grad)
    torch.where(better, loss, s.best_loss, out=s.best_loss)
    torch.where(row_mask(better, logits), logits, s.best_logits, out=s.best_logits)
    s.grad = grad


def _checkpoint(s: _State, length: int, rho: float) -> None:
    """Halve η and go back to the best point where the loss oscillated (a) or stalled after no cut (b)."""
    cut = (s.increases <= length * rho) | (~s.reduced & (s.best_at_check >= s.best_loss))
    rows = row_mask(cut, s.x)
    s.eta = torch.where(rows, 0.5 * s.eta, s.eta)
    s.cur = torch.where(rows, s.best_x, s.cur)
    s.grad = torch.where(rows, s.best_grad, s.grad)
    s.reduced = cut
    s.best_at_check = s.best_loss.clone()
    s.increases.zero_()


def _emit(out: _Outcome, index: Tensor, s: _State) -> None:
    """Write the current answer of the working rows into ``out`` (broken rows are final)."""
    x, loss, logits = s.answer()
    out.x.index_copy_(0, index, x)
    out.loss.index_copy_(0, index, loss)
    out.logits.index_copy_(0, index, logits)
    out.success.index_copy_(0, index, s.found)
