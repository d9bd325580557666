"""APGD-L1 (Croce & Hein, ICML 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers").

Ascent on a per-example loss L inside ``S = B₁(x, ε) ∩ box``, with a sparse step that minds the box:

    g̃_i = 0 where the box blocks coordinate i in the ascent direction (x^k_i = hi and g_i > 0, or x^k_i = lo, g_i < 0)
    u^k = sign(g̃) · 1[i among the top-k^k coordinates of |g̃|] / ‖…‖₀          (so ‖u^k‖₁ = 1)
    x^{k+1} = P_S( x^k + η^k u^k )       (P_S: the exact projection onto L1 ∩ box, :class:`~sparring.threat.L1Ball`)

Step size and sparsity adapt every ``⌊0.04 N⌋`` iterations (a checkpoint), per sample, as we read the paper and the
released code (fra31/auto-attack, ``norm='L1'``):

* η⁰ = ε and k⁰ = 20 % of the d coordinates;
* if the best loss did not improve since the last checkpoint: η ← η / 1.5 and go back to the best point;
* with s = ‖x_best − x‖₀ the sparsity of the best point: k ← max(⌊s / 1.5⌋, 1) (the code's ⌈·⌉ keeps k = 2 forever
  on a point whose best perturbation has 2 coordinates: we floor); η ← ε if s shrank below 95 % of its value at the
  last checkpoint (a sparser best point: take large steps again), else η ← η / 1.5; finally η ∈ [ε/10, ε].

No momentum (the released code uses none for L1; ``momentum`` < 1 adds APGD's ``x^k + α(z − x^k) + (1 − α)(x^k −
x^{k−1})``). Paper defaults: N = 100 iterations, 1 restart (the paper's evaluations use 5), CE loss (APGD-CE; the
targeted version of AutoAttack-L1 is APGD-T with this step), random start: the threat model's (Laplace direction,
radius uniform in [0, ε], projected).

* **Best points**: the first misclassified (targeted: on-target) iterate where one exists, else the best-loss one;
  a point broken at any iterate stays broken. Loss and logits come from the gradient queries.
* **Early stop** (default): broken samples leave the working batch (one host synchronization per step).
* **Restarts** run on the samples not yet broken; each restart's start comes from the sample's own random stream.
* Needs the L1 threat (``norm: l1``); for L∞ / L2 use ``apgd``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

import sparring.progress as progress
from sparring.attacks.base import ATTACKS, Attack, AttackInputs, AttackResult, Problem, row_mask
from sparring.errors import ConfigError
from sparring.threat import L1Ball

_STEP_REDUCE = 1.5  # η and k shrink by this factor at a checkpoint
_MIN_STEP = 10.0  # η never falls below ε / 10


@ATTACKS.register("apgd_l1")
@dataclass(kw_only=True)
class APGDL1(Attack):
    """l1-APGD-``loss`` with ``restarts`` random starts under an :class:`~sparring.threat.L1Ball`.

    Attributes:
        steps: iterations N per restart (one forward and backward each, plus one at the start).
        restarts: number of starts; later ones only attack samples still robust.
        sparsity: the initial fraction k⁰ / d of coordinates a step moves (paper: 0.2).
        momentum: the weight of the new step against the previous displacement (1: none, the released code).
        early_stop: stop attacking a sample once it is broken (the result is the same). Ignored with
            ``train_mode=True``, where BatchNorm's batch statistics couple the samples.
    """

    name = "apgd_l1"
    inputs: ClassVar[AttackInputs] = "l1"
    steps: int = 100
    restarts: int = 1
    sparsity: float = 0.2
    momentum: float = 1.0
    early_stop: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.score:
            raise ConfigError(f"{self.name} always knows which points it broke: score=False is not supported")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not 0.0 < self.sparsity <= 1.0:
            raise ConfigError(f"sparsity must lie in (0, 1], got {self.sparsity}")
        if not 0.0 < self.momentum <= 1.0:
            raise ConfigError(f"momentum must lie in (0, 1], got {self.momentum}")

    @property
    def label(self) -> str:
        """``apgd_l1_ce``, ``apgd_l1_dlr``, ..."""
        return f"apgd_l1_{self.loss}"

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        if not isinstance(problem.threat, L1Ball):
            raise ConfigError(f"apgd_l1 needs the L1 threat (norm: l1), got {problem.threat.norm!r}; "
                              "for linf / l2 use apgd")
        early_stop = self.early_stop and not self.train_mode
        out: _Outcome | None = None
        streams = problem.random()
        for r in range(self.restarts):
            progress.report(r, self.restarts)
            start = problem.threat.random_start(problem.x, streams=streams.at(r))
            if out is None:
                out = self._apgd(model, problem, start, early_stop)
                continue
            rows = (~out.success).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            out.merge(self._apgd(model, problem.rows(rows), start[rows], early_stop), rows)
        assert out is not None
        return AttackResult(x_adv=out.x, success=out.success, loss=out.loss, logits=out.logits,
                            queries=(self.steps + 1) * self.restarts, time_s=0.0)

    def _apgd(self, model: nn.Module, problem: Problem, start: Tensor, early_stop: bool) -> _Outcome:
        """One run from ``start`` on every row of ``problem``: ``steps`` iterations, ``steps + 1`` queries."""
        every = max(int(0.04 * self.steps), 1)
        d = problem.x[0].numel()
        g = problem.query(self.gradients, model, start)
        with torch.no_grad():
            found = problem.success(g.logits)
            eps = problem.threat.eps_for(problem.x)
            s = _State(
                x=problem.x, cur=start, prev=start, grad=g.grad, eta=eps.clone(), eps=eps,
                k=torch.full_like(g.loss, self.sparsity), sparsity_old=torch.full_like(g.loss, float(d)),
                best_at_check=g.loss.clone(), best_x=start.clone(), best_grad=g.grad.clone(),
                best_loss=g.loss.clone(), best_logits=g.logits.clone(), found=found, found_x=start.clone(),
                found_loss=g.loss.clone(), found_logits=g.logits.clone(),
            )
        out = _Outcome(x=torch.empty_like(start), success=torch.zeros_like(found), loss=torch.empty_like(g.loss),
                       logits=torch.empty_like(g.logits))
        index = torch.arange(start.shape[0], device=start.device)
        for i in range(self.steps):
            if early_stop:  # drop the broken rows: one host synchronization per step
                keep = (~s.found).nonzero().squeeze(1)
                if keep.numel() < index.numel():
                    out.emit(index, s)
                    if keep.numel() == 0:
                        return out
                    s, index, problem = s.rows(keep), index[keep], problem.rows(keep)
            threat = problem.threat
            assert isinstance(threat, L1Ball)
            with torch.no_grad():
                z = threat.project(s.cur + threat.step(_free(s.grad, s.cur, threat), s.eta, sparsity=s.k), s.x)
                if i > 0 and self.momentum < 1.0:
                    z = threat.project(torch.lerp(s.cur, z, self.momentum).add_(s.cur - s.prev,
                                                                                 alpha=1.0 - self.momentum), s.x)
                s.prev, s.cur = s.cur, z
            g = problem.query(self.gradients, model, s.cur)
            with torch.no_grad():
                s.record(g.loss, g.grad, g.logits, problem.success(g.logits))
                if (i + 1) % every == 0:
                    s.checkpoint(d)
        out.emit(index, s)
        return out


def _free(grad: Tensor, cur: Tensor, threat: L1Ball) -> Tensor:
    """The gradient with the coordinates the box blocks in the ascent direction set to 0 ("mind the box")."""
    if threat.bounds is None:
        return grad
    lo, hi = threat.bounds
    blocked = ((cur >= hi) & (grad > 0)) | ((cur <= lo) & (grad < 0))
    return grad.masked_fill(blocked, 0.0)


@dataclass
class _Outcome:
    """Per-sample result of runs on a batch: the returned point and its success, loss and logits."""

    x: Tensor
    success: Tensor
    loss: Tensor
    logits: Tensor

    def merge(self, other: _Outcome, rows: Tensor) -> None:
        """Take ``other`` (computed on ``rows``) where it ranks higher by (success, loss)."""
        better = torch.where(other.success == self.success[rows], other.loss > self.loss[rows], other.success)
        take, keep = rows[better], better.nonzero().squeeze(1)
        self.x[take], self.loss[take], self.logits[take] = other.x[keep], other.loss[keep], other.logits[keep]
        self.success[take] = other.success[keep]

    def emit(self, index: Tensor, s: _State) -> None:
        """Write the working rows' answer: the first broken iterate, else the best-loss one."""
        f = s.found
        self.x.index_copy_(0, index, torch.where(row_mask(f, s.x), s.found_x, s.best_x))
        self.loss.index_copy_(0, index, torch.where(f, s.found_loss, s.best_loss))
        self.logits.index_copy_(0, index, torch.where(row_mask(f, s.best_logits), s.found_logits, s.best_logits))
        self.success.index_copy_(0, index, f)


