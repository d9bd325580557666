"""Typed configuration read from YAML (pydantic v2).

A run config has five sections — ``data``, ``model``, ``objective``, ``train``, ``eval`` — plus ``name``
and ``seed``. Objectives and attacks are written as ``{name: ..., <their own fields>}`` and are built
from the registries, so every registered component is configurable without a schema of its own: the
fields of its dataclass are the schema (unknown keys and wrong types are errors naming the field).

    objective:
      name: pgd_at
      threat: {norm: linf, eps: 0.2}
      attack: {name: pgd, steps: 10}

Every error is a :class:`ConfigError` with a one-line message that names the offending field or file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from sparring.attacks import ATTACKS, Attack
from sparring.attacks.cascade import as_cascade, check_attacks_fit
from sparring.detectors.evaluation import DEFAULT_LAMBDAS, DEFAULT_RADII
from sparring.errors import ConfigError
from sparring.models import check_settings, settings_of
from sparring.objectives import OBJECTIVES, Objective, threat_of
from sparring.objectives.base import walk
from sparring.tasks import first_error, task_of
from sparring.threat import ThreatModel, make_threat, parse_norm
from sparring.train import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_RUN_NAME = re.compile(r"[\w.-]+")
RUN_NAME_RULE = "must be one path component (letters, digits, - _ .)"


def is_run_name(name: str) -> bool:
    """Whether ``name`` is one path component: letters, digits, ``- _ .``, and not ``.`` or ``..``.

    A run's name becomes its default folder ``runs/<name>``: it must neither climb out of ``runs/`` nor nest."""
    return bool(_RUN_NAME.fullmatch(name)) and name not in (".", "..")


def _checked_run_name(value: str | None) -> str | None:
    if value is not None and not is_run_name(value):
        raise ValueError(f"{RUN_NAME_RULE}, got {value!r}")
    return value


#: A config's ``name``: one path component or absent (every run config's schema uses it).
RunName = Annotated[str | None, AfterValidator(_checked_run_name)]


