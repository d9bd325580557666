"""Long-tailed adversarial training: PGD-AT, TRADES, AT-BSL, PGD-AT + RobustLT, AT-BSL + RobustLT, MCAT, RAAT and
PGD-AT + DRO on long-tailed digits and long-tailed MNIST-1D, measured on our terms and on the papers'.

Data (both offline, both built in code):

* ``digits``: scikit-learn's digits through ``sparring.data.load_data("digits")``: 1347 train / 450 test
  8x8 images in [0, 1]; L∞ ε = 0.2 (the demo's digits budget). Imbalance ratios 10 and 50.
* ``mnist1d``: ``load_data("mnist1d")``, the PyPI package's ``make_dataset`` (5000 signals, its 80 / 20
  split, seed 42), min-max scaled to [0, 1]; L∞ ε = 0.03 (a third of the signal's standard deviation).
  Imbalance ratios 10, 50 and 100 (class counts 398 → 39 / 7 / 3).

The training split is made long-tailed with the exponential profile (``sparring.data.long_tail``: class 0
the head, class 9 the tail, n_0 / n_9 = IR), drawn under the run's seed; the test split stays balanced.

Models, initialised from the seed: on digits an MLP (``build_model("mlp", hidden=(256, 256))``); on
MNIST-1D the 1-D CNN of its paper (``build_model("cnn1d")``, ~95% clean where an MLP gets ~70%) behind a
``Normalize`` layer with the balanced training split's mean and std (ε stays in [0, 1] units). Every method
trains with ``sparring.train.Trainer`` for the same epochs (batch 64, SGD lr 0.05 momentum 0.9, wd 5e-4,
cosine schedule, no validation pass), attacking with PGD-10 (α = ε/4, random start, last iterate) at the
evaluation ε.

Epoch budget. Digits: 30 epochs, chosen earlier from PGD-AT's *training* accuracy on one IR-10 split (ε so
that it lands near 50-65% adversarial training accuracy). MNIST-1D (``--epochs auto``, its default): chosen per
imbalance ratio on a validation split of the long-tailed training split, never the test split, by this rule
(:func:`select_epochs`):

    1. draw the long-tailed training split under seed 0 and hold out ⌊0.2·n_c + ½⌋ of each class c
       (``stratified_split``) as validation;
    2. train PGD-AT (the base every paper compares against) on the rest for each budget in
       EPOCH_CANDIDATES = (10, 20, 30, 40), each a full cosine schedule;
    3. score each on the validation split by balanced PGD-10 robust accuracy (the training attack; the mean
       over the classes present in the validation split);
    4. take the smallest budget whose score is within 1 point (0.01) of the best.

Every method then trains on the whole long-tailed split for that budget (``epoch_selection`` in the JSON).

Methods:

* ``pgd_at``: Madry et al.; ``trades``: β = 6, its own 10-step KL maximizer; ``at_bsl``: Balanced Softmax,
  τ_b = 1 (counts from the trainer; no AutoAugment, which the AT-BSL paper adds); ``robustlt``: RobustLT over
  PGD-AT, the paper's CIFAR-10-LT setting α = 0.3, β = 0.8; ``robustlt_bsl``: RobustLT over AT-BSL, the same
  α, β (the base of the paper's largest gains);
  ``mcat``: MCAT's defaults; ``raat``: RAAT's defaults with noise views (``augment: noise``; the default
  1-pixel crops of 8x8 digits cost an MLP most of its accuracy); ``dro``: the WARDEN-style KL DRO wrapper
  over PGD-AT with its defaults; ``awp`` (not in the default list): AWP over PGD-AT, γ = 5e-3.

Evaluation on the whole balanced test split at the training ε, three ways:

* ours: the ``standard`` suite (APGD-CE → APGD-T → Square, per sample worst case; AutoAttack's
  composition): balanced clean / robust accuracy, tail robust accuracy (the rarest third of the classes by
  training count: 7, 8, 9) and head robust accuracy — the keys of the first version of this benchmark;
* the papers' attacks: PGD-20 (CE, α = ε/4, random start, last iterate — torchattacks' PGD, which RobustLT
  and MCAT evaluate with) and CW-margin PGD-20 (the same on the Carlini–Wagner margin ``max_{i≠y} z_i − z_y``);
* the papers' groups under all three: RobustLT's tail = the rarest 80% of the classes (classes 2..9), and
  many / medium / few-shot classes by training count (many > 100·s, medium 20·s..100·s, few < 20·s with
  s = n_max / 500, CIFAR-100-LT's head: thresholds 80 / 16 on MNIST-1D-LT, ~27 / 5.4 on digits-LT; the JSON
  states them per run).

``mean ± std`` over seeds (population std). The ``comparisons`` table sets each paper's claim beside the same
comparison here (RobustLT over PGD-AT: tail-80% PGD-20, 13.71 → 16.36 on CIFAR-10-LT IR 50 with WRN-28-10;
RobustLT over AT-BSL: tail-80% AutoAttack, 24.84 → 30.70; MCAT against AT-BSL: +3.7 AutoAttack on
CIFAR-100-LT IR 50 — the appendix table gives 28.7 → 32.0). Nothing was tuned on the test split.

RAAT (``--raat-compare``): PGD-AT and RAAT, each with and without augmentation (MNIST-1D: circular shifts of up
to 4 of its 40 samples, ``random_shift``; digits: Gaussian noise σ = 0.03; PGD-AT gets it as a data pipeline,
RAAT as its two views), trained for ``--epochs`` (default 30; no selection) at ε × (0.5, 0.75, 1, 1.25, 1.5) on
the *balanced* training split by default
(``--raat-ratio 1``: RAAT's paper uses balanced CIFAR) and evaluated at ε with the ``standard`` suite. The
paper's claim is clean accuracy up at equal robustness, so each variant's clean accuracy is read off its
(robust, clean) curve at the robust accuracy of PGD-AT with augmentation at ε (linear interpolation; ``null``
outside the curve's range): ``raat_compare`` in the JSON.

Run: ``python benchmarks/longtail.py --jobs 2`` (``--quick``: one seed, digits IR 50, 5 epochs; also
``--dataset {digits,mnist1d}``, ``--datasets``, ``--ratios``, ``--seeds``, ``--methods``, ``--epochs N|auto``,
``--eps-scale``, ``--raat-compare``). Writes ``benchmarks/results/longtail.json`` and ``.md`` (``_<dataset>``
with one ``--dataset``, ``_quick`` with ``--quick``, ``_eps0.5`` with ``--eps-scale 0.5``, ``_raat`` with
``--raat-compare``). Cost on 2 quiet cores with ``--jobs 2`` (from the first version's per-run times): the full
default run (2 data sets, 5 ratios in all, 8 methods, 3 seeds: 120 runs plus 12 selection runs) about 55 minutes,
up to ~70 if the selection picks 40 epochs on MNIST-1D (MCAT's latent search is a third of it); ``--dataset mnist1d``
about 45; ``--dataset digits`` about 10; ``--raat-compare --dataset mnist1d`` (4 variants × 5 budgets × 3 seeds)
about 25; ``--quick`` about 2.5 minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import environment, log
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.data import Dataset, load_data, long_tail
from sparring.data.augment import make_augment
from sparring.data.dataset import stratified_split
from sparring.data.epochs import TensorData
from sparring.evaluate import evaluate, long_tail_summary, shot_groups, tail_fraction_group
from sparring.models import build_model, with_normalization
from sparring.objectives import Objective, build
from sparring.threat import LinfBall, ThreatModel
from sparring.train import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "results"
EPS = {"digits": 0.2, "mnist1d": 0.03}
RATIOS = {"digits": (10.0, 50.0), "mnist1d": (10.0, 50.0, 100.0)}
DEFAULT_EPOCHS: dict[str, int | str] = {"digits": 30, "mnist1d": "auto"}
EPOCH_CANDIDATES = (10, 20, 30, 40)
SELECTION_TOLERANCE = 0.01  # the smallest budget within 1 point of the best validation score
SELECTION_RULE = ("PGD-AT on 80% of the long-tailed training split (seed 0) for each candidate budget; score: "
                  "balanced PGD-10 robust accuracy on the other 20% (stratified); the smallest budget within 1 point "
                  "of the best")
AUGMENT = {"digits": "noise", "mnist1d": "shift"}  # RAAT's views and the --raat-compare data pipeline
RAAT_EPS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
METHODS = ("pgd_at", "trades", "at_bsl", "robustlt", "mcat", "raat", "dro", "awp", "robustlt_bsl")
DEFAULT_METHODS = tuple(m for m in METHODS if m != "awp")
LABELS = {
    "pgd_at": "PGD-AT", "trades": "TRADES", "at_bsl": "AT-BSL", "robustlt": "PGD-AT + RobustLT",
    "mcat": "MCAT", "raat": "RAAT", "dro": "PGD-AT + DRO",
    "awp": "PGD-AT + AWP", "robustlt_bsl": "AT-BSL + RobustLT",
}
#: Which comparison each method's paper made (the column "paper compares").
PAPER_COMPARES = {
    "pgd_at": "the base of RobustLT's and RAAT's comparisons",
    "trades": "—",
    "at_bsl": "the base of RobustLT's largest gains and of MCAT's headline",
    "robustlt": "vs PGD-AT: tail-80% PGD-20 13.71 → 16.36 (CIFAR-10-LT IR 50, WRN-28-10)",
    "robustlt_bsl": "vs AT-BSL: tail-80% AutoAttack 24.84 → 30.70 (CIFAR-10-LT IR 50)",
    "mcat": "vs AT-BSL: +3.7 AutoAttack (CIFAR-100-LT IR 50; appendix 28.7 → 32.0)",
    "raat": "vs PGD-AT on balanced CIFAR: clean up at equal robustness",
    "dro": "—",
    "awp": "—",
}
#: The papers' comparisons, each re-made here: (base, method, metric family, the paper's figures).
COMPARISONS = (
    {"key": "robustlt_over_pgd_at", "base": "pgd_at", "method": "robustlt", "group": "tail80",
     "paper_attack": "pgd20", "paper": {"base": 13.71, "method": 16.36, "metric": "tail-80% robust, PGD-20",
                                        "setting": "CIFAR-10-LT IR 50, WRN-28-10"}},
    {"key": "robustlt_over_at_bsl", "base": "at_bsl", "method": "robustlt_bsl", "group": "tail80",
     "paper_attack": "standard", "paper": {"base": 24.84, "method": 30.70, "metric": "tail-80% robust, AutoAttack",
                                           "setting": "CIFAR-10-LT IR 50, WRN-28-10"}},
    {"key": "mcat_vs_at_bsl", "base": "at_bsl", "method": "mcat", "group": "overall",
     "paper_attack": "standard", "paper": {"base": 28.7, "method": 32.0, "delta": 3.7,
                                           "metric": "robust accuracy, AutoAttack",
                                           "setting": "CIFAR-100-LT IR 50, ResNet-18"}},
)
EVAL_ATTACKS = ("pgd20", "cw20", "standard")
GROUPS = ("overall", "balanced", "tail80", "tail3", "head3", "many", "medium", "few")


# ----------------------------------------------------------------------------- data, models, objectives
class AugmentedData(TensorData):
    """Fixed tensors, augmented afresh in every batch (the data pipeline of PGD-AT & co. in the papers): epoch e
    draws from a generator seeded by ``(seed, e)``, so a seed gives one run. ``tensors()`` stays unaugmented."""

    def __init__(self, x: Tensor, y: Tensor, *, augment: str, seed: int, num_classes: int | None = None) -> None:
        super().__init__(x, y, num_classes=num_classes)
        self.augment = make_augment(augment, tuple(x.shape[1:]))
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed * 100_003 + int(epoch))

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        x, y = super().batch(indices)
        return self.augment(x, self.generator), y


def make_objective(method: str, eps: float, *, raat_augment: str = "noise") -> Objective:
    """The method at its defaults, with the shared training threat and PGD-10 inner attack."""
    threat = LinfBall(eps=eps)

    def attack() -> PGD:
        return PGD(steps=10, keep_best=False, score=False)

    if method == "trades":  # its own KL maximizer: 10 steps of 0.007/0.031 ε ≈ ε/4
        return build("trades", threat=threat)
    if method in ("pgd_at", "at_bsl", "mcat"):
        return build(method, threat=threat, attack=attack())
    if method == "raat":  # views by noise on digits (an MLP on 8x8 digits is not shift-invariant)
        return build("raat", threat=threat, attack=attack(), augment=raat_augment)
    if method == "robustlt":
        return build("robustlt", base=build("pgd_at", threat=threat, attack=attack()), alpha=0.3, beta=0.8)
    if method == "robustlt_bsl":
        return build("robustlt", base=build("at_bsl", threat=threat, attack=attack()), alpha=0.3, beta=0.8)
    if method == "awp":
        return build("awp", base=build("pgd_at", threat=threat, attack=attack()))
    if method == "dro":
        return build("dro", base=build("pgd_at", threat=threat, attack=attack()))
    raise ValueError(f"unknown method {method!r}")


def make_model(dataset: str, train: Dataset, balanced: Dataset) -> nn.Module:
    if dataset == "mnist1d":
        return with_normalization(build_model("cnn1d", input_shape=train.input_shape, num_classes=10),
                                  float(balanced.x.mean()), float(balanced.x.std()))
    return build_model("mlp", input_shape=train.input_shape, num_classes=10, hidden=(256, 256))


def train_model(
    model: nn.Module, objective: Objective, data: TensorData, epochs: int, seed: int
) -> tuple[nn.Module, list[dict[str, Any]]]:
    config = TrainConfig(
        epochs=epochs, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", seed=seed,
        progress=False,
    )
    trainer = Trainer(model=model, objective=objective, train=data, config=config, num_classes=10)
    history = trainer.fit().history
    return trainer.accelerator.unwrap_model(trainer.model).eval(), history


# ----------------------------------------------------------------------------- the papers' evaluations
def paper_attacks() -> dict[str, Attack]:
    """PGD-20 on CE and on the CW margin: α = ε/4 (2/255 at 8/255), random start, the last iterate (torchattacks)."""
    return {
        "pgd20": PGD(steps=20, rel_step=0.25, keep_best=False),
        "cw20": PGD(steps=20, rel_step=0.25, keep_best=False, loss="margin"),
    }


def correct_under(
    model: nn.Module, data: Dataset, threat: ThreatModel, attack: Attack | None, *, seed: int, batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(N,) bool: clean-correct (``attack`` None) or clean-correct and not broken by ``attack``."""
    out = []
    gen = torch.Generator(device=device).manual_seed(int(seed))
    for start in range(0, len(data), batch_size):
        x, y = data.x[start:start + batch_size].to(device), data.y[start:start + batch_size].to(device)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        if attack is not None:
            correct &= attack(model, x, y, threat, generator=gen).robust
        out.append(correct.cpu())
    return torch.cat(out)


