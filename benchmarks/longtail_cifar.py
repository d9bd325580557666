"""Long-tailed adversarial training at the papers' scale: CIFAR-10-LT and CIFAR-100-LT with PreAct ResNet-18.

Data: the CIFAR "python version" release from a local folder or archive (``--data-root``; read by
``sparring.data.load_data("cifar10" | "cifar100", root=...)`` with its restricted unpickler, nothing downloaded),
made long-tailed with the exponential profile (``sparring.data.long_tail``, class 0 the head, drawn under the
run's seed; the papers ship fixed json splits drawn the same way) at ``--ratios`` (default 50: RobustLT's CIFAR-10-LT
default and MCAT's CIFAR-100-LT headline); the test split stays balanced. Every method trains on crops with 4-pixel
zero padding and horizontal flips, drawn afresh each batch (the papers' ``crop+flip``; ``AugmentedData``); RAAT
draws its two views the same way (``augment="crop_flip"``) from the raw images.

Model: ``build_model("preact_resnet18")`` behind a ``Normalize`` layer with the training split's per-channel mean and
std (inputs stay in [0, 1], so ε = 8/255 means what it means in the papers). Threat: L∞ ε = 8/255; inner attack
PGD-10, step 2/255 (= ε/4), random start, last iterate.

Schedules (``--schedule``; all SGD, momentum 0.9, weight decay 5e-4, batch 128, lr 0.1):

* ``robustlt`` (default): 100 epochs, lr × 0.1 at epochs 75 and 90 (RobustLT's base configs);
* ``mcat``: 200 epochs, cosine (MCAT's appendix, Table 8);
* ``raat``: 110 epochs, lr × 0.1 at epochs 100 and 105 (RAAT's README runs).

``--epochs N`` shortens or lengthens a schedule, keeping its milestones as fractions of training.

Methods (``--methods``): ``pgd_at``; ``at_bsl`` (τ_b = 1; the AT-BSL paper's AutoAugment is not here: every method
gets crop+flip); ``robustlt`` (over PGD-AT) and ``robustlt_bsl`` (over AT-BSL), with the paper's (α, β): (0.3, 0.8)
on CIFAR-10-LT, (0.4, 0.6) on CIFAR-100-LT; ``mcat`` (its paper defaults); ``raat`` (its code defaults, crop+flip
views); ``trades`` (β = 6).

Evaluation on the balanced test split (``--eval-samples`` first points, default all): clean; PGD-20 and CW-margin
PGD-20 (α = 2/255, random start, last iterate: torchattacks' PGD, as RobustLT and MCAT evaluate); and our
``standard`` suite (APGD-CE → APGD-T → Square 5000, per-sample worst case; AutoAttack's composition). Groups:
ours (rank thirds), RobustLT's tail = the rarest 80% of the classes, many / medium / few-shot by training count
(many > 100·s, medium 20·s..100·s, few < 20·s, s = n_max / 500: the usual 100 / 20 on CIFAR-100-LT, 1000 / 200 on
CIFAR-10-LT, where the papers group by class index thirds instead — our rank thirds). The tables are those of
``benchmarks/longtail.py``, with the papers' numbers beside the same comparisons.

``--raat-compare``: PGD-AT and RAAT, each with and without crop+flip, trained at ε × ``--raat-eps-scales`` on the
balanced training split (``--raat-ratio 1``, RAAT's setting) and compared by clean accuracy at the robust accuracy
of PGD-AT with augmentation at ε (``raat_compare`` in the JSON).

Run (GPU): ``python benchmarks/longtail_cifar.py --data-root ~/data --device cuda`` (``--datasets cifar10 cifar100``,
``--ratios``, ``--seeds``, ``--methods``, ``--schedule``, ``--epochs``, ``--bf16``, ``--eval-samples``). Cost: PGD-10
training of PreAct ResNet-18 on CIFAR-10-LT IR 50 (13,996 images) is about 11 forward-backward passes per image, so
roughly 5-10 s an epoch on one H100 (fp32 / TF32; ``--bf16`` roughly halves it): 100 epochs ≈ 10-15 minutes a run,
the standard suite on 10,000 test images ≈ 5-10 minutes; the default 6 methods × 3 seeds × 2 data sets is about
8-10 GPU hours, one method and seed about 20 minutes. ``--smoke`` runs a few batches on CPU of whatever
``--data-root`` holds (the tiny archive the tests write): 1 epoch on at most 48 images, PGD-2 inside, 10 test points,
PGD-3 / CW-3 and a 3-step APGD-CE → APGD-T → Square-20 suite, writing ``longtail_cifar_smoke.*``. ``--model small_cnn``
(the tests') swaps in a small CNN.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import environment, log
from longtail import (
    COMPARISONS,
    RAAT_VARIANTS,
    AugmentedData,
    aggregate,
    comparison_markdown,
    comparisons,
    markdown,
    paper_markdown,
    paper_metrics,
    raat_compare,
    raat_markdown,
    raat_summary,
)
from torch import nn

from sparring.attacks import APGD, PGD, APGDTargeted, Attack, Square
from sparring.data import Dataset, load_data, long_tail
from sparring.data.epochs import TensorData
from sparring.errors import ConfigError, SparringError
from sparring.evaluate import evaluate, long_tail_summary
from sparring.models import build_model, with_normalization
from sparring.objectives import Objective, build
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "results"
EPS = 8 / 255
METHODS = ("pgd_at", "at_bsl", "robustlt", "robustlt_bsl", "mcat", "raat", "trades")
DEFAULT_METHODS = METHODS[:-1]
#: RobustLT's (α, β) per data set (its configs: CIFAR-10-LT all bases; CIFAR-100-LT with AT-BSL).
ROBUSTLT = {"cifar10": (0.3, 0.8), "cifar100": (0.4, 0.6)}
#: name → (epochs, schedule, milestones as fractions of training).
SCHEDULES: dict[str, tuple[int, str, tuple[float, ...]]] = {
    "robustlt": (100, "multistep", (0.75, 0.90)),
    "mcat": (200, "cosine", ()),
    "raat": (110, "multistep", (100 / 110, 105 / 110)),
}
AUGMENT = "crop_flip"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One run's settings (the parts shared by every method)."""

    epochs: int
    schedule: str
    batch_size: int = 128
    lr: float = 0.1
    inner_steps: int = 10
    eval_steps: int = 20
    eval_samples: int | None = None
    suite: str | tuple[Attack, ...] = "standard"
    device: str = "cpu"
    bf16: bool = False
    model: str = "preact_resnet18"
    max_train: int | None = None


