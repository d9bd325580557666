"""Recommender runs from YAML (``task: recsys``): config → data → recommender → BPR training (the core Trainer) →
ranking quality + promotion attacks, through the one run pipeline (:func:`sparring.experiment.run_experiment`).

::

    task: recsys
    name: vbpr_uat_mc
    seed: 0
    data: {source: synthetic, n_users: 500, n_items: 300}     # or {source: mmrec, root: data/baby, name: baby}
    model: {name: vbpr}                                         # + the recommender's own settings (dim, ...)
    objective: {name: uat_mc, eps: 0.05, adv_weight: 5.0, gamma: 4.0}   # standard (BPR) | apr | uat_mc
    train: {epochs: 50, batch_size: 2048}                       # lr / reg_weight: null = the model's default
    eval:
      ks: [5, 10, 20, 50]
      promotion: {methods: [fgsm, pgd], eps: [0.025, 0.05, 0.1], targets: 100, kinds: [random], k: 50}

The run folder is the pipeline's: the resolved ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/`` (the
Trainer's; ``--resume`` continues a killed run), ``checkpoints/model.safetensors`` + ``model.json``,
``report.json`` (the common header plus ``data``, ``model``, ``objective``, ``ranking``, ``promotion``,
``training``, ``timing``; ``docs/report.md``, "Recommender runs") and ``report.html`` (the ``recsys`` view,
:mod:`sparring.recsys.report`). Every problem with the config is one :class:`~sparring.errors.ConfigError` line
naming the field, raised before anything is written.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sparring.config import RunName, _Strict, build_component, reject_unknown_settings
from sparring.errors import ConfigError
from sparring.files import atomic_write_json
from sparring.objectives import OBJECTIVES, Objective, threat_of
from sparring.recsys.data import RecData, load_mmrec, synthetic
from sparring.recsys.metrics import ranking_metrics
from sparring.recsys.models import RECOMMENDERS, Recommender, build_recommender
from sparring.recsys.promotion import PromotionAttack, anchor_users, pick_targets
from sparring.recsys.train import fit
from sparring.runtime.checkpoint import load_weights, save_weights
from sparring.tasks import TASKS, Job, Notify, Task

TASK = "recsys"
OBJECTIVE_INPUTS = ("recsys", "any")


def _positive_cutoffs(value: list[int]) -> list[int]:
    if any(k < 1 for k in value):
        raise ValueError(f"every K must be >= 1, got {value}")
    return value


Cutoffs = Annotated[list[int], AfterValidator(_positive_cutoffs)]  # the K of @K metrics


class RecDataSpec(_Strict):
    """``synthetic`` (planted visual- and text-driven user groups) or ``mmrec`` (``root/<name>.inter`` + features)."""

    source: Literal["synthetic", "mmrec"] = "synthetic"
    root: str | None = None
    name: str | None = None  # mmrec: the .inter file's stem (default: the only one in root)
    n_users: int = Field(default=500, ge=2)
    n_items: int = Field(default=300, ge=2)
    dim: int = Field(default=64, ge=2)
    interactions_per_user: int = Field(default=20, ge=3)
    popularity: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RecDataSpec:
        if self.source == "mmrec" and not self.root:
            raise ValueError("data.root is required for source mmrec (the folder of <name>.inter and the features)")
        if self.source == "synthetic" and self.interactions_per_user >= self.n_items:
            raise ValueError("data.interactions_per_user must be smaller than data.n_items")
        return self


class RecModelSpec(BaseModel):
    """``name`` (vbpr | mmgcn) plus the recommender's own constructor settings."""

    model_config = ConfigDict(extra="allow")
    name: str = "vbpr"

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RecTrainSpec(_Strict):
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=2048, ge=1)
    lr: float | None = Field(default=None, gt=0)  # None: the model's (VBPR 1e-3, MMGCN 5e-4)
    reg_weight: float | None = Field(default=None, ge=0)  # None: the model's
    weight_decay: float = Field(default=0.0, ge=0)
    cpu: bool = False  # force the CPU even when a GPU is present


