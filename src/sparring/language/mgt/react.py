"""REACT-style adversarial training of a few-shot MGT detector ("Fight Poison with Poison", Duan, Zhou, Li; arXiv
2605.02374 — abstract level), with the two baselines it is compared against.

Per-example loss on a batch of embeddings with labels y ∈ {human 0, machine 1, evasive rewrite 2} (binary label
b = [y > 0]; s = logit_machine − logit_human; z = the detector's unit-norm projection,
:meth:`~sparring.language.mgt.detector.MGTDetector.features`):

    ℓ_i = λ_ce · CE(logits_i, b_i) + λ_con · SupCon_i + λ_m · PBC_i

    SupCon_i = −1/|P(i)| Σ_{p∈P(i)} log [ exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) ],   P(i) = {p ≠ i : b_p = b_i}

(supervised contrastive, Khosla et al. 2020: machine texts *and their evasive rewrites* are one class and are
pulled together, away from human text), and the **pairwise margin constraint** ("PBC" in the paper's abstract,
whose definition is not given there). Our reading: a pairwise hinge between every machine-side example i
(machine text or rewrite) and every human example j of the batch,

    PBC_i = mean_j max(0, m − (s_i − s_j)) for machine-side i,   PBC_j = mean_i max(0, m − (s_i − s_j)) for human j,

so every rewrite must score at least m logits above every human text. It is a ranking constraint on *pairs*, not
a per-example threshold, which is what keeps the detector stable at the pre-training → adversarial transition:
adding rewrites (that the current detector scores as human) to the machine class cannot be satisfied by moving
the human scores up with them — each human-rewrite pair must keep its margin, so the clean ranking (AUROC) is
preserved while the boundary moves. Defaults: λ_ce = 1, λ_con = 0.5, τ = 0.1, λ_m = 0.5, m = 2.

The three methods of :func:`train_detector` (all on the same shots, same head, same pre-training step count):

* ``standard``: CE on the few shots (plain fine-tuning of the head);
* ``rule_at``: adversarial training on the rule-based attacks alone: ``rounds`` rounds of (black-box rule search,
  :class:`~sparring.language.mgt.search.RuleSearch`, against the current detector on the machine shots → add the
  rewrites as machine examples → CE, warm-started);
* ``react``: pre-training with CE + SupCon on the shots, then ``rounds`` rounds of evasive-sample generation
  against the current detector (the rule search, plus the humanizer's candidates of the shots when given: the one
  the current detector scores most human per text, REACT's humanisation player) and training with the full loss
  above (warm-started).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.language.mgt.detector import HUMAN, MACHINE, REWRITE, FitConfig, MGTDetector, fit_detector
from sparring.language.mgt.encoder import TextEncoder
from sparring.language.mgt.search import RuleSearch
from sparring.objectives.base import Objective, ObjectiveOutput

Method = Literal["standard", "rule_at", "react"]
METHODS: tuple[Method, ...] = ("standard", "rule_at", "react")


def supcon_loss(features: Tensor, labels: Tensor, *, temperature: float) -> Tensor:
    """Per-anchor supervised contrastive loss (B,) of unit-norm ``features`` (B, P); anchors without a positive
    get 0."""
    sims = features @ features.T / temperature  # (B, B)
    eye = torch.eye(len(features), dtype=torch.bool, device=features.device)
    log_prob = sims - torch.logsumexp(sims.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(1)
    total = (log_prob * positive).sum(1)
    return torch.where(count > 0, -total / count.clamp_min(1), torch.zeros_like(total))


def pairwise_margin_loss(scores: Tensor, machine: Tensor, *, margin: float) -> Tensor:
    """Per-example PBC (B,): the mean hinge max(0, m − (s_i − s_j)) over the human partners j of a machine-side i,
    or over the machine-side partners i of a human j (module doc); 0 without partners."""
    hinge = F.relu(margin - (scores[:, None] - scores[None, :]))  # [i, j]: i as machine-side, j as human
    pair = machine[:, None] & ~machine[None, :]
    hinge = hinge * pair
    as_machine = hinge.sum(1) / pair.sum(1).clamp_min(1)
    as_human = hinge.sum(0) / pair.sum(0).clamp_min(1)
    return torch.where(machine, as_machine, as_human)


@dataclass(kw_only=True)
class ContrastiveMarginLoss(Objective):
    """λ_ce·CE + λ_con·SupCon + λ_m·PBC on a :class:`MGTDetector` (module doc); with λ_con = λ_m = 0 it is the
    plain CE of the ``standard`` and ``rule_at`` baselines. Not registered: it trains embedding heads only."""

    name: ClassVar[str] = "react_contrastive"
    batch_dependent: ClassVar[bool] = True
    reduces_to_clean_ce: ClassVar[bool] = False

    ce_weight: float = 1.0
    contrastive_weight: float = 0.5
    temperature: float = 0.1
    margin_weight: float = 0.5
    margin: float = 2.0

    def __post_init__(self) -> None:
        if min(self.ce_weight, self.contrastive_weight, self.margin_weight) < 0 or self.temperature <= 0:
            raise ConfigError(f"invalid REACT loss settings: {self}")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *,
                 generator: torch.Generator | None = None) -> ObjectiveOutput:
        net: MGTDetector = getattr(model, "module", model)
        hidden = net.hidden(x)
        logits = net.head(hidden)
        machine = y > HUMAN
        binary = machine.long()
        ce = F.cross_entropy(logits, binary, reduction="none")
        loss = self.ce_weight * ce
        metrics: dict[str, Any] = {"ce": ce.detach().mean()}
        if self.contrastive_weight:
            con = supcon_loss(F.normalize(hidden, dim=-1), binary, temperature=self.temperature)
            loss = loss + self.contrastive_weight * con
            metrics["supcon"] = con.detach().mean()
        if self.margin_weight:
            pbc = pairwise_margin_loss(logits[:, 1] - logits[:, 0], machine, margin=self.margin)
            loss = loss + self.margin_weight * pbc
            metrics["pbc"] = pbc.detach().mean()
        return ObjectiveOutput(loss=loss, logits=logits, metrics=metrics)


@dataclass(kw_only=True)
class TrainSettings:
    """Settings of :func:`train_detector`: the pre-training fit, ``rounds`` adversarial rounds of ``round_fit``
    each, the rule search (its seed + the round number seeds each round's search, apart from ``seed``, so detectors
    of other seeds propose the same candidates and share the encoder's cache), the REACT loss, and ``search_cap``:
    at most this many machine shots (a seeded subset, new each round) are attacked per round (None: all)."""

    rounds: int = 2
    pretrain: FitConfig = field(default_factory=FitConfig)
    round_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=80))
    search: RuleSearch = field(default_factory=RuleSearch)
    loss: ContrastiveMarginLoss = field(default_factory=ContrastiveMarginLoss)
    search_cap: int | None = None
    seed: int = 0


def _fit(detector: MGTDetector, x: Tensor, y: Tensor, objective: Objective, fit: FitConfig, seed: int) -> None:
    fit_detector(detector, x, y, objective=objective,
                 config=FitConfig(epochs=fit.epochs, lr=fit.lr, weight_decay=fit.weight_decay, seed=seed))


def train_detector(method: Method, *, encoder: TextEncoder, human: Sequence[str], machine: Sequence[str],
                   settings: TrainSettings | None = None,
                   humanized: Mapping[str, Sequence[str]] | None = None) -> tuple[MGTDetector, list[dict[str, Any]]]:
    """A detector trained by ``method`` (module doc) on the shots ``human`` / ``machine``, and a log per round.

    ``humanized`` maps a machine text to its humanizer candidates (REACT only; texts absent from it get none)."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    settings = settings or TrainSettings()
    ce_only = ContrastiveMarginLoss(contrastive_weight=0.0, margin_weight=0.0)
    pre_loss = ce_only if method != "react" else ContrastiveMarginLoss(
        ce_weight=settings.loss.ce_weight, contrastive_weight=settings.loss.contrastive_weight,
        temperature=settings.loss.temperature, margin_weight=0.0, margin=settings.loss.margin)
    round_loss = settings.loss if method == "react" else ce_only
    x_h, x_m = encoder.embed(list(human)), encoder.embed(list(machine))
    x = torch.cat([x_h, x_m])
    y = torch.cat([torch.full((len(x_h),), HUMAN), torch.full((len(x_m),), MACHINE)])
    detector = MGTDetector(encoder.dim, seed=settings.seed)
    _fit(detector, x, y, pre_loss, settings.pretrain, settings.seed)
    log: list[dict[str, Any]] = []
    if method == "standard":
        return detector, log
    rewrites: dict[str, None] = {}  # ordered set of evasive texts

    def score(texts: list[str]) -> Tensor:
        return detector.score(encoder.embed(texts))

    for r in range(settings.rounds):
        search = RuleSearch(steps=settings.search.steps, candidates=settings.search.candidates,
                            step_budget=settings.search.step_budget, rewrites=settings.search.rewrites,
                            threshold=settings.search.threshold, seed=settings.search.seed * 1009 + r)
        targets = list(machine)
        if settings.search_cap is not None and len(targets) > settings.search_cap:
            g = torch.Generator().manual_seed(settings.seed * 1009 + r)
            targets = [targets[i] for i in torch.randperm(len(targets), generator=g)[:settings.search_cap].tolist()]
        result = search(targets, score, neighbours=encoder.neighbours)
        new = [t for t, m in zip(result.texts, targets, strict=True) if t != m]
        evaded = float((result.scores < settings.search.threshold).float().mean())
        n_human = 0
        if method == "react" and humanized:
            groups = [list(humanized[m]) for m in machine if m in humanized and humanized[m]]
            if groups:
                from sparring.language.mgt.humanizer import Humanizer

                new += Humanizer.select(groups, score)
                n_human = len(groups)
        rewrites.update(dict.fromkeys(new))
        texts = list(rewrites)
        x_r = encoder.embed(texts)
        _fit(detector, torch.cat([x, x_r]), torch.cat([y, torch.full((len(x_r),), REWRITE)]), round_loss,
             settings.round_fit, settings.seed * 1009 + r + 1)
        log.append({"round": r, "rule_search_evasion_on_shots": evaded, "new_rewrites": len(new),
                    "humanized_texts": n_human, "rewrites_total": len(texts)})
    return detector, log


__all__ = ["METHODS", "ContrastiveMarginLoss", "TrainSettings", "pairwise_margin_loss", "supcon_loss",
           "train_detector"]