def per_class_rows(labels: Tensor, clean: Tensor, robust: Tensor, num_classes: int) -> list[dict[str, Any]]:
    """Per-class rows in :func:`sparring.evaluate.long_tail_summary`'s format."""
    rows = []
    for c in range(num_classes):
        mask = labels == c
        n = int(mask.sum())
        rows.append({"class": c, "n": n, "clean_accuracy": float(clean[mask].float().mean()) if n else 0.0,
                     "robust_accuracy": float(robust[mask].float().mean()) if n else 0.0})
    return rows


def group_metrics(rows: list[dict[str, Any]], counts: list[int], overall: tuple[float, float]) -> dict[str, Any]:
    """Clean and robust accuracy of every group of :data:`GROUPS` (``None`` for an empty group)."""
    present = [r for r in rows if r["n"]]
    out: dict[str, Any] = {
        "overall": {"clean": overall[0], "robust": overall[1]},
        "balanced": {key: sum(r[f"{key}_accuracy"] for r in present) / len(present) for key in ("clean", "robust")},
        "tail80": tail_fraction_group(rows, counts),
    }
    thirds = long_tail_summary(rows, counts)  # None on (nearly) balanced splits
    out["tail3"] = thirds["tail"] if thirds else None
    out["head3"] = thirds["head"] if thirds else None
    shots = shot_groups(rows, counts)
    out.update({name: shots[name] for name in ("many", "medium", "few")})
    return {name: ({"clean": g["clean"], "robust": g["robust"]} if g else {"clean": None, "robust": None})
            for name, g in out.items()}