class PromotionSpec(_Strict):
    """The promotion attacks run after training: every (kind, method, eps) on the same anchors."""

    methods: list[Literal["fgsm", "pgd"]] = Field(default_factory=lambda: ["fgsm", "pgd"], min_length=1)
    eps: list[float] = Field(default_factory=lambda: [0.025, 0.05, 0.1], min_length=1)
    targets: int = Field(default=100, ge=1)
    kinds: list[Literal["random", "cold", "hot"]] = Field(default_factory=lambda: ["random"], min_length=1)
    anchor_fraction: float = Field(default=0.4, gt=0, le=1)
    k: int = Field(default=50, ge=1)
    ks: Cutoffs = Field(default_factory=lambda: [10, 20, 50, 100], min_length=1)  # HR@K cut-offs (k is added)
    cold_max: int = Field(default=5, ge=0)
    hot_min: int = Field(default=50, ge=1)

    @field_validator("eps")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(not 0 <= e < float("inf") for e in value):
            raise ValueError(f"every eps must be a finite number >= 0, got {value}")
        return value

    def hr_ks(self) -> list[int]:
        return sorted({*self.ks, self.k})


class RecEvalSpec(_Strict):
    ks: Cutoffs = Field(default_factory=lambda: [5, 10, 20, 50], min_length=1)
    promotion: PromotionSpec | None = Field(default_factory=PromotionSpec)  # null: ranking quality only


class RecRunConfig(_Strict):
    """A recommender run (``task: recsys``); see the module docstring and ``docs/configs.md``."""

    task: Literal["recsys"] = TASK
    name: RunName = None
    seed: int = 0
    data: RecDataSpec = Field(default_factory=RecDataSpec)
    model: RecModelSpec = Field(default_factory=RecModelSpec)
    objective: dict[str, Any] = Field(default_factory=lambda: {"name": "standard"})
    train: RecTrainSpec = Field(default_factory=RecTrainSpec)
    eval: RecEvalSpec = Field(default_factory=RecEvalSpec)

    def build_objective(self) -> Objective:
        """The objective from the registry; refused unless it trains recommenders (``inputs`` recsys / any, and
        no input-space threat: a recommender's inputs are user and item indices)."""
        objective: Objective = build_component(OBJECTIVES, self.objective, where="objective")
        inputs = getattr(type(objective), "inputs", "any")
        if inputs not in OBJECTIVE_INPUTS or (inputs == "any" and threat_of(objective) is not None):
            what = f"{inputs} inputs" if inputs not in OBJECTIVE_INPUTS else "input tensors (it has a threat model)"
            raise ConfigError(f"objective.name: {objective.name!r} perturbs {what}, not a recommender; "
                              "use standard (BPR), apr or uat_mc")
        return objective

    def load_data(self) -> RecData:
        spec = self.data
        if spec.source == "mmrec":
            return load_mmrec(str(spec.root), spec.name)
        return synthetic(n_users=spec.n_users, n_items=spec.n_items, dim=spec.dim,
                         interactions_per_user=spec.interactions_per_user, popularity=spec.popularity,
                         temperature=spec.temperature, seed=self.seed)


# --------------------------------------------------------------------------- checks
def check_rec_config(config: RecRunConfig) -> None:
    """What can be checked without data: the objective builds and trains recommenders, the model's settings."""
    config.build_objective()
    check_rec_model_spec(config.model)


def check_rec_model_spec(spec: RecModelSpec) -> None:
    """The recommender exists, its settings are constructor arguments, and it builds with them (on a toy set)."""
    try:
        cls = RECOMMENDERS.get(spec.name)
    except ConfigError as exc:
        raise ConfigError(f"model.name: {exc}") from None
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "data")]
    reject_unknown_settings(spec.name, spec.settings(), accepted)
    toy = synthetic(n_users=4, n_items=6, dim=2, interactions_per_user=3, seed=0)
    try:
        build_recommender(spec.name, toy, **spec.settings())
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None


