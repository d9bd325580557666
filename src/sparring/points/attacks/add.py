"""Adding adversarial points (Xiang, Qi & Li, "Generating 3D Adversarial Point Clouds", CVPR 2019),
reconstructed as projected gradient ascent on k = ⌊ε⌋ added points a_j, each within ``radius`` of a seed s_j
of the clean cloud (a :class:`~sparring.points.threat.PointSet` threat):

    a_j⁰ ~ U(B(s_j, radius))  (or a_j⁰ = s_j),
    a_j^{t+1} = Π_{B(s_j, radius)}( a_j^t + α · g_j / ‖g_j‖₂ ),     g_j = ∇_{a_j} L(f(x ∪ a^t), y)

with α = ``rel_step`` · radius (default ``2.5 / steps``, Madry's rule) and ``steps`` = 50. The paper
optimizes a C&W objective with a Chamfer / Hausdorff penalty on the added points (and also adds clusters
and objects); the hard radius-ball here is the one-sided Hausdorff budget of the threat instead.

* **Slots**: batched clouds keep one size, so the added points take the rows of the k points with the
  smallest input-gradient norm at x. For a max-pooled model (PointNet) those are (almost always) points that
  win no channel of the max, whose gradient is exactly 0: they contribute nothing, so replacing them *is*
  adding. For other models it is an approximation that removes the k least influential points.
* **Seeds**: added point j starts from (a copy of) the j-th point of largest gradient norm among the
  non-slot points, where the model is most sensitive; with ``radius = 0`` the added points stay duplicates.
  k is capped at N // 2 so that slots and seeds are disjoint.
* **Best iterate** per sample by (success, loss) and **restarts** on still-robust samples, as in PGD;
  random starts come from each sample's own stream (:mod:`sparring.attacks.rng`: batch independence). Slots and seeds
  come from one gradient at x, shared by all restarts. Queries: 1 + ``restarts`` · (``steps`` + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparring.attacks.base import ATTACKS, Attack, AttackInputs, AttackResult, Problem
from sparring.attacks.pgd import _Best
from sparring.errors import ConfigError
from sparring.points.data import gather_points
from sparring.points.threat import PointSet, point_set_of

_TINY = 1e-12


@dataclass(frozen=True)
class _Placement:
    """Where the added points go, one column j per potential added point (only j < k_b are used).

    slots (B, N): the row each added point overwrites; seeds (B, N, C): its seed's coordinates;
    active (B, N) bool: column j is an added point of sample b (j < k_b).
    """

    slots: Tensor
    seeds: Tensor
    active: Tensor

    def rows(self, index: Tensor) -> _Placement:
        return _Placement(slots=self.slots[index], seeds=self.seeds[index], active=self.active[index])

    def compose(self, x: Tensor, added: Tensor) -> Tensor:
        """The cloud x (B, N, C) with its slot rows replaced by the active added points (B, N, C)."""
        values = torch.where(self.active.unsqueeze(-1), added, gather_points(x, self.slots))
        # slots is a permutation of the rows, so the scatter writes every row exactly once.
        return torch.scatter(x, 1, self.slots.unsqueeze(-1).expand_as(x), values)


@ATTACKS.register("point_add")
@dataclass(kw_only=True)
class PointAdd(Attack):
    """Add ⌊ε⌋ points per cloud (B, N, 3) within the threat's ``radius`` of the cloud, by ``steps`` of
    per-point normalized gradient ascent.

    Attributes:
        steps: gradient steps per restart.
        restarts: number of starts; later ones only attack samples still robust.
        rel_step: step size as a multiple of the radius (default ``2.5 / steps``).
        random_start: start each added point uniformly in the ball around its seed (else at the seed).

    ``score=False`` returns the last iterate of one start (``restarts`` must be 1).
    """

    name = "point_add"
    inputs: ClassVar[AttackInputs] = "point_set"
    steps: int = 50
    restarts: int = 1
    rel_step: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not self.score and self.restarts > 1:
            raise ConfigError("score=False needs restarts=1 (restarts rank scored iterates)")
        if self.rel_step is not None and not self.rel_step > 0:
            raise ConfigError(f"rel_step must be > 0, got {self.rel_step}")

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        x = problem.x  # (B, N, C)
        threat = point_set_of(problem.threat, x, self.name)
        b, n = x.shape[:2]
        budget = threat.budget(x).clamp(max=n // 2)  # (B,)
        grad = problem.query(self.gradients, model, x, scores=False).grad
        with torch.no_grad():
            order = torch.linalg.vector_norm(grad, dim=-1).argsort(dim=1, stable=True)  # (B, N) ascending
            placement = _Placement(
                slots=order,  # column j: the j-th least influential point
                seeds=gather_points(x, order.flip(1)),  # column j: the j-th most influential point
                active=torch.arange(n, device=x.device).expand(b, n) < budget.unsqueeze(1),
            )
        step = (self.rel_step if self.rel_step is not None else 2.5 / self.steps) * threat.radius
        if not self.score:
            added = self._start(threat, placement, problem, 0)
            x_adv, _ = self._steps(model, problem, threat, placement, step, added, keep_best=False)
            return AttackResult(x_adv=x_adv, success=None, loss=None, logits=None, queries=1 + self.steps, time_s=0.0)
        best: _Best | None = None
        for restart in range(self.restarts):
            if best is None:
                added = self._start(threat, placement, problem, 0)
                best = self._descend(model, problem, threat, placement, step, added)
                continue
            rows = (~best.success).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            sub, at = problem.rows(rows), placement.rows(rows)  # each row keeps its own random stream
            best.merge(self._descend(model, sub, threat, at, step, self._start(threat, at, sub, restart)), rows)
        assert best is not None
        return AttackResult(
            x_adv=best.x, success=best.success, loss=best.loss, logits=best.logits,
            queries=1 + (self.steps + 1) * self.restarts, time_s=0.0,
        )

    def _start(self, threat: PointSet, placement: _Placement, problem: Problem, restart: int) -> Tensor:
        """(B, N, C) starting added points: uniform in the radius-ball around each seed, or the seeds; drawn from
        each row's own random stream (restart ``restart``)."""
        seeds = placement.seeds
        if not self.random_start:
            return seeds
        streams = problem.random().at(restart)
        direction = streams.normal(seeds.shape[1:], dtype=seeds.dtype)
        direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(_TINY)
        u = streams.uniform(seeds.shape[1:-1] + (1,), dtype=seeds.dtype)
        length = threat.radius * u ** (1.0 / seeds.shape[-1])  # uniform in volume
        return threat.clip_box(seeds + direction * length)

    def _descend(
        self, model: nn.Module, problem: Problem, threat: PointSet, placement: _Placement, step: float, added: Tensor
    ) -> _Best:
        """One start: ``steps`` ascent steps, then score the last iterate; the best scored one wins."""
        x_adv, best = self._steps(model, problem, threat, placement, step, added, keep_best=True)
        with torch.no_grad():
            logits = model(x_adv)
            loss = problem.loss_fn(logits, problem.loss_ref)
            return _Best.better_of(best, x_adv, loss, logits, problem.success(logits))

    def _steps(
        self, model: nn.Module, problem: Problem, threat: PointSet, placement: _Placement, step: float,
        added: Tensor, *, keep_best: bool,
    ) -> tuple[Tensor, _Best | None]:
        """``steps`` ascent steps on the added points: the last cloud and the best scored one (if kept)."""
        x = problem.x
        best: _Best | None = None
        for _ in range(self.steps):
            x_adv = placement.compose(x, added)
            g = problem.query(self.gradients, model, x_adv, scores=keep_best)
            with torch.no_grad():
                if keep_best:
                    best = _Best.better_of(best, x_adv, g.loss, g.logits, problem.success(g.logits))
                g_added = gather_points(g.grad, placement.slots)  # (B, N, C): the gradient at each added point
                norm = torch.linalg.vector_norm(g_added, dim=-1, keepdim=True).clamp_min(_TINY)
                added = added + step * g_added / norm
                offset = added - placement.seeds  # back into the ball around the seed, then the box
                length = torch.linalg.vector_norm(offset, dim=-1, keepdim=True).clamp_min(_TINY)
                added = threat.clip_box(placement.seeds + offset * torch.clamp(threat.radius / length, max=1.0))
        return placement.compose(x, added), best
