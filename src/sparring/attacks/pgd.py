"""Projected gradient descent (Madry et al., ICLR 2018), L∞ and L2, with restarts and the best iterate.

Update (ascent on a per-example loss L, e.g. CE or the CW margin):

    x⁰ ~ U(B(x, ε))  (or x⁰ = x),     x^{k+1} = Π_{B(x,ε) ∩ box}( x^k + α · step(∇ₓ L(f(x^k), y)) )

``step`` is ``sign`` for L∞ and ``g/‖g‖₂`` for L2 (the threat model decides). Paper defaults (CIFAR-10,
L∞ ε = 8/255): 7–10 steps of α = 2/255 for training, PGD-20 or PGD-50 × 10 restarts for evaluation.
Here α defaults to ``2.5 ε / steps`` (Madry's rule; 0.25 ε for 10 steps), per sample.

* **Best iterate**: every iterate (the start included) is scored; a sample keeps the first-ranked one
  by (success, loss), so a point broken at any step stays broken.
* **Restarts** run only on samples no restart has broken yet. Restart r's random start of a sample comes from
  its own stream (``problem.streams.at(r)``, :mod:`sparring.attacks.rng`), so a sample's result depends neither on
  its batch mates nor, with global ids, on the batch size.
* **Targeted** mode: pass ``target=``; the loss becomes ``−L(f(x'), t)`` and success means ``f(x') = t``.
* **Early stop** (``early_stop=True``, for evaluation): a sample leaves the working batch at the first scored
  iterate that breaks it (one host synchronization per step). Which samples are broken is the same as without it;
  a broken sample's returned input is its first breaking iterate rather than its highest-loss one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem, row_mask
from sparring.errors import ConfigError
from sparring.threat import ThreatModel, per_sample


@ATTACKS.register("pgd")
@dataclass(kw_only=True)
class PGD(Attack):
    """PGD-``steps`` with ``restarts`` random restarts.

    Attributes:
        steps: gradient steps per restart.
        restarts: number of starts; later ones only attack samples still robust.
        rel_step: step size as a multiple of ε (default ``2.5 / steps``).
        step_size: absolute step size, instead of ``rel_step`` (same for every sample).
        random_start: start uniformly inside the ball (else at ``x``).
        keep_best: return the best iterate instead of the last one.
        early_stop: stop attacking a sample once an iterate breaks it (needs ``keep_best``; the same robust mask).

    ``score=False`` (for training: Madry's inner loop returns the last iterate) needs ``keep_best=False``
    and ``restarts=1``, since both rank iterates by their score.
    """

    name = "pgd"
    steps: int = 10
    restarts: int = 1
    rel_step: float | None = None
    step_size: float | None = None
    random_start: bool = True
    keep_best: bool = True
    early_stop: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not self.score and (self.keep_best or self.restarts > 1):
            raise ConfigError("score=False needs keep_best=False and restarts=1 (both rank scored iterates)")
        if self.early_stop and not self.keep_best:
            raise ConfigError("early_stop=True needs keep_best=True (it stops at the first scored breaking iterate)")
        if self.rel_step is not None and self.step_size is not None:
            raise ConfigError("give either rel_step or step_size, not both")
        for label, value in (("rel_step", self.rel_step), ("step_size", self.step_size)):
            if value is not None and not value > 0:
                raise ConfigError(f"{label} must be > 0, got {value}")

    def step_for(self, threat: ThreatModel, x: Tensor) -> Tensor:
        """(B, 1, ..., 1) step size for each sample."""
        if self.step_size is not None:
            return per_sample(self.step_size, x)
        rel = self.rel_step if self.rel_step is not None else 2.5 / self.steps
        return rel * threat.eps_for(x)

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        x, threat = problem.x, problem.threat
        alpha = self.step_for(threat, x)
        if not self.score:  # the last iterate, no scoring forward
            x_adv, _ = self._steps(model, problem, alpha, self._start(problem, 0, generator))
            return AttackResult(x_adv=x_adv, success=None, loss=None, logits=None, queries=self.steps, time_s=0.0)
        best: _Best | None = None
        for restart in range(self.restarts):
            if best is None:
                best = self._descend(model, problem, alpha, self._start(problem, restart, generator))
                continue
            rows = (~best.success).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            sub = problem.rows(rows)  # each row keeps its own stream, so its start is the same as in any batch
            best.merge(self._descend(model, sub, alpha[rows], self._start(sub, restart, generator)), rows)
        assert best is not None
        return AttackResult(
            x_adv=best.x, success=best.success, loss=best.loss, logits=best.logits,
            queries=(self.steps + 1) * self.restarts, time_s=0.0,
        )

    def _start(self, problem: Problem, restart: int, generator: torch.Generator | None) -> Tensor:
        """Restart ``restart``'s starting point: uniform in the threat set from each row's own stream (or ``x``)."""
        if not self.random_start:
            return problem.x
        return problem.threat.random_start(problem.x, generator, streams=problem.random().at(restart))

    def _descend(self, model: nn.Module, problem: Problem, alpha: Tensor, x_adv: Tensor) -> _Best:
        """One start: ``steps`` ascent steps, then score the last iterate (and keep the best one)."""
        x_adv, best = self._steps(model, problem, alpha, x_adv)
        with torch.no_grad():
            logits = model(x_adv)
            loss = self._ranked(problem.loss_fn(logits, problem.loss_ref), x_adv)
            success = problem.success(logits)
            if not self.keep_best:
                return _Best(x=x_adv, loss=loss, logits=logits, success=success)
            return _Best.better_of(best, x_adv, loss, logits, success)

    def _steps(
        self, model: nn.Module, problem: Problem, alpha: Tensor, x_adv: Tensor
    ) -> tuple[Tensor, _Best | None]:
        """``steps`` ascent steps from ``x_adv``: the last iterate and the best scored one (if kept)."""
        if self.early_stop:
            return self._steps_early_stop(model, problem, alpha, x_adv)
        x, threat = problem.x, problem.threat
        best: _Best | None = None
        for _ in range(self.steps):
            g = problem.query(self.gradients, model, x_adv, scores=self.keep_best)
            with torch.no_grad():  # bookkeeping and update build no graph
                if self.keep_best:
                    ranked = self._ranked(g.loss, x_adv)
                    best = _Best.better_of(best, x_adv, ranked, g.logits, problem.success(g.logits))
                x_adv = threat.project(x_adv + threat.step(self._ascent(g.grad, x_adv), alpha), x)
        return x_adv, best

    def _steps_early_stop(
        self, model: nn.Module, problem: Problem, alpha: Tensor, x_adv: Tensor
    ) -> tuple[Tensor, _Best]:
        """:meth:`_steps` where a sample leaves the working rows at its first scored breaking iterate."""
        last = x_adv.detach().clone()  # every row's last iterate (a dropped row keeps its breaking one)
        best: _Best | None = None
        index = torch.arange(x_adv.shape[0], device=x_adv.device)  # rows of ``problem`` still attacked
        for _ in range(self.steps):
            g = problem.query(self.gradients, model, x_adv)
            with torch.no_grad():
                ranked, success = self._ranked(g.loss, x_adv), problem.success(g.logits)
                if best is None:  # the first step scores every row
                    best = _Best.better_of(None, x_adv, ranked, g.logits, success)
                    best = _Best.better_of(best, x_adv, ranked, g.logits, success)  # own copies, updated in place
                else:
                    best.merge(_Best(x=x_adv, loss=ranked, logits=g.logits, success=success), index)
                x_adv = problem.threat.project(x_adv + problem.threat.step(self._ascent(g.grad, x_adv), alpha),
                                               problem.x)
                last[index] = x_adv
                keep = (~best.success[index]).nonzero().squeeze(1)  # the one host synchronization per step
                if keep.numel() == 0:
                    break
                if keep.numel() < index.numel():
                    index, problem, alpha, x_adv = index[keep], problem.rows(keep), alpha[keep], x_adv[keep]
        assert best is not None
        return last, best

    # Hooks for attacks that add a term of the input alone to the loss (the kNN attack's smoothness penalty).
    def _ascent(self, grad: Tensor, x_adv: Tensor) -> Tensor:
        """The ascent direction from the model-loss gradient at ``x_adv`` (PGD: the gradient itself)."""
        return grad

    def _ranked(self, loss: Tensor, x_adv: Tensor) -> Tensor:
        """The (B,) value iterates are ranked by (PGD: the loss itself)."""
        return loss


@dataclass
class _Best:
    """Per-sample best iterate so far, ranked by (success, loss). No host synchronization.

    The first comparison builds new tensors (the first candidate's may alias the caller's ``x`` or the
    gradient source's outputs); later ones update those in place (``owned``), saving an allocation of the
    input's size per step. Call :meth:`better_of` under ``torch.no_grad()`` (``out=`` builds no graph).
    """

    x: Tensor
    loss: Tensor
    logits: Tensor
    success: Tensor
    owned: bool = False

    @staticmethod
    def better_of(best: _Best | None, x: Tensor, loss: Tensor, logits: Tensor, success: Tensor) -> _Best:
        if best is None:
            return _Best(x=x, loss=loss, logits=logits, success=success)
        # Lexicographic (success, loss): a new success wins, a lost one loses, a tie goes to the higher loss.
        better = torch.where(success == best.success, loss > best.loss, success)
        rows, logit_rows = row_mask(better, x), row_mask(better, logits)  # logits: (B, K) or (B, k, V) sequences
        if best.owned:
            torch.where(rows, x, best.x, out=best.x)
            torch.where(better, loss, best.loss, out=best.loss)
            torch.where(logit_rows, logits, best.logits, out=best.logits)
            best.success |= success
            return best
        return _Best(
            x=torch.where(rows, x, best.x),
            loss=torch.where(better, loss, best.loss),
            logits=torch.where(logit_rows, logits, best.logits),
            success=best.success | success,
            owned=True,
        )

    def merge(self, other: _Best, rows: Tensor) -> None:
        """Take ``other`` (computed on ``rows``) where it ranks higher."""
        mine = _Best(x=self.x[rows], loss=self.loss[rows], logits=self.logits[rows], success=self.success[rows])
        with torch.no_grad():
            merged = _Best.better_of(mine, other.x, other.loss, other.logits, other.success)
        self.x[rows], self.loss[rows], self.logits[rows], self.success[rows] = (
            merged.x, merged.loss, merged.logits, merged.success,
        )