def check_against_data(config: RecRunConfig, data: RecData) -> None:
    """Settings that depend on the data: the promotion hinge's k must leave items to rank against."""
    promo = config.eval.promotion
    if promo is not None and not promo.k < data.n_items:
        raise ConfigError(f"eval.promotion.k: must be smaller than the number of items ({data.n_items}), got {promo.k}")


# --------------------------------------------------------------------------- evaluation
def promotion_rows(model: Recommender, data: RecData, config: RecRunConfig, *,
                   notify: Notify | None = None) -> list[dict[str, Any]]:
    """Every (kind, method, eps) attack as a summary row; anchors and targets come from a generator seeded by the
    run seed (anchors first, then each kind's targets), so every method and eps attacks the same targets."""
    spec = config.eval.promotion
    if spec is None:
        return []
    generator = torch.Generator().manual_seed(config.seed)
    anchors = anchor_users(data.n_users, fraction=spec.anchor_fraction, generator=generator)
    rows = []
    for kind in spec.kinds:
        targets = pick_targets(data, n=spec.targets, kind=kind, cold_max=spec.cold_max, hot_min=spec.hot_min,
                               generator=generator)
        for method in spec.methods:
            for eps in spec.eps:
                if notify is not None:
                    notify(f"promotion attack {method} ε={eps:g} on {len(targets.items)} {kind} targets")
                attack = PromotionAttack(method=method, eps=eps, k=spec.k, ks=spec.hr_ks())
                result = attack(model, data, targets=targets, anchors=anchors, seed=config.seed)
                rows.append({"kind": kind, **result.summary()})
    return rows


def training_summary(records: list[dict[str, Any]], *, lr: float, reg_weight: float, time_s: float) -> dict[str, Any]:
    """report.json's ``training`` block from :func:`~sparring.recsys.train.fit`'s records."""
    last = records[-1] if records else {}
    return {
        "epochs": len(records),
        "lr": lr,
        "reg_weight": reg_weight,
        "time_s": time_s,
        "final_loss": last.get("loss"),
        "loss": [r.get("loss") for r in records],
        "grad_cosine": [r.get("grad_cosine") for r in records] if any("grad_cosine" in r for r in records) else None,
        "delta_cosine": [r.get("delta_cosine") for r in records] if any("delta_cosine" in r for r in records)
        else None,
    }


def save_recommender(model: Recommender, folder: Path, *, config: RecRunConfig, data: RecData) -> None:
    """``model.safetensors`` plus ``model.json`` saying how to rebuild it (the data set it was built for)."""
    save_weights(model, folder / "model.safetensors")
    atomic_write_json(folder / "model.json", {
        "task": TASK, "name": config.model.name, "settings": config.model.settings(),
        "n_users": data.n_users, "n_items": data.n_items, "data": data.describe(),
    })


