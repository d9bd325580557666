"""Targeted Fast Adaptive Boundary attack, FAB-T (Croce & Hein, ICML 2020), for L∞, L2 and L1.

FAB looks for the smallest adversarial perturbation by projecting onto a linearised decision boundary. For a target
class t (the true class y), ``f = z_t − z_y`` and its gradient ``w`` at the iterate x^i define the hyperplane
``π = {z : f(x^i) + ⟨w, z − x^i⟩ = 0}``. With ``proj(p)`` the minimal-norm step from p onto π inside the box
(``min ‖δ‖ s.t. ⟨w, p + δ − x^i⟩ = −f(x^i), lo ≤ p + δ ≤ hi``; where the box cannot reach π, the box corner that
moves furthest towards it):

    δ^i = proj(x^i),   δ_o = proj(x_orig),   α = min(‖δ^i‖ / (‖δ^i‖ + ‖δ_o‖), α_max)
    x^{i+1} = clip_box( (1 − α)(x^i + η δ^i) + α (x_orig + η δ_o) )
    if x^{i+1} is misclassified:  keep it if it is the smallest so far;  x^{i+1} ← (1 − β) x_orig + β x^{i+1}

The minimal-norm step onto a hyperplane in a box is solved exactly for each norm: L∞ and L2 by a sort of the
breakpoints of the piecewise-linear ``Σ_i |w_i| |δ_i(s)|`` (L∞: ``|δ_i| = min(s, room_i)``; L2:
``|δ_i| = min(s |w_i|, room_i)``), L1 greedily (a fractional knapsack: the coordinates of largest ``|w_i|`` first).

Defaults of AutoAttack's standard version: α_max = 0.1, η = 1.05, β = 0.9, 100 iterations, 1 restart (from
x_orig) per target, the 9 target classes with the highest clean logits (at most K − 1). Success means misclassified
(any class), as in AutoAttack; each iteration costs one forward and backward pass and one forward pass. Later
restarts (``restarts > 1``) start at a random point of radius ``min(‖δ*‖, ε) / 2`` around x_orig.

``early_stop=True`` (AutoAttack's behaviour, the default): a target class only runs on the points no earlier one
broke within ε, so ``min_norm`` is the smallest norm found for the robust points and *some* norm ≤ ε for the broken
ones. ``early_stop=False`` runs every target on every point: ``min_norm`` is the smallest over all targets. The
result at ε (``x_adv``, ``success``, ``min_norm``) is built as in :func:`sparring.attacks.fmn.minimum_norm_result`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import sparring.progress as progress
from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem, row_mask
from sparring.attacks.fmn import check_norm, minimum_norm_result
from sparring.errors import ConfigError
from sparring.threat import ThreatModel, per_sample

_BIG = 1e30  # the room of an unbounded coordinate (no box), finite so that the sums stay finite


def logit_gap(logits: Tensor, ref: Tensor) -> Tensor:
    """``z_t − z_y`` per row, ``ref`` (B, 2) = [label, target]: positive once the target beats the label."""
    pair = logits.float().gather(1, ref)
    return pair[:, 1] - pair[:, 0]


def plane_step(w: Tensor, r: Tensor, room_lo: Tensor, room_hi: Tensor, norm: str) -> Tensor:
    """The smallest ``δ`` (B, d) in ``norm`` with ``⟨w, δ⟩ = r`` (B,) and ``−room_lo ≤ δ ≤ room_hi`` (rooms ≥ 0).

    Where the box cannot reach the hyperplane, the box corner that moves furthest towards it. Float64 inside."""
    w64, r64 = w.double(), r.double()
    flip = r64 < 0  # ⟨w, δ⟩ = r < 0 is ⟨−w, δ⟩ = −r
    w64 = torch.where(flip[:, None], -w64, w64)
    r64 = r64.abs()[:, None]
    aw = w64.abs()
    moving = aw > 0
    room = torch.where(w64 > 0, room_hi.double(), room_lo.double()).clamp(0.0, _BIG)
    room = torch.where(moving, room, torch.zeros_like(room))  # how far each coordinate may go along sign(w_i)
    gain = aw * room  # the most each coordinate can add to ⟨w, δ⟩
    reachable = gain.sum(1, keepdim=True) >= r64
    if norm == "l1":  # fill the coordinates of largest |w_i| first
        order = aw.argsort(dim=1, descending=True)
        gain_s, aw_s, room_s = gain.gather(1, order), aw.gather(1, order), room.gather(1, order)
        filled = gain_s.cumsum(1)
        j = (filled < r64).sum(1, keepdim=True).clamp(max=aw.shape[1] - 1)  # the coordinate that crosses r
        before = filled.gather(1, j) - gain_s.gather(1, j)
        part = (r64 - before) / aw_s.gather(1, j).clamp_min(1e-300)
        index = torch.arange(aw.shape[1], device=aw.device)[None, :]
        size_s = torch.where(index < j, room_s, torch.where(index == j, part, torch.zeros_like(room_s)))
        size = torch.zeros_like(size_s).scatter(1, order, size_s)
    else:  # Σ_i min(s A_i, B_i) = r, piecewise linear and non-decreasing in s
        slope = aw if norm == "linf" else aw * aw
        knee = torch.where(moving, gain / slope.clamp_min(1e-300), torch.full_like(aw, float("inf")))
        order = knee.argsort(dim=1)
        knee_s, slope_s, gain_s = knee.gather(1, order), slope.gather(1, order), gain.gather(1, order)
        rest = slope_s.flip(1).cumsum(1).flip(1)  # Σ_{k ≥ j} A_k
        full = gain_s.cumsum(1) - gain_s  # Σ_{k < j} B_k
        at_knee = torch.where(torch.isfinite(knee_s), full + knee_s * rest, torch.full_like(full, float("inf")))
        j = (at_knee < r64).sum(1, keepdim=True).clamp(max=aw.shape[1] - 1)
        s = (r64 - full.gather(1, j)) / rest.gather(1, j).clamp_min(1e-300)
        size = torch.minimum(s * slope, gain) / aw.clamp_min(1e-300)
        size = torch.where(moving, size, torch.zeros_like(size))
    size = torch.where(reachable, torch.minimum(size, room), room)
    return (w64.sign() * size).to(w.dtype)


def _rooms(threat: ThreatModel, p: Tensor) -> tuple[Tensor, Tensor]:
    """(B, d) how far each coordinate of ``p`` may go down and up inside the box."""
    flat = p.flatten(1)
    if threat.bounds is None:
        return torch.full_like(flat, _BIG), torch.full_like(flat, _BIG)
    lo, hi = threat.bounds
    return (flat - lo).clamp_min(0), (hi - flat).clamp_min(0)


@ATTACKS.register("fab_t")
@dataclass(kw_only=True)
class FABTargeted(Attack):
    """FAB-T: minimal-norm adversarial points towards each of the ``targets`` most likely wrong classes.

    Attributes:
        loss: the loss reported at the returned point (the search follows the logit gap ``z_t − z_y``).
        steps: iterations per target and restart (AutoAttack: 100).
        targets: number of target classes (AutoAttack: 9), at most K − 1, ranked by the clean logits.
        restarts: starts per target; the first from the clean input, later ones random (see the module docstring).
        alpha_max, eta, beta: the bias towards the clean input, the extrapolation and the backward step.
        early_stop: a target only runs on the points not yet broken within ε (AutoAttack).
    """

    name = "fab_t"
    minimum_norm = True
    loss: str = "margin"
    steps: int = 100
    targets: int = 9
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    early_stop: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.score:
            raise ConfigError(f"{self.name} always knows which points it broke: score=False is not supported")
        for label, value in (("steps", self.steps), ("targets", self.targets), ("restarts", self.restarts)):
            if value < 1:
                raise ConfigError(f"{label} must be >= 1, got {value}")
        if not 0.0 <= self.alpha_max <= 1.0:
            raise ConfigError(f"alpha_max must lie in [0, 1], got {self.alpha_max}")
        if not self.eta >= 1.0:
            raise ConfigError(f"eta must be >= 1, got {self.eta}")
        if not 0.0 < self.beta < 1.0:
            raise ConfigError(f"beta must lie in (0, 1), got {self.beta}")

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        if problem.target is not None:
            raise ConfigError("fab_t picks its own target classes; for a given target use fmn with target=")
        check_norm(self.name, problem.threat)
        x, y, threat = problem.x, problem.y, problem.threat
        with torch.no_grad():
            clean = model(x).float()  # (B, K): ranks the target classes
        classes = clean.shape[1]
        if classes < 2:
            raise ConfigError(f"fab_t needs at least 2 classes, the model has {classes}")
        n_targets = min(self.targets, classes - 1)
        ranked = clean.scatter(1, y[:, None], float("-inf")).sort(dim=1, descending=True, stable=True).indices
        correct = clean.argmax(1) == y
        best_norm = torch.where(correct, float("inf"), 0.0).to(x.dtype)
        best_x = x.clone()
        eps = threat.eps_for(x).flatten()
        last = x.clone()
        for k in range(n_targets):
            progress.report(k, n_targets)
            active = correct & (best_norm > eps) if self.early_stop else correct
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            sub = problem.rows(rows)
            towards = Problem(x=sub.x, y=sub.y, threat=sub.threat, loss_fn=logit_gap,
                              loss_ref=torch.stack([sub.y, ranked[rows, k]], 1))
            for r in range(self.restarts):
                start = sub.x if r == 0 else self._random_start(sub, best_norm[rows], k, r)
                norm_r, x_r, last_r = self._fab(model, towards, start)
                better = norm_r < best_norm[rows]
                take = rows[better]
                best_norm[take], best_x[take] = norm_r[better], x_r[better]
                last[rows] = last_r
        queries = 1 + 2 * self.steps * self.restarts * n_targets
        return minimum_norm_result(model, problem, best_x, best_norm, last, queries=queries)

    def _random_start(self, sub: Problem, best_norm: Tensor, k: int, r: int) -> Tensor:
        """A random point of radius ``min(‖δ*‖, ε) / 2`` around the clean inputs (the sample's own stream)."""
        eps = sub.threat.eps_for(sub.x).flatten()
        radius = torch.minimum(best_norm, eps) / 2
        return sub.threat.with_eps(radius).random_start(sub.x, streams=sub.random().at(k, r))

    def _fab(self, model: nn.Module, problem: Problem, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One FAB run towards one target class from ``start``: (smallest norm, its point, the last iterate)."""
        x, threat = problem.x, problem.threat
        b = x.shape[0]
        best_norm = torch.full((b,), float("inf"), device=x.device, dtype=x.dtype)
        best_x = x.clone()
        cur = start.clone()
        lo_o, hi_o = _rooms(threat, x)
        for _ in range(self.steps):
            g = problem.query(self.gradients, model, cur)
            with torch.no_grad():
                w = g.grad.flatten(1)
                f = g.loss.float()
                lo_i, hi_i = _rooms(threat, cur)
                d_cur = plane_step(w, -f, lo_i, hi_i, threat.norm).view_as(x)
                # The same hyperplane seen from x_orig: f(x^i) + ⟨w, x_orig + δ − x^i⟩ = 0.
                r_orig = -(f + (w.float() * (x - cur).flatten(1).float()).sum(1))
                d_orig = plane_step(w, r_orig, lo_o, hi_o, threat.norm).view_as(x)
                n_cur = threat.distance(cur + d_cur, cur)
                n_orig = threat.distance(x + d_orig, x)
                alpha = (n_cur / (n_cur + n_orig).clamp_min(1e-12)).clamp(max=self.alpha_max)
                a = per_sample(alpha, x)
                nxt = threat.clip_box((1 - a) * (cur + self.eta * d_cur) + a * (x + self.eta * d_orig))
                adv = problem.success(model(nxt))
                norm = threat.distance(nxt, x)
                better = adv & (norm < best_norm)
                best_norm = torch.where(better, norm, best_norm)
                best_x = torch.where(row_mask(better, x), nxt, best_x)
                cur = torch.where(row_mask(adv, x), torch.lerp(x, nxt, self.beta), nxt)
        return best_norm, best_x, cur
