"""The ``language`` task's config schema (``task: language``; the fields are documented in
:mod:`sparring.language.task`): model, LoRA, data, objective (with its prompt attack's settings), train and eval
sections, each mistake one ConfigError line naming the field."""


from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sparring.config import RunName, _Strict, build_component, build_dataclass
from sparring.errors import ConfigError
from sparring.language.prompt_attack import PromptAttack
from sparring.objectives import OBJECTIVES, Objective
from sparring.objectives.base import walk
from sparring.tasks import first_error
from sparring.train import TrainConfig

#: LoRA's default target modules: the attention and MLP projections of Llama-style decoders.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Training defaults suited to LoRA (anything in ``train:`` overrides them).
TRAIN_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.0, "schedule": "constant",
                                  "epochs": 1, "batch_size": 4}
#: The red-team catalogue (:func:`sparring.language.evaluate.default_attacks`).
EVAL_ATTACKS = ("none", "embedding", "embedding_2x", "latent", "suffix")



class ModelSection(_Strict):
    """One base model: a local Hugging Face causal-LM folder (``path``), a built-in chat model (``source``:
    ``smollm2``, :mod:`sparring.language.builtin`) or the tiny random Llama (``tiny: true``). ``adapter``: a LoRA
    adapter to start from: a sparring run folder (its saved adapter) or an adapter folder ``save_pretrained``
    wrote; its own LoRA settings then apply (the defence ladder: CAT from the refusal-tuned adapter)."""

    path: str | None = None
    source: Literal["smollm2"] | None = None
    tiny: bool = False
    adapter: str | None = None
    allow_pickle_weights: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        given = [name for name, on in (("path", self.path is not None), ("source", self.source is not None),
                                       ("tiny", self.tiny)) if on]
        if len(given) != 1:
            raise ValueError("give one of path (a local Hugging Face causal-LM folder), source: smollm2 (a built-in "
                             f"chat model) or tiny: true{'' if not given else ', not ' + ' and '.join(given)}")
        return self

    def describe(self) -> str:
        if self.tiny:
            return "tiny"
        if self.source is not None:
            from sparring.language.builtin import BUILTIN_MODELS

            return BUILTIN_MODELS[self.source].title
        return str(self.path)


class LoraSection(_Strict):
    r: int = Field(default=16, ge=1)
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)


class ToySection(_Strict):
    """Sizes of :func:`~sparring.language.toy.safety_task` (small: a run takes seconds on a CPU)."""

    train: int = Field(default=32, ge=2)
    test: int = Field(default=8, ge=1)
    utility: int = Field(default=64, ge=1)
    utility_test: int = Field(default=8, ge=1)
    benign: int = Field(default=8, ge=1)


class DataSection(_Strict):
    toy: bool | ToySection = False
    suite: Literal["redteam"] | None = None
    split: Literal["test", "validation"] = "test"
    behaviours: str | None = None
    utility: str | None = None
    benign: str | None = None
    test_behaviours: str | None = None
    test_utility: str | None = None
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    injection: str | None = None
    rejected: int = Field(default=3, ge=1)
    max_train: int | None = Field(default=None, ge=1)  # train on the first N behaviours only (quick runs)

    def toy_sizes(self) -> ToySection | None:
        if self.toy is False:
            return None
        return self.toy if isinstance(self.toy, ToySection) else ToySection()


class AttackSection(_Strict):
    """Settings of the objective's prompt attack (the embedding attack of CAT / CAPO / WARDEN, LAT's latent one)."""

    steps: int | None = Field(default=None, ge=1)
    eps: float | None = Field(default=None, ge=0)
    layers: list[str | int | float] | None = Field(default=None, min_length=1)
    relative: bool | None = None

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[str | int | float] | None) -> list[str | int | float] | None:
        return _check_layers(value)


def _check_layers(value: list[str | int | float] | None) -> list[str | int | float] | None:
    for layer in value or []:
        if isinstance(layer, str) and layer != "embedding":
            raise ValueError(f"a layer is 'embedding', a decoder-layer index or a depth fraction, got {layer!r}")
    return value


class SuffixSection(_Strict):
    """The GCG-style suffix search's budget (GCG's own: length 20, 500 steps, top-k 256, 512 candidates)."""

    length: int = Field(default=8, ge=1)
    steps: int = Field(default=20, ge=0)
    top_k: int = Field(default=32, ge=1)
    candidates: int = Field(default=64, ge=1)