@dataclass
class _State:
    """Per-row state of one run over the rows still attacked (every tensor indexed by row)."""

    x: Tensor  # (b, ...) clean inputs
    cur: Tensor  # x^k
    prev: Tensor  # x^{k−1}
    grad: Tensor  # the gradient at x^k (or at the best point after a reset)
    eta: Tensor  # (b, 1, ..., 1) step size
    eps: Tensor  # (b, 1, ..., 1) the radius
    k: Tensor  # (b,) the fraction k / d of coordinates a step moves
    sparsity_old: Tensor  # (b,) ‖x_best − x‖₀ at the last checkpoint
    best_at_check: Tensor  # (b,) best loss at the last checkpoint
    best_x: Tensor
    best_grad: Tensor
    best_loss: Tensor
    best_logits: Tensor
    found: Tensor  # (b,) bool: broken at some iterate
    found_x: Tensor
    found_loss: Tensor
    found_logits: Tensor

    def rows(self, keep: Tensor) -> _State:
        return _State(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def record(self, loss: Tensor, grad: Tensor, logits: Tensor, success: Tensor) -> None:
        """Book the new iterate ``cur``: first broken point and best-loss point. No host sync."""
        new = success & ~self.found
        self.found_x = torch.where(row_mask(new, self.cur), self.cur, self.found_x)
        self.found_loss = torch.where(new, loss, self.found_loss)
        self.found_logits = torch.where(row_mask(new, logits), logits, self.found_logits)
        self.found = self.found | success
        better = loss > self.best_loss
        self.best_x = torch.where(row_mask(better, self.cur), self.cur, self.best_x)
        self.best_grad = torch.where(row_mask(better, grad), grad, self.best_grad)
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best_logits = torch.where(row_mask(better, logits), logits, self.best_logits)
        self.grad = grad

    def checkpoint(self, d: int) -> None:
        """Adapt η and k (see the module docstring)."""
        stalled = self.best_loss <= self.best_at_check
        rows = row_mask(stalled, self.x)
        self.eta = torch.where(rows, self.eta / _STEP_REDUCE, self.eta)
        self.cur = torch.where(rows, self.best_x, self.cur)
        self.grad = torch.where(rows, self.best_grad, self.grad)
        self.best_at_check = self.best_loss.clone()
        sparsity = (self.best_x != self.x).flatten(1).sum(1).to(self.k.dtype)
        self.k = torch.floor(sparsity / _STEP_REDUCE).clamp(1.0, float(d)) / d
        sparser = row_mask(sparsity < 0.95 * self.sparsity_old, self.x)
        self.eta = torch.where(sparser, self.eps, self.eta / _STEP_REDUCE)
        self.eta = torch.maximum(torch.minimum(self.eta, self.eps), self.eps / _MIN_STEP)
        self.sparsity_old = sparsity
