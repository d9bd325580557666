"""Recommender runs from YAML: config → data → recommender → BPR training → ranking quality + promotion attacks.

A config with the top-level key ``task: recsys`` is a :class:`RecRunConfig` (``sparring run`` / ``sparring train``
dispatch on it; without ``task`` a config is the image path's :class:`~sparring.config.RunConfig`)::

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

:func:`run_recsys` writes the run folder: the resolved ``config.yaml``, ``metrics.jsonl`` (one line per epoch,
appended as training goes), ``checkpoints/model.safetensors`` + ``model.json``, ``report.json`` (schema in
``docs/report.md``, "Recommender runs") and ``report.html``. Every problem with the config is one
:class:`~sparring.errors.ConfigError` line naming the field, raised before anything is written.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparring.config import RunName, _first_error, _Strict, build_component, reject_unknown_settings
from sparring.errors import ConfigError
from sparring.experiment import claim_run_dir
from sparring.files import atomic_write_json, atomic_write_text
from sparring.objectives import OBJECTIVES, Objective, threat_of
from sparring.recsys.data import RecData, load_mmrec, synthetic
from sparring.recsys.metrics import ranking_metrics
from sparring.recsys.models import RECOMMENDERS, Recommender, build_recommender
from sparring.recsys.promotion import PromotionAttack, anchor_users, pick_targets
from sparring.recsys.report import write_recsys_html
from sparring.recsys.train import fit
from sparring.report import write_json
from sparring.runtime.checkpoint import save_weights
from sparring.version import __version__

Notify = Callable[[str], None]
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


# --------------------------------------------------------------------------- parsing
def parse_rec_config(raw: dict[str, Any], *, source: str = "config") -> RecRunConfig:
    """Validate a ``task: recsys`` mapping, building the objective and checking the model's settings."""
    try:
        config = RecRunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None
    try:
        config.build_objective()
        check_rec_model_spec(config.model)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


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


# --------------------------------------------------------------------------- the run
def run_recsys(
    config: RecRunConfig,
    out: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    notify: Notify | None = None,
    evaluate_after: bool = True,
) -> dict[str, Any] | None:
    """Train, evaluate ranking quality and promotion robustness; write the run folder; return report.json's dict.

    The data are loaded, the model built and the attack settings checked against the data before the run
    folder is touched (``claim_run_dir``: an existing folder needs ``overwrite`` and must carry sparring's marker;
    a folder another process is writing is refused).
    ``evaluate_after=False`` stops after training and saving the model (returns None).
    """
    notify = notify or (lambda message: None)
    started = time.perf_counter()
    objective = config.build_objective()
    data = config.load_data()
    check_against_data(config, data)
    torch.manual_seed(config.seed)  # weight initialization is part of the run's seed
    model = build_recommender(config.model.name, data, **config.model.settings())
    device = torch.device("cuda" if torch.cuda.is_available() and not config.train.cpu else "cpu")
    model.to(device)
    lr = type(model).lr if config.train.lr is None else config.train.lr
    reg_weight = type(model).reg_weight if config.train.reg_weight is None else config.train.reg_weight
    with claim_run_dir(Path(out), kind="run", overwrite=overwrite) as out:  # the lock goes on exit
        atomic_write_text(out / "config.yaml", resolved_yaml(config, objective, lr=lr, reg_weight=reg_weight))
        notify(f"training {config.model.name} with {objective.name} on {data.name} "
               f"({data.n_users} users, {data.n_items} items) → {out}")
        metrics_path = out / "metrics.jsonl"

        def log(record: dict[str, Any]) -> None:
            with metrics_path.open("a") as handle:  # one line per epoch, appended as training goes
                handle.write(json.dumps(metrics_row(record)) + "\n")

        t0 = time.perf_counter()
        records = fit(model, data, objective, epochs=config.train.epochs, batch_size=config.train.batch_size, lr=lr,
                      weight_decay=config.train.weight_decay, reg_weight=reg_weight, seed=config.seed,
                      progress=progress, log=log)
        train_s = time.perf_counter() - t0
        save_recommender(model, out / "checkpoints", config=config, data=data)
        if not evaluate_after:
            return None
        notify(f"ranking quality on {len(data.test)} test interactions")
        t0 = time.perf_counter()
        ranking = ranking_metrics(model, data, "test", ks=config.eval.ks)
        ranking_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        promotion = promotion_rows(model, data, config, notify=notify)
        promotion_s = time.perf_counter() - t0
        report = {
            "schema_version": 1,
            "task": TASK,
            "sparring_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "run_name": config.name or out.name,
            "data": data.describe(),
            "model": {"name": config.model.name, "settings": config.model.settings(),
                      "parameters": sum(p.numel() for p in model.parameters())},
            "objective": objective.describe(),
            "ranking": ranking,
            "promotion": promotion,
            "training": training_summary(records, lr=lr, reg_weight=reg_weight, time_s=train_s),
            "timing": {"train_s": train_s, "ranking_s": ranking_s, "promotion_s": promotion_s,
                       "total_s": time.perf_counter() - started},
        }
        write_json(report, out / "report.json")
        write_recsys_html(out)
        return report


def check_against_data(config: RecRunConfig, data: RecData) -> None:
    """Settings that depend on the data: the promotion hinge's k must leave items to rank against."""
    promo = config.eval.promotion
    if promo is not None and not promo.k < data.n_items:
        raise ConfigError(f"eval.promotion.k: must be smaller than the number of items ({data.n_items}), got {promo.k}")


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


def metrics_row(record: dict[str, Any]) -> dict[str, Any]:
    """A ``fit`` record as a ``metrics.jsonl`` line: 1-based ``epoch`` and ``time_s``, as the image path writes."""
    row = {k: v for k, v in record.items() if k != "time"}
    row["epoch"] = int(record["epoch"]) + 1
    row["time_s"] = record.get("time")
    return row


def training_summary(records: list[dict[str, Any]], *, lr: float, reg_weight: float, time_s: float) -> dict[str, Any]:
    last = records[-1] if records else {}
    return {
        "epochs": len(records),
        "lr": lr,
        "reg_weight": reg_weight,
        "time_s": time_s,
        "final_loss": last.get("loss"),
        "loss": [r.get("loss") for r in records],
        "grad_cosine": [r["grad_cosine"] for r in records] if any("grad_cosine" in r for r in records) else None,
        "delta_cosine": [r["delta_cosine"] for r in records] if any("delta_cosine" in r for r in records) else None,
    }


def resolved_yaml(config: RecRunConfig, objective: Objective, *, lr: float, reg_weight: float) -> str:
    """The config with every default filled in (the objective's fields, the model's lr and reg_weight)."""
    resolved = config.model_dump(mode="json")
    resolved["objective"] = objective.describe()
    resolved["train"].update(lr=lr, reg_weight=reg_weight)
    return yaml.safe_dump(resolved, sort_keys=False)


def save_recommender(model: Recommender, folder: Path, *, config: RecRunConfig, data: RecData) -> None:
    """``model.safetensors`` plus ``model.json`` saying how to rebuild it (the data set it was built for)."""
    save_weights(model, folder / "model.safetensors")
    atomic_write_json(folder / "model.json", {
        "task": TASK, "name": config.model.name, "settings": config.model.settings(),
        "n_users": data.n_users, "n_items": data.n_items, "data": data.describe(),
    })


def is_rec_config(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("task") == TASK

__all__ = ["PromotionSpec", "RecRunConfig", "parse_rec_config", "run_recsys"]