def paper_metrics(
    model: nn.Module, test: Dataset, threat: ThreatModel, counts: list[int], standard_robust: Tensor, *, seed: int,
    device: torch.device | str = "cpu", attacks: dict[str, Attack] | None = None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Flat ``{group}_{clean|robust_<attack>}`` metrics under PGD-20, CW-20 (``attacks``, default
    :func:`paper_attacks`) and the standard suite (its per-sample robust mask given), and the shot thresholds used."""
    clean = correct_under(model, test, threat, None, seed=seed, device=device)
    masks = {name: correct_under(model, test, threat, attack, seed=seed, device=device)
             for name, attack in (attacks or paper_attacks()).items()}
    masks["standard"] = standard_robust.cpu() & clean
    flat: dict[str, float | None] = {}
    for name, robust in masks.items():
        rows = per_class_rows(test.y.cpu(), clean, robust, test.num_classes)
        groups = group_metrics(rows, counts, (float(clean.float().mean()), float(robust.float().mean())))
        for group, values in groups.items():
            flat[f"{group}_clean"] = values["clean"]
            flat[f"{group}_robust_{name}"] = values["robust"]
        flat[f"per_class_robust_{name}"] = [r["robust_accuracy"] for r in rows]  # type: ignore[assignment]
    shots = shot_groups(per_class_rows(test.y.cpu(), clean, clean, test.num_classes), counts)
    thresholds = {k: shots[k] for k in ("many_above", "few_below", "scale", "rule")}
    thresholds["classes"] = {k: shots[k]["classes"] for k in ("many", "medium", "few")}
    return flat, thresholds


# ----------------------------------------------------------------------------- one run
def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (data set, IR, seed, method); one thread, so jobs run side by side."""
    torch.set_num_threads(1)
    if job.get("kind") == "select":
        return select_one(job)
    dataset, ratio, seed, method, epochs = job["dataset"], job["ratio"], job["seed"], job["method"], job["epochs"]
    eps = EPS[dataset] * job.get("eps_scale", 1.0)
    train_eps = eps * job.get("train_eps_scale", 1.0)
    balanced, test = load_data(dataset)
    train = long_tail(balanced, imbalance_ratio=ratio, seed=seed)
    torch.manual_seed(seed)
    model = make_model(dataset, train, balanced)
    # RAAT's two views: the data set's augmentation (MNIST-1D shifts, digits noise); under --raat-compare, the
    # job's augmentation is RAAT's views or the other method's data pipeline, and None means neither.
    augment = job["augment"] if "augment" in job else None
    views = (augment or "none") if "augment" in job else AUGMENT[dataset]
    objective = make_objective(method, train_eps, raat_augment=views)
    if augment and method != "raat":
        data: TensorData = AugmentedData(train.x, train.y, augment=augment, seed=seed, num_classes=10)
    else:
        data = TensorData(train.x, train.y, num_classes=10)
    started = time.perf_counter()
    model, history = train_model(model, objective, data, epochs, seed)
    train_s = time.perf_counter() - started
    threat = LinfBall(eps=eps)
    evaluation = evaluate(model, test, threat, suite="standard", seed=seed, eps_curve=[])
    summary = evaluation.to_dict()
    counts = train.class_counts().tolist()
    groups = long_tail_summary(summary["per_class"], counts)
    paper, thresholds = paper_metrics(model, test, threat, counts, evaluation.worst_case, seed=seed)
    return {
        **{k: job[k] for k in ("dataset", "ratio", "seed", "method")},
        **{k: job[k] for k in ("augment", "train_eps_scale", "variant") if k in job},
        "eps": eps,
        "epochs": epochs,
        "train_counts": counts,
        "balanced_clean": summary["balanced_accuracy"]["clean"],
        "balanced_robust": summary["balanced_accuracy"]["robust"],
        "tail_robust": groups["tail"]["robust"] if groups else None,
        "tail_clean": groups["tail"]["clean"] if groups else None,
        "head_robust": groups["head"]["robust"] if groups else None,
        "robust": summary["robust_accuracy"]["worst_case"],
        "trustworthy": summary["trustworthy"],
        "per_class_robust": [row["robust_accuracy"] for row in summary["per_class"]],
        "paper": paper,
        "shot_thresholds": thresholds,
        "final_train_loss": history[-1]["train_loss"],
        "train_s": train_s,
        "eval_s": evaluation.time_s,
    }


# ----------------------------------------------------------------------------- epoch selection
def validation_split(dataset: str, ratio: float) -> tuple[Dataset, Dataset, Dataset]:
    """(balanced train, fit part, validation part) of the long-tailed training split drawn under seed 0."""
    balanced, _ = load_data(dataset)  # the test split is not used
    train = long_tail(balanced, imbalance_ratio=ratio, seed=0)
    fit, val = stratified_split(train, test_fraction=0.2, seed=0)
    return balanced, fit, val


def select_one(job: dict[str, Any]) -> dict[str, Any]:
    """PGD-AT trained on the fit part for ``job["epochs"]`` epochs, scored on the validation part."""
    dataset, ratio, epochs = job["dataset"], job["ratio"], job["epochs"]
    eps = EPS[dataset] * job.get("eps_scale", 1.0)
    balanced, fit, val = validation_split(dataset, ratio)
    torch.manual_seed(0)
    model = make_model(dataset, fit, balanced)
    started = time.perf_counter()
    model, _ = train_model(model, make_objective("pgd_at", eps), TensorData(fit.x, fit.y, num_classes=10), epochs, 0)
    threat = LinfBall(eps=eps)
    clean = correct_under(model, val, threat, None, seed=0)
    robust = correct_under(model, val, threat, PGD(steps=10, rel_step=0.25), seed=0)
    rows = [r for r in per_class_rows(val.y, clean, robust, 10) if r["n"]]
    return {"kind": "select", "dataset": dataset, "ratio": ratio, "epochs": epochs,
            "val_balanced_robust": sum(r["robust_accuracy"] for r in rows) / len(rows),
            "val_balanced_clean": sum(r["clean_accuracy"] for r in rows) / len(rows),
            "val_counts": val.class_counts().tolist(), "train_s": time.perf_counter() - started}


def choose_epochs(scores: dict[int, float], tolerance: float = SELECTION_TOLERANCE) -> int:
    """The smallest budget whose validation score is within ``tolerance`` of the best."""
    best = max(scores.values())
    return min(e for e, s in scores.items() if s >= best - tolerance)


def select_epochs(dataset: str, ratio: float, candidates: Sequence[int] = EPOCH_CANDIDATES, *,
                  eps_scale: float = 1.0) -> dict[str, Any]:
    """Run the selection rule of the module docstring in this process (the main run schedules the same jobs in
    its pool)."""
    results = [run_one({"kind": "select", "dataset": dataset, "ratio": ratio, "epochs": e, "eps_scale": eps_scale})
               for e in candidates]
    scores = {r["epochs"]: r["val_balanced_robust"] for r in results}
    return {"dataset": dataset, "ratio": ratio, "scores": scores, "chosen": choose_epochs(scores)}


# ----------------------------------------------------------------------------- tables
def _stat(values: list[Any]) -> dict[str, float | int] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "n": len(values)}


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["dataset"], r["ratio"], r["method"]) for r in runs},
                  key=lambda k: (k[0], k[1], _order(k[2])))
    for dataset, ratio, method in keys:
        group = [r for r in runs if (r["dataset"], r["ratio"], r["method"]) == (dataset, ratio, method)]
        row: dict[str, Any] = {"dataset": dataset, "ratio": ratio, "method": method, "seeds": len(group)}
        for metric in ("balanced_clean", "balanced_robust", "tail_robust", "head_robust"):
            row[metric] = _stat([r[metric] for r in group])
        row["train_s"] = statistics.median(r["train_s"] for r in group)
        row["epochs"] = group[0]["epochs"]
        row["paper_compares"] = PAPER_COMPARES.get(method, "—")
        paper_keys = [k for k in group[0]["paper"] if not k.startswith("per_class")]
        row["paper"] = {k: _stat([r["paper"][k] for r in group]) for k in paper_keys}
        row["shot_thresholds"] = group[0]["shot_thresholds"]
        rows.append(row)
    return rows


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each paper's comparison re-made on every (data set, IR) where both its methods ran."""
    out = []
    index = {(r["dataset"], r["ratio"], r["method"]): r for r in rows}
    for spec in COMPARISONS:
        for dataset, ratio in sorted({(r["dataset"], r["ratio"]) for r in rows}):
            base, method = index.get((dataset, ratio, spec["base"])), index.get((dataset, ratio, spec["method"]))
            if base is None or method is None:
                continue
            entry: dict[str, Any] = {"key": spec["key"], "dataset": dataset, "ratio": ratio,
                                     "base": spec["base"], "method": spec["method"], "group": spec["group"],
                                     "paper_attack": spec["paper_attack"], "paper": spec["paper"], "ours": {}}
            for attack in EVAL_ATTACKS:
                key = f"{spec['group']}_robust_{attack}"
                b, m = base["paper"].get(key), method["paper"].get(key)
                entry["ours"][attack] = {"base": b, "method": m,
                                         "delta": None if b is None or m is None else m["mean"] - b["mean"]}
            b, m = base["tail_robust"], method["tail_robust"]  # our rank-third tail, standard suite
            entry["ours"]["tail3_standard"] = {"base": b, "method": m,
                                               "delta": None if b is None or m is None else m["mean"] - b["mean"]}
            out.append(entry)
    return out