class ThreatSpec(_Strict):
    """``norm`` linf / l2 (``eps`` a radius) or, for point clouds, ``points`` (``eps`` points dropped or added,
    each within ``radius`` of the clean cloud). ``bounds: null`` for inputs without a box (point clouds)."""

    norm: Literal["linf", "l2", "points"] = "linf"
    eps: float = Field(ge=0)
    bounds: tuple[float, float] | None = (0.0, 1.0)
    radius: float | None = Field(default=None, ge=0)

    @field_validator("norm", mode="before")
    @classmethod
    def _norm_as_written(cls, value: Any) -> Any:
        return parse_norm(value) if isinstance(value, str) else value

    @field_validator("eps", "radius", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        return as_number(value)

    def build(self) -> ThreatModel:
        if self.norm == "points":
            return make_threat("points", self.eps, None if self.bounds == (0.0, 1.0) else self.bounds,
                               radius=self.radius or 0.0)
        if self.radius is not None:
            raise ConfigError("threat.radius applies to norm: points only")
        return make_threat(self.norm, self.eps, self.bounds)


class LongTailSpec(_Strict):
    imbalance_ratio: float = Field(ge=1)


class DataSpec(_Strict):
    source: str = "digits"
    root: str | None = None
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    num_classes: int | None = Field(default=None, ge=2)
    long_tail: LongTailSpec | None = None


class NormalizeSpec(_Strict):
    mean: list[float]
    std: list[float]


class ModelSpec(BaseModel):
    """``name`` plus the model's own settings (checked by the model registry)."""

    model_config = ConfigDict(extra="allow")
    name: str = "small_cnn"
    normalize: NormalizeSpec | None = None

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DetectorSpec(_Strict):
    """``eval.detector``: a detector fitted on the clean training split and calibrated on attacked training points
    held out of that fit; the evaluation then reports detection per suite attack and under an adaptive attack
    (:mod:`sparring.detectors.evaluation`)."""

    name: str = "sae"
    layer: str  # module path of the layer the detector reads, e.g. features (small_cnn), model.layers.3
    settings: dict[str, Any] = Field(default_factory=dict)  # the detector's own settings (n_features, k, ...)
    calibration: int = Field(default=300, ge=8)  # training points held out of the fit, attacked to calibrate
    fit_steps: int = Field(default=2000, ge=1)
    calibration_attack: dict[str, Any] | str = Field(default_factory=lambda: {"name": "pgd", "steps": 20})
    adaptive: dict[str, Any] | str = Field(
        default_factory=lambda: {"name": "apgd", "loss": "ce", "steps": 100, "early_stop": False})
    lambdas: list[float] = Field(default_factory=lambda: list(DEFAULT_LAMBDAS))  # [] = non-adaptive only
    radii: list[float] = Field(default_factory=lambda: list(DEFAULT_RADII))  # fractions of ε, each λ > 0 too
    fpr: float = Field(default=0.05, gt=0, lt=1)  # the operating point, set on the clean calibration points

    def build_attacks(self) -> tuple[Attack, Attack]:
        """The calibration attack and the attack made detector-aware."""
        return (build_component(ATTACKS, self.calibration_attack, where="eval.detector.calibration_attack"),
                build_component(ATTACKS, self.adaptive, where="eval.detector.adaptive"))


class EvalSpec(_Strict):
    threat: ThreatSpec | None = None
    suite: Literal["fast", "standard", "plus", "rand"] = "standard"
    attacks: list[dict[str, Any] | str] | None = None  # a custom cascade, run in this order, instead of the suite
    precision: Literal["fp32", "bf16"] = "fp32"
    eps_curve: list[float] | Literal["minnorm"] | None = None  # radii, or one minimum-norm run (docs/evaluation.md)
    batch_size: int = Field(default=256, ge=1)
    max_samples: int | None = Field(default=None, ge=1)
    detector: DetectorSpec | None = None

    @field_validator("eps_curve", mode="before")
    @classmethod
    def _fractions(cls, value: Any) -> Any:
        return [as_number(v) for v in value] if isinstance(value, list) else value

    @field_validator("eps_curve")
    @classmethod
    def _non_negative(cls, value: list[float] | str | None) -> list[float] | str | None:
        if isinstance(value, list) and any(e < 0 for e in value):
            raise ValueError("every eps of the curve must be >= 0")
        return value


class RunConfig(_Strict):
    """A classifier run (``task: classification``, the default); the point clouds' ``task: points`` extends it."""

    task: Literal["classification"] = "classification"
    name: RunName = None
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    objective: dict[str, Any] = Field(default_factory=lambda: {"name": "standard"})
    train: dict[str, Any] = Field(default_factory=dict)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    def build_objective(self) -> Objective:
        return build_component(OBJECTIVES, self.objective, where="objective")  # type: ignore[return-value]

    def build_train(self) -> TrainConfig:
        return build_dataclass(TrainConfig, {"seed": self.seed, **self.train}, where="train")

    def build_suite(self) -> str | list[Attack]:
        """The evaluation cascade: ``eval.attacks`` if given, else the named ``eval.suite``."""
        if self.eval.attacks is None:
            return self.eval.suite
        return [build_component(ATTACKS, a, where=f"eval.attacks[{i}]") for i, a in enumerate(self.eval.attacks)]

    def eval_threat(self, objective: Objective) -> ThreatModel:
        """The evaluation threat: ``eval.threat``, else the objective's training threat."""
        if self.eval.threat is not None:
            return self.eval.threat.build()
        threat = threat_of(objective)
        if threat is None:
            raise ConfigError("eval.threat is required when the objective has no threat model (e.g. standard)")
        return threat


# --------------------------------------------------------------------------- loading
def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config; every problem is one ConfigError line."""
    return parse_config(_read_yaml(Path(path)), source=str(path))


def load_any_config(path: str | Path) -> Any:
    """The config of whichever task the YAML names (``task:`` classification (the default), points, recsys,
    language), validated by that task (:data:`sparring.tasks.TASKS`)."""
    raw = _read_yaml(Path(path))
    return task_of(raw, source=str(path)).parse(raw, source=str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; every problem is one ConfigError line naming the file (and line)."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not a UTF-8 text YAML file (byte {exc.start}, line {line}, is not UTF-8); save it as UTF-8 text"
        ) from None
    try:
        return _load_mapping(text, path)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.reader.ReaderError as exc:  # valid UTF-8 but control characters: a binary file
        raise ConfigError(
            f"{path}: not a UTF-8 text YAML file (character #x{exc.character:04x} at offset {exc.position} is not "
            "allowed in YAML)"
        ) from None
    except yaml.composer.ComposerError as exc:
        if "another document" in (exc.problem or "") and exc.problem_mark is not None:
            raise ConfigError(
                f"{path}: holds more than one YAML document (a second document starts at line "
                f"{exc.problem_mark.line + 1}); keep one config per file"
            ) from None
        raise ConfigError(f"{path}: not valid YAML{_yaml_where(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_where(exc)}") from None


class _DuplicateKey(yaml.YAMLError):
    """A mapping names the same key twice (PyYAML would silently keep the last)."""


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (safe tags only) that refuses a key written twice in one mapping, at any depth."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by the keys beside it
                continue
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                where = f"line {mark.line + 1}"
                if first.line == mark.line:  # a flow mapping {eps: 1, eps: 2} on one line
                    where += f", column {mark.column + 1} (first at column {first.column + 1})"
                else:
                    where += f" (first at line {first.line + 1})"
                raise _DuplicateKey(f"duplicate key {key!r} at {where}; keep one")
            seen[key] = mark
        return super().construct_mapping(node, deep=deep)


def _load_mapping(text: str, path: Path) -> dict[str, Any]:
    """Compose the single document, check it is a mapping (naming its line), then construct it."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{path}: is empty; write a run config (docs/configs.md)")
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else f"the value {_excerpt(node.value)!r}"
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections (name:, data:, model:, ...), got {kind} at "
                f"line {node.start_mark.line + 1}"
            )
        raw = loader.construct_document(node)
    finally:
        loader.dispose()
    return raw