def make_objective(method: str, dataset: str, eps: float, inner_steps: int, *, views: str = AUGMENT) -> Objective:
    """The method at the papers' settings; ``views``: RAAT's view augmentation (its code's CIFAR ``base``)."""
    threat = LinfBall(eps=eps)

    def attack() -> PGD:  # PGD-10, α = 2/255 at ε = 8/255, random start, last iterate
        return PGD(steps=inner_steps, rel_step=0.25 * 10 / inner_steps, keep_best=False, score=False)

    alpha, beta = ROBUSTLT[dataset]
    if method == "trades":
        return build("trades", threat=threat)
    if method in ("pgd_at", "at_bsl", "mcat"):
        return build(method, threat=threat, attack=attack())
    if method == "raat":
        return build("raat", threat=threat, attack=attack(), augment=views)
    if method in ("robustlt", "robustlt_bsl"):
        base = "pgd_at" if method == "robustlt" else "at_bsl"
        return build("robustlt", base=build(base, threat=threat, attack=attack()), alpha=alpha, beta=beta)
    raise ConfigError(f"unknown method {method!r}; available: {', '.join(METHODS)}")


def make_model(settings: Settings, train: Dataset) -> nn.Module:
    if settings.model == "small_cnn":
        net = build_model("small_cnn", input_shape=train.input_shape, num_classes=train.num_classes, width=8)
    else:
        net = build_model(settings.model, input_shape=train.input_shape, num_classes=train.num_classes)
    mean = train.x.mean(dim=(0, 2, 3)).tolist()
    std = train.x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return with_normalization(net, mean, std)