def _pm(stat: dict[str, float] | None) -> str:
    return "—" if stat is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | IR | method | balanced clean | balanced robust | tail robust | head robust | train s | epochs "
        "| paper compares |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [_pm(row[m]) for m in ("balanced_clean", "balanced_robust", "tail_robust", "head_robust")]
        lines.append(f"| {row['dataset']} | {row['ratio']:g} | {LABELS.get(row['method'], row['method'])} | "
                     + " | ".join(cells) + f" | {row['train_s']:.0f} | {row['epochs']} | {row['paper_compares']} |")
    return "\n".join(lines) + "\n"


def paper_markdown(rows: list[dict[str, Any]]) -> str:
    """The papers' terms: tail-80% under PGD-20 / CW-20 / standard, and many / medium / few-shot (standard)."""
    lines = [
        "| data | IR | method | tail-80% clean | tail-80% PGD-20 | tail-80% CW-20 | tail-80% standard | PGD-20 "
        "| CW-20 | standard | many | medium | few | shot thresholds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row["paper"]
        cells = [p.get("tail80_clean"), p.get("tail80_robust_pgd20"), p.get("tail80_robust_cw20"),
                 p.get("tail80_robust_standard"), p.get("overall_robust_pgd20"), p.get("overall_robust_cw20"),
                 p.get("overall_robust_standard"), p.get("many_robust_standard"), p.get("medium_robust_standard"),
                 p.get("few_robust_standard")]
        t = row["shot_thresholds"]
        lines.append(f"| {row['dataset']} | {row['ratio']:g} | {LABELS.get(row['method'], row['method'])} | "
                     + " | ".join(_pm(c) for c in cells) + f" | >{t['many_above']:.3g} / <{t['few_below']:.3g} |")
    return "\n".join(lines) + "\n"


def comparison_markdown(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| comparison | data | IR | group | PGD-20: base → method | CW-20 | standard | our tail (third), standard "
        "| paper (metric, setting): base → method |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        def arrow(cell: dict[str, Any]) -> str:
            if cell["base"] is None or cell["method"] is None:
                return "—"
            return f"{_pm(cell['base'])} → {_pm(cell['method'])} ({100 * cell['delta']:+.1f})"

        paper = e["paper"]
        lines.append(
            f"| {LABELS[e['method']]} vs {LABELS[e['base']]} | {e['dataset']} | {e['ratio']:g} | {e['group']} | "
            + " | ".join(arrow(e["ours"][a]) for a in (*EVAL_ATTACKS, "tail3_standard"))
            + f" | {paper['metric']}, {paper['setting']}: {paper['base']:.2f} → {paper['method']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- RAAT at matched robustness
RAAT_VARIANTS = {  # variant → (method, augmented?)
    "pgd_at+aug": ("pgd_at", True), "pgd_at": ("pgd_at", False), "raat+aug": ("raat", True), "raat": ("raat", False),
}


def matched_clean(points: list[tuple[float, float]], target: float) -> float | None:
    """Clean accuracy at robust accuracy ``target`` on the piecewise-linear (robust, clean) curve; None outside."""
    points = sorted(points)
    robust = [p[0] for p in points]
    if not points or target < robust[0] - 1e-12 or target > robust[-1] + 1e-12:
        return None
    return float(np.interp(target, robust, [p[1] for p in points]))


def raat_compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set: each variant's (robust, clean) curve over training budgets and its clean accuracy at the robust
    accuracy of PGD-AT with augmentation at ε (balanced, standard suite)."""
    out = []
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = [r for r in runs if r["dataset"] == dataset]
        curves: dict[str, list[dict[str, Any]]] = {}
        for variant in RAAT_VARIANTS:
            for scale in sorted({r["train_eps_scale"] for r in mine}):
                group = [r for r in mine if r["variant"] == variant and r["train_eps_scale"] == scale]
                if group:
                    curves.setdefault(variant, []).append({
                        "train_eps_scale": scale, "robust": _stat([r["balanced_robust"] for r in group]),
                        "clean": _stat([r["balanced_clean"] for r in group]), "seeds": len(group)})
        reference = next((p for p in curves.get("pgd_at+aug", []) if p["train_eps_scale"] == 1.0), None)
        target = reference["robust"]["mean"] if reference else None
        matched = {}
        for variant, curve in curves.items():
            points = [(p["robust"]["mean"], p["clean"]["mean"]) for p in curve]
            matched[variant] = matched_clean(points, target) if target is not None else None
        base = matched.get("pgd_at+aug")
        out.append({
            "dataset": dataset, "ratio": mine[0]["ratio"],
            "augment": next((r["augment"] for r in mine if r.get("augment")), AUGMENT.get(dataset)),
            "target_robust": target, "curves": curves, "clean_at_target": matched,
            "raat_clean_gain": (None if base is None or matched.get("raat+aug") is None
                                else matched["raat+aug"] - base),
            "raat_clean_rises": (None if base is None or matched.get("raat+aug") is None
                                 else matched["raat+aug"] > base),
        })
    return out


def raat_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline of :func:`raat_compare`: per data set, the target and each variant's clean accuracy there."""
    keys = ("target_robust", "clean_at_target", "raat_clean_gain", "raat_clean_rises")
    return {e["dataset"]: {k: e[k] for k in keys} for e in entries}


def raat_markdown(entries: list[dict[str, Any]]) -> str:
    lines = ["| data | IR | variant | (train ε scale: robust / clean) | clean at PGD-AT+aug's robust |",
             "|---|---|---|---|---|"]
    for e in entries:
        for variant, curve in e["curves"].items():
            points = ", ".join(f"{p['train_eps_scale']:g}: {100 * p['robust']['mean']:.1f} / "
                               f"{100 * p['clean']['mean']:.1f}" for p in curve)
            value = e["clean_at_target"].get(variant)
            lines.append(f"| {e['dataset']} | {e['ratio']:g} | {variant} | {points} | "
                         f"{'—' if value is None else f'{100 * value:.1f}'} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def run_pool(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(run_one, job) for job in jobs]):
            result = future.result()
            results.append(result)
            if result.get("kind") == "select":
                log(f"[{len(results)}/{len(jobs)}] select {result['dataset']} IR {result['ratio']:g} "
                    f"{result['epochs']} epochs: val balanced robust {result['val_balanced_robust']:.3f} "
                    f"({result['train_s']:.0f} s)")
            else:
                log(f"[{len(results)}/{len(jobs)}] {result['dataset']} IR {result['ratio']:g} seed {result['seed']} "
                    f"{result.get('variant', result['method'])}: clean {result['balanced_clean']:.3f} robust "
                    f"{result['balanced_robust']:.3f} tail-80% PGD-20 {result['paper']['tail80_robust_pgd20']:.3f} "
                    f"({result['train_s']:.0f}+{result['eval_s']:.0f} s)")
    return results


def parse_epochs(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        epochs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--epochs takes a positive integer or 'auto', got {value!r}") from None
    if epochs < 1:
        raise argparse.ArgumentTypeError(f"--epochs must be >= 1, got {epochs}")
    return epochs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(EPS), help="one data set (results go to longtail_<dataset>.*)")
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"], choices=sorted(EPS))
    parser.add_argument("--ratios", nargs="+", type=float, help="default: digits 10 50, mnist1d 10 50 100 "
                        "(chosen ratios: results go to longtail*_ir<ratios>.*)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=parse_epochs, help="N or 'auto' (default: digits 30, mnist1d auto)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes, one thread each")
    parser.add_argument("--eps-scale", type=float, default=1.0,
                        help="multiply every data set's ε (results go to longtail_eps<scale>.json)")
    parser.add_argument("--raat-compare", action="store_true",
                        help="PGD-AT and RAAT with and without augmentation: clean accuracy at matched robustness")
    parser.add_argument("--raat-ratio", type=float, default=1.0, help="imbalance ratio of --raat-compare (1: balanced)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.dataset:
        args.datasets = [args.dataset]
    if args.quick:
        if args.raat_compare:
            args.datasets = args.datasets if args.dataset else ["digits"]
            args.seeds, args.epochs = [0], 3
        else:
            args.datasets = args.datasets if args.dataset else ["digits"]
            args.ratios, args.seeds, args.epochs = [50.0], [0], args.epochs or 5
    epochs_for = {d: args.epochs if args.epochs is not None else DEFAULT_EPOCHS[d] for d in args.datasets}
    started = time.perf_counter()
    selection: list[dict[str, Any]] = []

    if args.raat_compare:
        scales = (0.75, 1.0) if args.quick else RAAT_EPS_SCALES
        fixed = {d: (e if isinstance(e, int) else 30) for d, e in epochs_for.items()}
        jobs = [{"dataset": d, "ratio": args.raat_ratio, "seed": s, "method": method, "epochs": fixed[d],
                 "eps_scale": args.eps_scale, "train_eps_scale": scale, "variant": variant,
                 "augment": AUGMENT[d] if augmented else None}
                for d in args.datasets for variant, (method, augmented) in RAAT_VARIANTS.items()
                for scale in scales for s in args.seeds]
        log(f"{len(jobs)} runs on {args.jobs} process(es)")
        runs = run_pool(jobs, args.jobs)
        entries = raat_compare(runs)
        table = raat_markdown(entries)
        record: dict[str, Any] = {
            "benchmark": "longtail_raat", "environment": environment(),
            "settings": {**vars(args), "epochs": fixed, "train_eps_scales": list(scales), "augment": AUGMENT,
                         "variants": {k: list(v) for k, v in RAAT_VARIANTS.items()}, "suite": "standard"},
            "summary": raat_summary(entries),
            "raat_compare": entries, "runs": runs, "wall_s": time.perf_counter() - started,
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        name = "longtail_raat" + (f"_{args.dataset}" if args.dataset else "") + ("_quick" if args.quick else "")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(table)
        print(table)
        return record

    ratios_for = {d: list(args.ratios) if args.ratios else list(RATIOS[d]) for d in args.datasets}
    select_jobs = [{"kind": "select", "dataset": d, "ratio": r, "epochs": e, "eps_scale": args.eps_scale}
                   for d in args.datasets if epochs_for[d] == "auto" for r in ratios_for[d] for e in EPOCH_CANDIDATES]
    chosen: dict[tuple[str, float], int] = {}
    if select_jobs:
        log(f"epoch selection: {len(select_jobs)} PGD-AT runs on validation splits")
        results = run_pool(select_jobs, args.jobs)
        for d, r in sorted({(j["dataset"], j["ratio"]) for j in select_jobs}):
            scores = {x["epochs"]: x["val_balanced_robust"] for x in results if (x["dataset"], x["ratio"]) == (d, r)}
            chosen[(d, r)] = choose_epochs(scores)
            val_counts = next(x["val_counts"] for x in results if (x["dataset"], x["ratio"]) == (d, r))
            selection.append({"dataset": d, "ratio": r, "scores": {str(k): v for k, v in sorted(scores.items())},
                              "chosen": chosen[(d, r)], "val_counts": val_counts, "rule": SELECTION_RULE})
            log(f"{d} IR {r:g}: {chosen[(d, r)]} epochs")
    jobs = [
        {"dataset": d, "ratio": r, "seed": s, "method": m, "eps_scale": args.eps_scale,
         "epochs": chosen[(d, r)] if epochs_for[d] == "auto" else epochs_for[d]}
        for d in args.datasets for r in ratios_for[d] for s in args.seeds for m in args.methods
    ]
    log(f"{len(jobs)} runs on {args.jobs} process(es)")
    # Longest first (MCAT's latent search, MNIST-1D's bigger split), so the last jobs are short ones.
    jobs.sort(key=lambda j: (j["method"] != "mcat", j["dataset"] != "mnist1d"))
    runs = run_pool(jobs, args.jobs)
    rows = aggregate(runs)
    compared = comparisons(rows)
    table = (markdown(rows) + "\nThe papers' terms (standard = APGD-CE → APGD-T → Square; many / medium / few under "
             "standard):\n\n" + paper_markdown(rows) + "\nThe papers' comparisons, re-made:\n\n"
             + comparison_markdown(compared))
    suffix = ((f"_{args.dataset}" if args.dataset else "") + ("_quick" if args.quick else "")
              + (f"_eps{args.eps_scale:g}" if args.eps_scale != 1.0 else "")
              # a partial run (chosen ratios) gets its own file rather than replacing the full table
              + ("_ir" + "-".join(f"{r:g}" for r in args.ratios) if args.ratios else ""))
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": "longtail",
        "environment": environment(),
        "settings": {**vars(args), "eps": {k: v * args.eps_scale for k, v in EPS.items()}, "suite": "standard",
                     "paper_attacks": "PGD-20 and CW-margin PGD-20, α = ε/4, random start, last iterate",
                     "model": {"digits": "mlp (256, 256)", "mnist1d": "normalize + cnn1d (width 32)"},
                     "optimizer": "sgd lr 0.05 m 0.9 wd 5e-4 cosine, batch 64", "inner_attack": "PGD-10, α = ε/4",
                     "epochs": {d: e for d, e in epochs_for.items()}, "epoch_candidates": list(EPOCH_CANDIDATES),
                     "ratios": ratios_for},
        "summary": rows,
        "comparisons": compared,
        "epoch_selection": selection,
        "runs": runs,
        "wall_s": time.perf_counter() - started,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (RESULTS / f"longtail{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"longtail{suffix}.md").write_text(table)
    print(table)
    return record


if __name__ == "__main__":
    main()