# --------------------------------------------------------------------------- the task
class RecsysJob(Job):
    """One recommender run: data loaded, settings checked against it, the recommender built (seeded)."""

    def __init__(self, config: RecRunConfig) -> None:
        self.started = time.perf_counter()
        self.config = config
        self.objective = config.build_objective()
        self.data = config.load_data()
        check_against_data(config, self.data)
        torch.manual_seed(config.seed)  # weight initialization is part of the run's seed
        self.model: Recommender = build_recommender(config.model.name, self.data, **config.model.settings())
        self.lr = type(self.model).lr if config.train.lr is None else config.train.lr
        self.reg_weight = type(self.model).reg_weight if config.train.reg_weight is None else config.train.reg_weight
        self.records: list[dict[str, Any]] = []
        self.train_s = 0.0

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in (the objective's fields, the model's lr and reg_weight)."""
        resolved = self.config.model_dump(mode="json")
        resolved["objective"] = self.objective.describe()
        resolved["train"].update(lr=self.lr, reg_weight=self.reg_weight)
        return resolved

    def headline(self) -> str:
        data = self.data
        return (f"training {self.config.model.name} with {self.objective.name} on {data.name} "
                f"({data.n_users} users, {data.n_items} items)")

    def train(self, out: Path, *, resume: bool, progress: bool) -> None:
        train = self.config.train
        t0 = time.perf_counter()
        self.records = fit(self.model, self.data, self.objective, epochs=train.epochs, batch_size=train.batch_size,
                           lr=self.lr, weight_decay=train.weight_decay, reg_weight=self.reg_weight,
                           seed=self.config.seed, progress=progress, out_dir=out, resume=resume, cpu=train.cpu)
        self.train_s = time.perf_counter() - t0

    def save_model(self, folder: Path) -> None:
        save_recommender(self.model, folder, config=self.config, data=self.data)

    def load_trained(self, folder: Path) -> None:
        load_weights(self.model, folder / "model.safetensors")

    def evaluate(self, out: Path, *, progress: bool, notify: Notify) -> dict[str, Any] | None:
        config, data, model = self.config, self.data, self.model
        notify(f"ranking quality on {len(data.test)} test interactions")
        t0 = time.perf_counter()
        ranking = ranking_metrics(model, data, "test", ks=config.eval.ks)
        ranking_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        promotion = promotion_rows(model, data, config, notify=notify)
        promotion_s = time.perf_counter() - t0
        return {
            "data": data.describe(),
            "model": {"name": config.model.name, "settings": config.model.settings(),
                      "parameters": sum(p.numel() for p in model.parameters())},
            "objective": self.objective.describe(),
            "ranking": ranking,
            "promotion": promotion,
            "training": training_summary(self.records, lr=self.lr, reg_weight=self.reg_weight, time_s=self.train_s),
            "timing": {"train_s": self.train_s, "ranking_s": ranking_s, "promotion_s": promotion_s,
                       "total_s": time.perf_counter() - self.started},
        }

    def threat(self) -> dict[str, Any] | None:
        promo = self.config.eval.promotion
        if promo is None:
            return None
        return {"kind": "promotion", "eps": list(promo.eps), "methods": list(promo.methods)}


@TASKS.register(TASK)
class RecsysTask(Task):
    """Multimodal recommenders: BPR (or APR / UAT-MC) training, full-ranking metrics, promotion attacks."""

    name = TASK
    config_type = RecRunConfig
    view = TASK

    def check(self, config: RecRunConfig) -> None:
        check_rec_config(config)

    def prepare(self, config: RecRunConfig) -> RecsysJob:
        return RecsysJob(config)


# --------------------------------------------------------------------------- thin wrappers
def parse_rec_config(raw: dict[str, Any], *, source: str = "config") -> RecRunConfig:
    """Validate a ``task: recsys`` mapping, building the objective and checking the model's settings."""
    config: RecRunConfig = RecsysTask().parse(raw, source=source)
    return config


def run_recsys(
    config: RecRunConfig,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
    evaluate_after: bool = True,
) -> dict[str, Any] | None:
    """Train, evaluate ranking quality and promotion robustness, write the run folder: report.json's dict (None
    with ``evaluate_after=False``). :func:`sparring.experiment.run_experiment` with a recommender config."""
    from sparring.experiment import run_experiment

    return run_experiment(config, Path(out), overwrite=overwrite, resume=resume, progress=progress, notify=notify,
                          evaluate_after=evaluate_after)


def is_rec_config(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("task") == TASK


__all__ = ["PromotionSpec", "RecRunConfig", "RecsysJob", "RecsysTask", "check_against_data", "is_rec_config",
           "parse_rec_config", "promotion_rows", "run_recsys", "save_recommender", "training_summary"]