class EvalSection(_Strict):
    """The red-team evaluation: which attacks, their budgets, and generation settings."""

    attacks: list[str] = Field(default_factory=lambda: ["none", "embedding"], min_length=1)
    eps: float = Field(default=0.05, gt=0)  # the embedding attack's ε (embedding_2x: 2ε), of the mean row norm
    steps: int = Field(default=10, ge=1)  # the embedding and latent attacks' steps
    latent_eps: float = Field(default=0.5, gt=0)  # of each layer's mean token norm
    latent_layers: list[str | int | float] = Field(default_factory=lambda: ["embedding", 0.25, 0.5, 0.75],
                                                   min_length=1)
    suffix: SuffixSection = Field(default_factory=SuffixSection)
    max_new_tokens: int = Field(default=24, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_behaviours: int | None = Field(default=None, ge=1)

    @field_validator("latent_layers")
    @classmethod
    def _layers(cls, value: list[str | int | float]) -> list[str | int | float]:
        return _check_layers(value) or value

    def build_attacks(self) -> dict[str, Any]:
        """name → attack for the attacks listed (:func:`sparring.language.evaluate.default_attacks`)."""
        from sparring.language.evaluate import default_attacks
        from sparring.language.suffix import SuffixSearch

        catalogue = default_attacks(eps=self.eps, steps=self.steps, latent_eps=self.latent_eps,
                                    latent_layers=tuple(self.latent_layers),
                                    suffix=SuffixSearch(**self.suffix.model_dump()))
        return {name: catalogue[name] for name in self.attacks}

    @field_validator("attacks")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in EVAL_ATTACKS:
                raise ValueError(f"unknown attack {name!r}; available: {', '.join(EVAL_ATTACKS)}")
        if len(set(value)) != len(value):
            raise ValueError("an attack is listed twice")
        return value


class LanguageRunConfig(_Strict):
    """A language-model run (``task: language``); see the module doc."""

    task: Literal["language"] = "language"
    name: RunName = None
    seed: int = 0
    model: ModelSection
    lora: LoraSection | None = Field(default_factory=LoraSection)
    data: DataSection
    objective: dict[str, Any] | Literal["none"] | None = Field(default_factory=lambda: {"name": "cat"})
    train: dict[str, Any] = Field(default_factory=dict)
    eval: EvalSection = Field(default_factory=EvalSection)

    def build_objective(self) -> Objective | None:
        """The objective, its prompt attack adjusted by ``objective.attack``; refused unless it trains chats. None
        for ``objective: none`` (no training: the red-team evaluation of the model as loaded)."""
        if self.objective is None or self.objective == "none":
            return None
        spec = self.objective if isinstance(self.objective, dict) else {"name": self.objective}
        spec = dict(spec)
        attack = spec.pop("attack", None)
        objective = build_component(OBJECTIVES, spec, where="objective")
        for inner in walk(objective):
            inputs = getattr(type(inner), "inputs", "any")
            if inputs != "chat":
                chat = ", ".join(n for n in OBJECTIVES.names() if getattr(OBJECTIVES.get(n), "inputs", "") == "chat")
                raise ConfigError(f"objective: {inner.name!r} is not a language-model objective (it trains "
                                  f"{inputs!r} inputs); use one of {chat}")
        if attack is not None:
            _set_attack(objective, attack)
        return objective

    def build_train(self) -> tuple[TrainConfig, int, int]:
        """(TrainConfig, utility_ratio, max_length) from ``train:`` over :data:`TRAIN_DEFAULTS`."""
        if not isinstance(self.train, dict):
            raise ConfigError("train: expected a mapping of training settings")
        settings = {**TRAIN_DEFAULTS, **self.train}
        ratio, length = settings.pop("utility_ratio", 7), settings.pop("max_length", 256)
        if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 0:
            raise ConfigError(f"train.utility_ratio: must be an integer >= 0 (utility chats per behaviour), got "
                              f"{ratio!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 8:
            raise ConfigError(f"train.max_length: must be an integer >= 8 (tokens per chat), got {length!r}")
        return build_dataclass(TrainConfig, {"seed": self.seed, **settings}, where="train"), ratio, length


def _set_attack(objective: Objective, spec: Any) -> None:
    """Apply ``objective.attack`` settings to every prompt attack the objective (or what it wraps) holds."""
    if not isinstance(spec, dict):
        raise ConfigError("objective.attack: expected a mapping like {steps: 2, eps: 0.05}")
    try:
        settings = AttackSection.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(f"objective.attack.{first_error(exc)}") from None
    holders = [inner for inner in walk(objective) if isinstance(getattr(inner, "attack", None), PromptAttack)]
    if not holders:
        raise ConfigError(f"objective.attack: {objective.name!r} has no prompt attack to set")
    for inner in holders:
        old: PromptAttack = inner.attack  # type: ignore[attr-defined]
        changes: dict[str, Any] = {}
        if settings.steps is not None:
            changes["optimizer"] = dataclasses.replace(old.optimizer, steps=settings.steps)
        if settings.eps is not None:
            changes["eps"] = settings.eps
        if settings.layers is not None:
            changes["layers"] = tuple(settings.layers)
        if settings.relative is not None:
            changes["relative"] = settings.relative
        try:
            inner.attack = dataclasses.replace(old, **changes)  # type: ignore[attr-defined]
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"objective.attack: {exc}") from None


def describe_attack(attack: PromptAttack) -> dict[str, Any]:
    """A prompt attack as the ``objective.attack`` settings that rebuild it."""
    return {"steps": getattr(attack.optimizer, "steps", None), "eps": attack.eps,
            "layers": list(attack.layers), "relative": attack.relative}


def describe_objective(objective: Objective) -> dict[str, Any]:
    """The objective as a config mapping that rebuilds it: its init fields, wrapped objectives nested, and its
    prompt attack (or the one it wraps) as ``attack``."""
    described = objective.describe()
    init = {f.name for f in dataclasses.fields(objective) if f.init}
    out: dict[str, Any] = {"name": objective.name}
    for key, value in described.items():
        if key == "name" or key not in init:
            continue
        inner = getattr(objective, key)
        if isinstance(inner, PromptAttack):
            continue
        out[key] = _without_attack(describe_objective(inner)) if isinstance(inner, Objective) else value
    attacks = [inner.attack for inner in walk(objective) if isinstance(getattr(inner, "attack", None), PromptAttack)]
    if attacks:
        out["attack"] = describe_attack(attacks[0])
    return out


def _without_attack(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "attack"}


__all__ = ["EVAL_ATTACKS", "LORA_TARGETS", "LanguageRunConfig", "LoraSection", "describe_attack", "describe_objective"]
