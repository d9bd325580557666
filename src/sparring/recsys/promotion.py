"""Evaluation-time promotion attacks on multimodal recommenders, and the target-item HR@K evaluator (UAT-MC §7.3).

The attacker perturbs one *target item's* aligned (projected, L2-normalised) visual and text features
``v̂_t, t̂_t`` (64-d each) to push it into many anchor users' top-K lists. The loss ("max_hit_50"), maximised:

    L_t = mean_{u ∈ anchors} ReLU( s(u, t) − s(u, k-th ranked item) + margin ),   k = 50

* **FGSM**: ``v̂'_t = v̂_t + ε‖v̂_t‖₂ · sign(∇_{v̂_t} L)``, same for ``t̂_t`` (budget relative to each feature's norm;
  ``‖·‖ = 1`` for normalised features), margin 10.
* **PGD**: 10 steps of ``1.25 ε / 10 · sign(∇L)`` projected onto the ℓ∞ box of absolute size ε per coordinate,
  starting at the clean features, margin 1.

Setup: anchors are a random 40% of users, targets 100 items per seed (random, cold ≤ 5 or hot ≥ 50 training
interactions), ε ∈ {0.025, 0.05, 0.075, 0.1}. Metrics: the target's HR@K over anchors before and after (K ∈ {10, 20,
50, 100}, main HR@50), the mean rank change and the relative promotion ``(HR@50_after / HR@50_before − 1)·100%``.

Paper: Xian, Yang, Yu, "Band Together: Untargeted Adversarial Training with Multimodal Coordination against
Evasion-based Promotion Attacks" (IJCAI 2026, arXiv 2605.06238); code ``src/utils/attacker.py`` and
``src/utils/quick_start_attack.py`` (``methods.md`` §7.3).

Decisions where the source leaves room:

* The k-th ranked item is taken from the *clean* ranking with each anchor's training items masked (as in evaluation)
  and the **target itself excluded**: then ``s(u, t) > s_k(u)`` is exactly "t is in u's top-k", so the hinge is a
  margin on the hit itself (were the target counted, an already-hit target would compete with itself).
* Anchors who trained on the target never see it recommended (it is masked): they count as misses in HR@K (the
  denominator is every anchor) but carry no weight in the loss, whose mean runs over the other anchors.
* Ranks are ``1 + #{unmasked j ≠ t : s(u, j) > s(u, t)}`` (ties favour the target); HR@K = P(rank ≤ K).
* PGD starts at the clean features (``random_start=False``): §7.3 names no random start and it keeps the
  evaluation deterministic; the flag exists.

The attacks are the core :class:`~sparring.attacks.FGSM` / :class:`~sparring.attacks.PGD` (``score=False``, the last
iterate) run on :class:`TargetScorer`, a module whose input is the targets' features (T, 2, 64) and whose output is
their per-target loss (T, 1). Every target is attacked in its own copy of the item table (batched, no per-target
loop); copies are processed in chunks bounded by ``max_elements`` so memory stays flat (results do not depend on
the chunking). :func:`cross_modal_cosine` is the mismatch diagnostic of §7.1: the cosine between ``∇_{v̂_t} L`` and
``∇_{t̂_t} L``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks.fgsm import FGSM
from sparring.attacks.pgd import PGD
from sparring.context import frozen_model
from sparring.errors import ConfigError, DataError
from sparring.recsys.data import RecData
from sparring.threat import LinfBall

METHODS = ("fgsm", "pgd")
TARGET_KINDS = ("random", "cold", "hot")
DEFAULT_MARGIN = {"fgsm": 10.0, "pgd": 1.0}  # attacker.py: margin 10 for FGSM, 1 for PGD
_TINY = 1e-12


# ---------------------------------------------------------------------------------------------------------- setup
def anchor_users(n_users: int, *, fraction: float = 0.4, generator: torch.Generator | None = None) -> Tensor:
    """(A,) sorted int64: a random ``fraction`` of the users (§7.3: 40%), at least one."""
    if n_users < 1:
        raise DataError(f"anchor_users needs n_users >= 1, got {n_users}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"anchor fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * n_users))
    return torch.randperm(n_users, generator=generator)[:count].sort().values


@dataclass(frozen=True, kw_only=True)
class TargetSet:
    """Target items for a promotion attack.

    Attributes:
        items: (T,) int64 item indices. kind: ``"random"``, ``"cold"`` or ``"hot"``.
        requested: how many were asked for; pool: how many items qualified for ``kind``.
        note: why fewer than ``requested`` were taken (None when the request was met); also warned.
    """

    items: Tensor
    kind: str
    requested: int
    pool: int
    note: str | None = None


def pick_targets(
    data: RecData,
    *,
    n: int = 100,
    kind: str = "random",
    cold_max: int = 5,
    hot_min: int = 50,
    generator: torch.Generator | None = None,
) -> TargetSet:
    """``n`` distinct target items drawn uniformly from a pool (§7.3: 100 per seed).

    ``kind``: ``"random"`` (all items), ``"cold"`` (≤ ``cold_max`` = 5 training interactions) or ``"hot"``
    (≥ ``hot_min`` = 50). When the pool is smaller than ``n`` the whole pool is taken and the shortfall is
    recorded in :attr:`TargetSet.note` and warned about; an empty pool is a :class:`DataError`.
    """
    if kind not in TARGET_KINDS:
        raise ConfigError(f"unknown target kind {kind!r}; use one of {', '.join(TARGET_KINDS)}")
    if n < 1:
        raise ConfigError(f"the number of targets must be >= 1, got {n}")
    counts = data.item_counts()
    if kind == "random":
        pool = torch.arange(data.n_items)
    elif kind == "cold":
        pool = (counts <= cold_max).nonzero().squeeze(1)
    else:
        pool = (counts >= hot_min).nonzero().squeeze(1)
    if pool.numel() == 0:
        rule = f"<= {cold_max}" if kind == "cold" else f">= {hot_min}"
        raise DataError(f"no {kind} items in {data.name!r} (items with {rule} training interactions); "
                        "pick another kind or change the threshold")
    note = None
    if pool.numel() < n:
        note = f"only {pool.numel()} {kind} items exist in {data.name!r}; took all of them instead of {n}"
        warnings.warn(note, stacklevel=2)
    items = pool[torch.randperm(pool.numel(), generator=generator)[:n]].sort().values
    return TargetSet(items=items, kind=kind, requested=n, pool=int(pool.numel()), note=note)


# --------------------------------------------------------------------------------------------------- the scorer
class TargetScorer(nn.Module):
    """The promotion loss as a model of the targets' features, for the core attacks.

    ``forward(x)``: x (T, 2, D) = ``[v̂_t, t̂_t] / scale`` for each target t → (T, 1) the loss
    ``mean_{u eligible} ReLU(s(u, t) − kth_scores[t, u] + margin)``, where s is scored in copy t of the item table
    whose row t alone holds ``x[t] · scale[t]`` (all other rows are the clean aligned features).

    Args:
        model: the recommender (:class:`sparring.recsys.models.Recommender`: ``aligned``, ``score_all``).
        anchors: (A,) anchor users. targets: (T,) target items.
        kth_scores: (T, A) the score each target must beat (the clean k-th, target excluded).
        eligible: (T, A) bool, anchors whose loss counts (default all).
        margin: the hinge margin. scale: (T, 2, 1) coordinates' unit per target and modality (default 1): a
            budget ε in x is ε·scale in feature space (FGSM's ``ε‖v̂_t‖₂``).
        base: the clean aligned features (v̂, t̂) (default ``model.aligned()``, computed once without graph).
    """

    def __init__(
        self,
        model: nn.Module,
        anchors: Tensor,
        targets: Tensor,
        kth_scores: Tensor,
        *,
        eligible: Tensor | None = None,
        margin: float = 1.0,
        scale: Tensor | None = None,
        base: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        if base is None:
            with torch.no_grad():
                base = model.aligned()
        self.base_v, self.base_t = (b.detach() for b in base)
        self.anchors, self.targets, self.kth_scores = anchors, targets, kth_scores
        self.eligible = torch.ones_like(kth_scores, dtype=torch.bool) if eligible is None else eligible
        self.margin = float(margin)
        self.scale = scale

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(T, n_items, D) ×2: copy t of (v̂, t̂) with row ``targets[t]`` replaced by ``x[t] · scale[t]``."""
        feats = x if self.scale is None else x * self.scale
        rows = torch.zeros(len(self.targets), self.base_v.shape[0], 1, dtype=torch.bool, device=x.device)
        rows[torch.arange(len(self.targets), device=x.device), self.targets, 0] = True
        # torch.where keeps the graph to x only through the replaced rows.
        v_hat = torch.where(rows, feats[:, None, 0], self.base_v)
        t_hat = torch.where(rows, feats[:, None, 1], self.base_t)
        return v_hat, t_hat

    def target_scores(self, scores: Tensor) -> Tensor:
        """(T, A) s(u, t) in copy t, from scores (T, A, n_items)."""
        index = self.targets.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
        return scores.gather(2, index).squeeze(2)

    def forward(self, x: Tensor) -> Tensor:
        v_hat, t_hat = self.features(x)
        s_t = self.target_scores(self.model.score_all(self.anchors, v_hat=v_hat, t_hat=t_hat))  # (T, A)
        hinge = torch.relu(s_t - self.kth_scores + self.margin) * self.eligible
        return (hinge.sum(1) / self.eligible.sum(1).clamp_min(1))[:, None]


def _loss_of(out: Tensor, ref: Tensor) -> Tensor:
    """The core attacks' per-example loss: the scorer's output is already the loss."""
    return out[:, 0]


# ------------------------------------------------------------------------------------------------------ results
@dataclass(kw_only=True)
class PromotionResult:
    """Per-target outcome of a promotion attack (T targets, A anchors).

    Attributes:
        method / eps / margin / k: the attack; ks: the cut-offs of ``hr_before`` / ``hr_after``.
        targets: (T,) items. n_anchors: A.
        hr_before / hr_after: (T, len(ks)) fraction of anchors whose top-K list (training items masked) has t.
        rank_before / rank_after: (T,) mean 1-based rank of t over the anchors who did not train on it (NaN if none).
        rank_change: (T,) mean of ``rank_before − rank_after`` per anchor (> 0: promoted).
        loss_before / loss_after: (T,) the promotion loss at the clean and the perturbed features.
        hr_gain: (T,) ``HR@k_after − HR@k_before`` (absolute). relative_promotion: per target
            ``(HR@k_after / HR@k_before − 1)·100`` or None where ``HR@k_before = 0``.
        v_adv / t_adv: (T, D) the perturbed aligned features of the targets (other items are untouched).
        cosine: (T,) cross-modal gradient cosine at the clean features (None if not computed).
        note: the target selection's note (a shortfall), if any.
    """

    method: str
    eps: float
    margin: float
    k: int
    ks: tuple[int, ...]
    targets: Tensor
    n_anchors: int
    hr_before: Tensor
    hr_after: Tensor
    rank_before: Tensor
    rank_after: Tensor
    rank_change: Tensor
    loss_before: Tensor
    loss_after: Tensor
    hr_gain: Tensor
    relative_promotion: list[float | None]
    v_adv: Tensor
    t_adv: Tensor
    cosine: Tensor | None = None
    note: str | None = None

    def hr(self, k: int, *, after: bool = True) -> Tensor:
        """(T,) HR@k of every target after (or before) the attack."""
        if k not in self.ks:
            raise ConfigError(f"HR@{k} was not evaluated; ks are {self.ks}")
        return (self.hr_after if after else self.hr_before)[:, self.ks.index(k)]

    def summary(self) -> dict[str, Any]:
        """Means over targets as plain data; ``relative_promotion`` is that of the mean HR@k (None if it was 0)."""
        before, after = self.hr(self.k, after=False).mean().item(), self.hr(self.k).mean().item()
        return {
            "method": self.method, "eps": self.eps, "margin": self.margin, "k": self.k,
            "targets": len(self.targets), "anchors": self.n_anchors,
            "hr_before": {str(k): v for k, v in zip(self.ks, self.hr_before.mean(0).tolist(), strict=True)},
            "hr_after": {str(k): v for k, v in zip(self.ks, self.hr_after.mean(0).tolist(), strict=True)},
            "hr_gain": after - before,
            "relative_promotion": (after / before - 1.0) * 100.0 if before > 0 else None,
            "mean_rank_change": _nanmean(self.rank_change),
            "loss_before": self.loss_before.mean().item(), "loss_after": self.loss_after.mean().item(),
            "cross_modal_cosine": None if self.cosine is None else self.cosine.mean().item(),
            "note": self.note,
        }


def _nanmean(v: Tensor) -> float | None:
    kept = v[~v.isnan()]
    return kept.mean().item() if kept.numel() else None


# -------------------------------------------------------------------------------------------------- the attack
@dataclass(kw_only=True)
class PromotionAttack:
    """FGSM / PGD promotion attack on target items' aligned features, with HR@K before and after (§7.3).

    ``L_t = mean_u ReLU(s(u, t) − s_k(u) + margin)``; FGSM: ``x' = x + ε‖x‖₂ sign(∇L)`` per modality;
    PGD: ``x^{i+1} = Π_{‖x'−x‖∞≤ε}(x^i + α sign(∇L))``, α = 1.25 ε / 10. Defaults are the authors' code.

    Attributes:
        method: ``"fgsm"`` or ``"pgd"``. eps: ε ≥ 0 (paper: 0.025, 0.05, 0.075, 0.1).
        k: the rank the hinge is measured against (50) and the cut-off of the relative promotion.
        margin: hinge margin (default 10 for FGSM, 1 for PGD).
        ks: HR cut-offs to report (``k`` is always added).
        steps / rel_step / random_start: PGD's 10 steps of ``rel_step·ε`` (default 1.25/steps) from the clean point.
        relative_eps: scale ε by each target's feature norm per modality (default: True for FGSM, False for PGD).
        max_elements: bound on T_chunk · A · n_items, the size of one batched score tensor (memory).
    """

    method: str = "fgsm"
    eps: float = 0.05
    k: int = 50
    margin: float | None = None
    ks: Sequence[int] = (10, 20, 50, 100)
    steps: int = 10
    rel_step: float | None = None
    random_start: bool = False
    relative_eps: bool | None = None
    max_elements: int = 2**25

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown promotion attack {self.method!r}; use one of {', '.join(METHODS)}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not 0 <= self.eps < math.inf:
            raise ConfigError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.margin is not None and not self.margin >= 0:
            raise ConfigError(f"margin must be >= 0, got {self.margin}")
        if self.k < 1 or any(int(c) < 1 for c in self.ks):
            raise ConfigError(f"k and ks must be >= 1, got k={self.k}, ks={tuple(self.ks)}")
        if self.steps < 1 or (self.rel_step is not None and not self.rel_step > 0):
            raise ConfigError(f"steps must be >= 1 and rel_step > 0, got {self.steps}, {self.rel_step}")
        if self.max_elements < 1:
            raise ConfigError(f"max_elements must be >= 1, got {self.max_elements}")

    @property
    def hinge_margin(self) -> float:
        return DEFAULT_MARGIN[self.method] if self.margin is None else float(self.margin)

    @property
    def relative(self) -> bool:
        return self.method == "fgsm" if self.relative_eps is None else self.relative_eps

    def core_attack(self) -> FGSM | PGD:
        """The core attack that runs on :class:`TargetScorer` (the last iterate, no scoring pass)."""
        if self.method == "fgsm":
            return FGSM(score=False)
        rel_step = 1.25 / self.steps if self.rel_step is None else self.rel_step  # attacker.py: 1.25·ε/10
        return PGD(steps=self.steps, rel_step=rel_step, random_start=self.random_start, keep_best=False,
                   score=False)

    def __call__(
        self,
        model: nn.Module,
        data: RecData,
        *,
        targets: Tensor | TargetSet,
        anchors: Tensor,
        seed: int = 0,
        diagnose: bool = True,
    ) -> PromotionResult:
        """Attack every target (each in its own copy of the item table) and evaluate HR@K over ``anchors``.

        ``seed`` drives PGD's random start (unused otherwise). ``diagnose`` adds the cross-modal cosine.
        """
        items, note = (targets.items, targets.note) if isinstance(targets, TargetSet) else (targets, None)
        ks = tuple(sorted({int(c) for c in self.ks} | {self.k}))
        setup = _Setup.build(model, data, items, anchors, k=self.k, ks=ks)
        generator = torch.Generator(device=setup.device).manual_seed(seed)
        attack, margin = self.core_attack(), self.hinge_margin
        parts: dict[str, list[Tensor]] = {}
        with frozen_model(model), torch.no_grad():
            for rows in setup.chunks(self.max_elements):
                clean = setup.clean_x[rows]  # (Tc, 2, D)
                scale = clean.norm(dim=-1, keepdim=True).clamp_min(_TINY) if self.relative else None
                scorer = setup.scorer(model, rows, margin=margin, scale=scale)
                x = clean if scale is None else clean / scale
                labels = torch.zeros(len(rows), dtype=torch.long, device=setup.device)  # unused: score=False
                x_adv = attack(scorer, x, labels, LinfBall(eps=float(self.eps), bounds=None), loss_fn=_loss_of,
                               generator=generator).x_adv
                # δ measured in x's units, mapped back exactly (ε = 0 returns the clean features bit for bit).
                adv = clean + (x_adv - x) * (1.0 if scale is None else scale)
                plain = setup.scorer(model, rows, margin=margin)
                _append(parts, "adv", adv)
                _append(parts, "loss_before", plain(clean)[:, 0])
                _append(parts, "loss_after", plain(adv)[:, 0])
                _append(parts, "rank_before", setup.ranks(plain, clean))
                _append(parts, "rank_after", setup.ranks(plain, adv))
                if diagnose:
                    _append(parts, "cosine", _cosine(plain, clean))
        out = {name: torch.cat(chunks) for name, chunks in parts.items()}
        return setup.result(out, method=self.method, eps=float(self.eps), margin=margin, note=note)


def promotion_attack(
    model: nn.Module,
    data: RecData,
    *,
    method: str = "fgsm",
    eps: float,
    targets: Tensor | TargetSet,
    anchors: Tensor,
    ks: Sequence[int] = (10, 20, 50, 100),
    margin: float | None = None,
    seed: int = 0,
    **settings: Any,
) -> PromotionResult:
    """:class:`PromotionAttack` in one call; ``settings`` are its other fields (``k``, ``steps``, ``max_elements``)."""
    attack = PromotionAttack(method=method, eps=eps, ks=ks, margin=margin, **settings)
    return attack(model, data, targets=targets, anchors=anchors, seed=seed)


def cross_modal_cosine(
    model: nn.Module,
    data: RecData,
    *,
    targets: Tensor | TargetSet,
    anchors: Tensor,
    k: int = 50,
    margin: float = 10.0,
    max_elements: int = 2**25,
) -> Tensor:
    """(T,) ``cos(∇_{v̂_t} L_t, ∇_{t̂_t} L_t)`` at the clean features: the cross-modal gradient mismatch (§7.1).

    Low values mean the visual and text perturbations are driven by different users (each modality's dominant
    group); UAT-MC's alignment term raises it during training. A target whose gradient is zero gets 0.
    """
    items = targets.items if isinstance(targets, TargetSet) else targets
    setup = _Setup.build(model, data, items, anchors, k=k, ks=(k,))
    with frozen_model(model), torch.no_grad():
        return torch.cat([_cosine(setup.scorer(model, rows, margin=margin), setup.clean_x[rows])
                          for rows in setup.chunks(max_elements)])


# -------------------------------------------------------------------------------------------------- internals
def _append(parts: dict[str, list[Tensor]], name: str, value: Tensor) -> None:
    parts.setdefault(name, []).append(value)


def _cosine(scorer: TargetScorer, x: Tensor) -> Tensor:
    """(T,) cosine between the visual and text rows of ∇ₓ scorer(x), x (T, 2, D)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(scorer(x).sum(), x)
    return torch.nn.functional.cosine_similarity(grad[:, 0], grad[:, 1], dim=-1, eps=_TINY)


@dataclass(kw_only=True)
class _Setup:
    """Everything computed once from the clean model: anchors' clean scores, masks, the k-th scores."""

    targets: Tensor  # (T,)
    anchors: Tensor  # (A,)
    base: tuple[Tensor, Tensor]  # clean (v̂, t̂), each (n_items, D)
    clean_x: Tensor  # (T, 2, D) the targets' clean [v̂_t, t̂_t]
    unseen: Tensor  # (A, n_items) bool: not a training item of the anchor (rankable)
    eligible: Tensor  # (T, A) bool: the anchor did not train on the target
    kth: Tensor  # (T, A) clean k-th score among unseen items other than the target
    k: int
    ks: tuple[int, ...]
    n_items: int

    @property
    def device(self) -> torch.device:
        return self.clean_x.device

    @staticmethod
    def build(model: nn.Module, data: RecData, targets: Tensor, anchors: Tensor, *, k: int,
              ks: tuple[int, ...]) -> _Setup:
        n_items = _check(model, data, targets, anchors, k)
        with frozen_model(model), torch.no_grad():
            v_hat, t_hat = (f.detach() for f in model.aligned())
            device = v_hat.device
            targets, anchors = targets.to(device), anchors.to(device)
            unseen = ~data.mask("train").to(device)[anchors]  # (A, n_items)
            scores = model.score_all(anchors).masked_fill(~unseen, -math.inf)  # (A, n_items)
            top = scores.topk(k + 1, dim=1)
            # The target excluded: if it is among u's top k, u's k-th other item is the (k+1)-th overall.
            inside = (top.indices[None, :, :k] == targets[:, None, None]).any(-1)  # (T, A)
            kth = torch.where(inside, top.values[None, :, k], top.values[None, :, k - 1])
        eligible = unseen[:, targets].T
        if not torch.isfinite(kth[eligible]).all():
            raise DataError(f"some anchors have fewer than {k + 1} items outside their training set; lower k")
        clean_x = torch.stack([v_hat[targets], t_hat[targets]], dim=1)
        return _Setup(targets=targets, anchors=anchors, base=(v_hat, t_hat), clean_x=clean_x, unseen=unseen,
                      eligible=eligible, kth=kth.masked_fill(~eligible, 0.0), k=k, ks=ks, n_items=n_items)

    def chunks(self, max_elements: int) -> Iterator[Tensor]:
        """Row indices of target chunks whose batched (Tc, A, n_items) scores hold ≤ ``max_elements``."""
        size = max(1, max_elements // (len(self.anchors) * self.n_items))
        yield from torch.arange(len(self.targets), device=self.device).split(size)

    def scorer(self, model: nn.Module, rows: Tensor, *, margin: float, scale: Tensor | None = None) -> TargetScorer:
        return TargetScorer(model, self.anchors, self.targets[rows], self.kth[rows], eligible=self.eligible[rows],
                            margin=margin, scale=scale, base=self.base)

    def ranks(self, scorer: TargetScorer, x: Tensor) -> Tensor:
        """(Tc, A) 1-based rank of each target among each anchor's unseen items (NaN where it was seen)."""
        v_hat, t_hat = scorer.features(x)
        scores = scorer.model.score_all(self.anchors, v_hat=v_hat, t_hat=t_hat)  # (Tc, A, n_items)
        s_t = scorer.target_scores(scores)
        above = ((scores > s_t[..., None]) & self.unseen).sum(-1)  # the target never beats itself
        return (above + 1).to(x.dtype).masked_fill(~scorer.eligible, math.nan)

    def result(self, out: dict[str, Tensor], *, method: str, eps: float, margin: float,
               note: str | None) -> PromotionResult:
        cut = torch.tensor(self.ks, device=self.device, dtype=out["rank_before"].dtype)

        def hr(rank: Tensor) -> Tensor:  # (T, A) → (T, len(ks)); NaN ranks (seen targets) are misses
            return (rank[..., None] <= cut).to(rank.dtype).mean(1)

        hr_before, hr_after = hr(out["rank_before"]), hr(out["rank_after"])
        main = self.ks.index(self.k)
        before, after = hr_before[:, main], hr_after[:, main]
        relative: list[float | None] = [
            (a / b - 1.0) * 100.0 if b > 0 else None for a, b in zip(after.tolist(), before.tolist(), strict=True)
        ]
        return PromotionResult(
            method=method, eps=eps, margin=margin, k=self.k, ks=self.ks, targets=self.targets,
            n_anchors=len(self.anchors), hr_before=hr_before, hr_after=hr_after,
            rank_before=out["rank_before"].nanmean(1), rank_after=out["rank_after"].nanmean(1),
            rank_change=(out["rank_before"] - out["rank_after"]).nanmean(1),
            loss_before=out["loss_before"], loss_after=out["loss_after"], hr_gain=after - before,
            relative_promotion=relative, v_adv=out["adv"][:, 0], t_adv=out["adv"][:, 1], cosine=out.get("cosine"),
            note=note,
        )


def _check(model: nn.Module, data: RecData, targets: Tensor, anchors: Tensor, k: int) -> int:
    """Validate the inputs; returns n_items."""
    for name in ("aligned", "score_all"):
        if not callable(getattr(model, name, None)):
            raise ConfigError(f"the model lacks {name}(); promotion attacks need a sparring.recsys Recommender")
    n_items = int(getattr(model, "n_items", data.n_items))
    if n_items != data.n_items or int(getattr(model, "n_users", data.n_users)) != data.n_users:
        raise DataError(f"the model has {getattr(model, 'n_users', '?')} users and {n_items} items but the data "
                        f"{data.n_users} and {data.n_items}: train the model on this data set")
    for name, index, size in (("targets", targets, n_items), ("anchors", anchors, data.n_users)):
        if not isinstance(index, Tensor) or index.dim() != 1 or index.dtype.is_floating_point:
            raise DataError(f"{name} must be a 1-d integer tensor of indices")
        if index.numel() == 0:
            raise DataError(f"{name} is empty: pass at least one (see pick_targets / anchor_users)")
        if int(index.min()) < 0 or int(index.max()) >= size:
            raise DataError(f"{name} must lie in [0, {size}), got [{int(index.min())}, {int(index.max())}]")
    if anchors.unique().numel() != anchors.numel():
        raise DataError("anchors contains duplicate users")
    if not 1 <= k < n_items:
        raise ConfigError(f"k must be in [1, n_items) = [1, {n_items}), got {k}")
    return n_items


__all__ = [
    "DEFAULT_MARGIN", "METHODS", "PromotionAttack", "PromotionResult", "TargetScorer", "TargetSet",
    "anchor_users", "cross_modal_cosine", "pick_targets", "promotion_attack",
]