def run_one(job: dict[str, Any], settings: Settings, data: tuple[Dataset, Dataset]) -> dict[str, Any]:
    """Train one (data set, IR, seed, method) and evaluate it three ways."""
    dataset, ratio, seed, method = job["dataset"], job["ratio"], job["seed"], job["method"]
    balanced, test = data
    train = long_tail(balanced, imbalance_ratio=ratio, seed=seed)
    if settings.max_train is not None:
        train = train.subset(torch.arange(min(len(train), settings.max_train)))
    if settings.eval_samples is not None:
        test = test.subset(torch.arange(min(len(test), settings.eval_samples)))
    torch.manual_seed(seed)
    model = make_model(settings, train)
    augment = job.get("augment", AUGMENT)  # --raat-compare: crop+flip or None (neither pipeline nor views)
    objective = make_objective(method, dataset, EPS * job.get("train_eps_scale", 1.0), settings.inner_steps,
                               views=augment or "none")
    if augment and method != "raat":  # RAAT augments its two views itself
        rows: TensorData = AugmentedData(train.x, train.y, augment=augment, seed=seed, num_classes=train.num_classes)
    else:
        rows = TensorData(train.x, train.y, num_classes=train.num_classes)
    _, kind, milestones = SCHEDULES[settings.schedule]
    config = TrainConfig(
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, momentum=0.9, weight_decay=5e-4,
        schedule=kind, milestones=milestones or (0.5,), seed=seed, progress=False, cpu=settings.device == "cpu",
        mixed_precision="bf16" if settings.bf16 else "no",
    )
    started = time.perf_counter()
    trainer = Trainer(model=model, objective=objective, train=rows, config=config, num_classes=train.num_classes)
    history = trainer.fit().history
    train_s = time.perf_counter() - started
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    threat = LinfBall(eps=EPS)
    evaluation = evaluate(model, test, threat, suite=settings.suite, seed=seed, eps_curve=[], device=settings.device,
                          progress=False)
    summary = evaluation.to_dict()
    counts = train.class_counts().tolist()
    groups = long_tail_summary(summary["per_class"], counts)
    paper, thresholds = _paper(model, test, counts, evaluation.worst_case, seed, settings)
    return {
        **{k: job[k] for k in ("dataset", "ratio", "seed", "method")},
        **{k: job[k] for k in ("augment", "train_eps_scale", "variant") if k in job},
        "eps": EPS, "epochs": settings.epochs, "train_counts": counts,
        "balanced_clean": summary["balanced_accuracy"]["clean"],
        "balanced_robust": summary["balanced_accuracy"]["robust"],
        "tail_robust": groups["tail"]["robust"] if groups else None,
        "tail_clean": groups["tail"]["clean"] if groups else None,
        "head_robust": groups["head"]["robust"] if groups else None,
        "robust": summary["robust_accuracy"]["worst_case"],
        "trustworthy": summary["trustworthy"],
        "paper": paper, "shot_thresholds": thresholds,
        "final_train_loss": history[-1]["train_loss"], "train_s": train_s, "eval_s": evaluation.time_s,
    }