def _excerpt(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return f"{where}: {problem}" if problem else where


def parse_config(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Validate a classifier config mapping, building every component once so errors surface before any work (a
    config of another task: :func:`load_any_config`)."""
    if raw.get("task", "classification") != "classification":
        raise ConfigError(f"{source}: task: a {raw.get('task')} config is read by load_any_config (sparring run "
                          "dispatches on it)")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None
    try:
        check_run_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def check_run_config(config: RunConfig) -> None:
    """Build the objective, training settings and suite once and check the model's settings (before any work)."""
    objective = config.build_objective()
    check_objective_domain(objective)
    config.build_train()
    suite = config.build_suite()
    check_attacks_fit(as_cascade(suite).attacks, config.eval_threat(objective))
    check_model_spec(config.model)


#: Where an objective that does not train classifier tensors is trained instead (by its ``inputs``).
_ELSEWHERE = {
    "recsys": "a recommender objective: write a `task: recsys` config (docs/configs.md)",
    "chat": "a language-model objective: write a `task: language` config (docs/language.md)",
}


def check_objective_domain(objective: Objective) -> None:
    """A run config trains classifiers on tensors (images, features, point clouds): refuse an objective, or a
    wrapped one (DRO's ``base``), that trains another domain's batches."""
    for inner in walk(objective):
        inputs = type(inner).inputs
        if inputs in _ELSEWHERE:
            raise ConfigError(f"objective: {inner.name!r} is {_ELSEWHERE[inputs]}")


def check_model_spec(spec: ModelSpec) -> None:
    """The model name exists and its settings are ones it accepts, of the types its constructor annotates (built
    later, once the data is known)."""
    try:
        accepted = settings_of(spec.name)
    except ConfigError as exc:
        raise ConfigError(f"model.name: {exc}") from None
    reject_unknown_settings(spec.name, spec.settings(), accepted)
    try:
        check_settings(spec.name, spec.settings())  # wrong types fail here, before any work
    except ConfigError as exc:
        raise ConfigError(f"model.{exc}") from None


def reject_unknown_settings(name: str, settings: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """A ConfigError naming the first of ``settings`` that model ``name`` does not accept."""
    accepted = list(accepted)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: unknown setting for {name!r} (accepted: {', '.join(accepted)})")


_first_error = first_error  # the name the config readers used before sparring.tasks


# --------------------------------------------------------------------------- components
def build_component(registry: Any, spec: Any, *, where: str) -> Any:
    """Build a registered dataclass component from ``{name: ..., field: value, ...}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {spec!r}")
    settings = dict(spec)
    try:
        cls = registry.get(settings.pop("name"))
    except ConfigError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    return build_dataclass(cls, settings, where=where)


def build_dataclass(cls: type, settings: dict[str, Any], *, where: str) -> Any:
    """Validate ``settings`` against the init fields of dataclass ``cls`` and construct it."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{where}.{key}: unknown field for {cls.__name__} (allowed: {allowed})")
        kwargs[key] = _convert(hints[key], value, where=f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(hint: Any, value: Any, *, where: str) -> Any:
    if hint is Attack or (isinstance(hint, type) and issubclass(hint, Attack)):
        return build_component(ATTACKS, value, where=where)
    if hint is Objective or (isinstance(hint, type) and issubclass(hint, Objective)):  # wrappers (DRO's base)
        return build_component(OBJECTIVES, value, where=where)
    if hint is ThreatModel or (isinstance(hint, type) and issubclass(hint, ThreatModel)):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping like {{norm: linf, eps: 0.03}}")
        try:
            return ThreatSpec.model_validate(value).build()
        except ValidationError as exc:
            raise ConfigError(f"{where}.{_first_error(exc)}") from None
    if isinstance(hint, type) and not _is_plain(hint):
        raise ConfigError(f"{where}: this field cannot be set from a config")
    if _takes_float(hint):  # a step size or radius written as 2/255
        try:
            value = as_number(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        return TypeAdapter(hint).validate_python(value, strict=False)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise ConfigError(f"{where}: {message} (got {value!r})") from None


def as_number(value: Any) -> Any:
    """A number written as a fraction (``8/255``: two numbers, nothing evaluated) as its float; anything else as is,
    for the field's own validation to accept or refuse."""
    if isinstance(value, str) and "/" in value:
        numerator, _, denominator = value.partition("/")
        try:
            return float(numerator) / float(denominator)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"write a number like 0.03 or a fraction like 8/255, got {value!r}") from None
    return value


def _takes_float(hint: Any) -> bool:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return hint is float or (union and float in typing.get_args(hint))


def _is_plain(hint: type) -> bool:
    return hint in (int, float, str, bool, list, tuple, dict)