def _paper(model: nn.Module, test: Dataset, counts: list[int], worst_case: torch.Tensor, seed: int,
           settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The papers' groups under PGD-k and CW-margin PGD-k (k = 20; fewer in --smoke, under the same keys)."""
    steps = settings.eval_steps
    attacks: dict[str, Attack] = {
        "pgd20": PGD(steps=steps, rel_step=5.0 / steps, keep_best=False),
        "cw20": PGD(steps=steps, rel_step=5.0 / steps, keep_best=False, loss="margin"),
    }
    return paper_metrics(model, test, LinfBall(eps=EPS), counts, worst_case, seed=seed, device=settings.device,
                         attacks=attacks)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder or archive of the CIFAR python release")
    parser.add_argument("--datasets", nargs="+", default=["cifar10"], choices=sorted(ROBUSTLT))
    parser.add_argument("--ratios", nargs="+", type=float, default=[50.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="robustlt")
    parser.add_argument("--epochs", type=int, help="default: the schedule's")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for training")
    parser.add_argument("--eval-samples", type=int, help="evaluate the first N test points (default: all)")
    parser.add_argument("--model", choices=("preact_resnet18", "small_cnn"), default="preact_resnet18")
    parser.add_argument("--raat-compare", action="store_true")
    parser.add_argument("--raat-ratio", type=float, default=1.0)
    parser.add_argument("--raat-eps-scales", nargs="+", type=float, default=[0.5, 0.75, 1.0, 1.25, 1.5])
    parser.add_argument("--smoke", "--quick", dest="smoke", action="store_true",
                        help="a few CPU batches on whatever --data-root holds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and Markdown results")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    epochs = args.epochs or SCHEDULES[args.schedule][0]
    if args.smoke:
        smoke_suite = (APGD(loss="ce", steps=3), APGDTargeted(targets=2, steps=3), Square(queries=20))
        return Settings(epochs=args.epochs or 1, schedule=args.schedule, batch_size=16, inner_steps=2, eval_steps=3,
                        eval_samples=10, suite=smoke_suite, device="cpu", model=args.model, max_train=48)
    return Settings(epochs=epochs, schedule=args.schedule, batch_size=args.batch_size, eval_samples=args.eval_samples,
                    device=args.device, bf16=args.bf16, model=args.model)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = settings_from(args)
    if args.smoke:
        torch.set_num_threads(1)
    started = time.perf_counter()
    loaded = {d: load_data(d, root=args.data_root) for d in args.datasets}
    runs: list[dict[str, Any]] = []
    if args.raat_compare:
        seeds = args.seeds[:1] if args.smoke else args.seeds
        scales = [1.0] if args.smoke else args.raat_eps_scales
        jobs = [{"dataset": d, "ratio": args.raat_ratio, "seed": s, "method": method, "train_eps_scale": scale,
                 "variant": variant, "augment": AUGMENT if augmented else None}
                for d in args.datasets for variant, (method, augmented) in RAAT_VARIANTS.items()
                for scale in scales for s in seeds]
    else:
        seeds = args.seeds[:1] if args.smoke else args.seeds
        jobs = [{"dataset": d, "ratio": r, "seed": s, "method": m}
                for d in args.datasets for r in args.ratios for s in seeds for m in args.methods]
    log(f"{len(jobs)} runs on {settings.device} ({settings.model}, {settings.epochs} epochs)")
    for k, job in enumerate(jobs, 1):
        result = run_one(job, settings, loaded[job["dataset"]])
        runs.append(result)
        log(f"[{k}/{len(jobs)}] {job['dataset']} IR {job['ratio']:g} seed {job['seed']} "
            f"{job.get('variant', job['method'])}: clean {result['balanced_clean']:.3f} robust "
            f"{result['balanced_robust']:.3f} ({result['train_s']:.0f}+{result['eval_s']:.0f} s)")
    record: dict[str, Any] = {
        "benchmark": "longtail_cifar",
        "environment": {**environment(), "device": settings.device,
                        "gpu": torch.cuda.get_device_name(0) if settings.device == "cuda" else None},
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"}, "out": str(args.out),
            "epochs": settings.epochs, "schedule": {"name": settings.schedule, "epochs": settings.epochs,
                                                    "kind": SCHEDULES[settings.schedule][1],
                                                    "milestones": list(SCHEDULES[settings.schedule][2])},
            "optimizer": f"sgd lr {settings.lr} m 0.9 wd 5e-4, batch {settings.batch_size}",
            "eps": EPS, "inner_attack": f"PGD-{settings.inner_steps}, α = ε/4 (2/255 at PGD-10)",
            "eval_attacks": f"PGD-{settings.eval_steps} and CW-margin PGD-{settings.eval_steps}, last iterate",
            "suite": settings.suite if isinstance(settings.suite, str) else "smoke: APGD-CE-3, APGD-T-3 (2), Square-20",
            "augment": AUGMENT, "robustlt_alpha_beta": ROBUSTLT, "model": settings.model,
        },
        "runs": runs,
    }
    if args.raat_compare:
        entries = raat_compare(runs)
        table = raat_markdown(entries)
        record["summary"] = raat_summary(entries)
        record["raat_compare"] = entries
        name = "longtail_cifar_raat"
    else:
        rows = aggregate(runs)
        compared = comparisons(rows)
        table = (markdown(rows) + "\nThe papers' terms:\n\n" + paper_markdown(rows)
                 + "\nThe papers' comparisons, re-made:\n\n" + comparison_markdown(compared))
        record["summary"] = rows
        record["comparisons"] = compared
        record["paper_comparisons"] = list(COMPARISONS)
        name = "longtail_cifar"
    record["wall_s"] = time.perf_counter() - started
    name += "_smoke" if args.smoke else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return record


if __name__ == "__main__":
    try:
        main()
    except SparringError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
