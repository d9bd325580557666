"""YAML run configs: the shipped demos parse; every mistake is one ConfigError naming the field or file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sparring.attacks import FGSM, PGD
from sparring.config import RunConfig, load_config, parse_config
from sparring.errors import ConfigError
from sparring.experiment import demo_config_path
from sparring.objectives import OBJECTIVES, PGDAT, Standard, threat_of
from sparring.objectives import available as objectives_available
from sparring.threat import LinfBall

PGD_AT = "objective: {name: pgd_at, threat: {norm: linf, eps: 0.1}}\n"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message  # one line
    assert str(path) in message  # names the file
    return message


# --------------------------------------------------------------------------- valid configs
def test_demo_configs_parse():
    standard = load_config(demo_config_path("standard"))
    assert isinstance(standard.build_objective(), Standard)
    assert standard.eval_threat(standard.build_objective()).eps == pytest.approx(0.2)

    pgd_at = load_config(demo_config_path("pgd_at"))
    objective = pgd_at.build_objective()
    assert isinstance(objective, PGDAT)
    assert isinstance(objective.threat, LinfBall) and objective.threat.eps == pytest.approx(0.2)
    assert isinstance(objective.attack, PGD) and objective.attack.steps == 10
    train = pgd_at.build_train()
    assert (train.epochs, train.batch_size, train.optimizer, train.schedule) == (15, 64, "adam", "cyclic")
    assert train.lr == pytest.approx(0.003)
    assert pgd_at.data.source == "digits" and pgd_at.model.name == "small_cnn"


def test_full_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, """\
        name: tiny
        seed: 3
        data: {source: digits, test_fraction: 0.2}
        model: {name: mlp, hidden: [32]}
        objective:
          name: pgd_at
          threat: {norm: l2, eps: 0.5}
          attack: {name: pgd, steps: 3, loss: margin}
        train: {epochs: 2, batch_size: 128, lr: 0.01, optimizer: adam, milestones: [0.3, 0.6]}
        eval:
          threat: {norm: linf, eps: 0.1}
          attacks: [{name: fgsm}, {name: pgd, steps: 3}]
          eps_curve: [0, 0.1, 0.2]
          max_samples: 64
        """))
    assert config.name == "tiny" and config.seed == 3
    assert config.model.settings() == {"hidden": [32]}
    objective = config.build_objective()
    assert objective.threat.norm == "l2" and objective.threat.eps == pytest.approx(0.5)
    assert isinstance(objective.attack, PGD) and objective.attack.steps == 3 and objective.attack.loss == "margin"
    train = config.build_train()
    assert train.seed == 3  # the run seed flows into the trainer
    assert train.milestones == (0.3, 0.6)
    attacks = config.build_suite()
    assert isinstance(attacks[0], FGSM) and isinstance(attacks[1], PGD) and attacks[1].steps == 3
    assert config.eval_threat(objective).norm == "linf"  # eval.threat wins over the training threat
    assert config.eval.eps_curve == [0, 0.1, 0.2] and config.eval.max_samples == 64
    again = parse_config(config.model_dump(mode="json"))  # what the run folder's config.yaml holds
    assert again == config


def test_eval_threat_defaults_to_the_objective_threat():
    config = parse_config({"objective": {"name": "pgd_at", "threat": {"eps": 0.3}}})
    assert config.eval_threat(config.build_objective()).eps == pytest.approx(0.3)


def test_an_attack_may_be_a_bare_name():
    config = parse_config({"objective": {"name": "pgd_at", "threat": {"eps": 0.1}, "attack": "fgsm"}})
    assert isinstance(config.build_objective().attack, FGSM)


def test_empty_file_is_an_error(tmp_path):
    # an empty file is more likely a mistake (a failed copy, the wrong file) than a wish for every default
    assert "is empty" in load_error(tmp_path, "")
    assert "eval.threat" in load_error(tmp_path, "seed: 0\n")  # defaults: standard has no threat model


# --------------------------------------------------------------------------- errors naming the field
@pytest.mark.parametrize(
    ("text", "field"),
    [
        (PGD_AT + "bogus: 1\n", "bogus"),
        ("objective: {name: pgd_at, bogus: 1}\n", "objective.bogus"),
        (PGD_AT + "train: {epochs: ten}\n", "train.epochs"),
        (PGD_AT + "train: {epochs: 2.5}\n", "train.epochs"),
        (PGD_AT + "train: {epochs: 0}\n", "train.epochs"),
        (PGD_AT + "train: {bogus: 1}\n", "train.bogus"),
        (PGD_AT + "train: {schedule: linear}\n", "train.schedule"),
        (PGD_AT + "train: {mixed_precision: fp8}\n", "train.mixed_precision"),
        ("objective: {name: pgd_at, threat: {norm: linf, eps: -0.1}}\n", "objective.threat.eps"),
        (PGD_AT + "eval: {threat: {norm: linf, eps: -0.1}}\n", "eval.threat.eps"),
        ("objective: {name: pgd_at, threat: {norm: l3, eps: 0.1}}\n", "objective.threat.norm"),
        ("objective: {name: pgd_at, threat: 0.1}\n", "objective.threat"),
        (PGD_AT + "eval: {eps_curve: [0, -0.1]}\n", "eval.eps_curve"),
        (PGD_AT + "eval: {max_samples: 0}\n", "eval.max_samples"),
        (PGD_AT + "eval: {bogus: 1}\n", "eval.bogus"),
        (PGD_AT + "eval: {suite: strong}\n", "eval.suite"),
        (PGD_AT + "eval: {precision: fp8}\n", "eval.precision"),
        (PGD_AT + "eval: {attacks: [{name: apgd_t, targets: 0}]}\n", "eval.attacks[0]"),
        (PGD_AT + "data: {test_fraction: 1.5}\n", "data.test_fraction"),
        (PGD_AT + "seed: abc\n", "seed"),
        ("objective: {name: pgd_at, threat: {eps: 0.1}, attack: {name: pgd, steps: many}}\n",
         "objective.attack.steps"),
        ("objective: {name: pgd_at, threat: {eps: 0.1}, attack: {name: pgd, steps: 0}}\n", "objective.attack"),
        ("objective: {name: pgd_at, threat: {eps: 0.1}, attack: {name: pgd, bogus: 1}}\n",
         "objective.attack.bogus"),
        ("objective: {threat: {eps: 0.1}}\n", "objective"),
        ("objective: {name: standard}\n", "eval.threat"),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v else "",
)
def test_invalid_field_raises_config_error_naming_it(tmp_path, text, field):
    assert field in load_error(tmp_path, text)


def test_unknown_objective_name(tmp_path):
    message = load_error(tmp_path, "objective: {name: madry_2019}\n")
    assert "objective" in message and "madry_2019" in message and "pgd_at" in message  # lists the options


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("objective: {name: pgd_at, threat: {eps: 0.1}, attack: {name: cw_l9}}\n", "objective.attack"),
        (PGD_AT + "eval: {attacks: [{name: fgsm}, {name: cw_l9}]}\n", "eval.attacks[1]"),
    ],
    ids=["objective.attack", "eval.attacks"],
)
def test_unknown_attack_name_names_where(tmp_path, text, field):
    message = load_error(tmp_path, text)
    assert "cw_l9" in message and "pgd" in message  # the bad name and the available ones
    assert field in message  # which of the (possibly many) attack entries is wrong


def test_unknown_attack_loss_is_caught_at_load(tmp_path):
    """A typo in a loss name must fail when the config is read, not in the middle of training."""
    message = load_error(
        tmp_path, "objective: {name: pgd_at, threat: {eps: 0.1}, attack: {name: pgd, loss: margn}}\n"
    )
    assert "objective.attack" in message and "margn" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (PGD_AT + "model: {name: resnet9000}\n", ["model", "resnet9000"]),
        (PGD_AT + "model: {name: mlp, hiden: [32]}\n", ["model", "hiden"]),
    ],
    ids=["name", "setting"],
)
def test_unknown_model_is_caught_at_load(tmp_path, text, words):
    """Like objectives and attacks, the model name and settings are checked before any work starts."""
    message = load_error(tmp_path, text)
    assert all(word in message for word in words)


def test_nested_attack_config_builds():
    config = parse_config({
        "objective": {"name": "pgd_at", "threat": {"norm": "linf", "eps": 0.1},
                      "attack": {"name": "pgd", "steps": 3, "loss": "margin", "restarts": 2}},
    })
    attack = config.build_objective().attack
    assert isinstance(attack, PGD)
    assert (attack.steps, attack.loss, attack.restarts) == (3, "margin", 2)


# --------------------------------------------------------------------------- errors naming the file
def test_invalid_yaml(tmp_path):
    message = load_error(tmp_path, "objective: {name: pgd_at\ntrain: [1, 2\n")
    assert "YAML" in message and "line" in message


def test_top_level_must_be_a_mapping(tmp_path):
    assert "mapping" in load_error(tmp_path, "- name: pgd_at\n")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_parse_config_names_its_source():
    with pytest.raises(ConfigError, match=r"^runs/x/config\.yaml: bogus"):
        parse_config({"bogus": 1}, source="runs/x/config.yaml")


def test_run_config_defaults():
    config = RunConfig()
    assert config.data.source == "digits" and config.model.name == "small_cnn"
    assert config.objective == {"name": "standard"}


def test_eval_suite_or_custom_cascade():
    config = parse_config({"objective": {"name": "pgd_at", "threat": {"eps": 0.1}}, "eval": {"suite": "fast"}})
    assert config.build_suite() == "fast"
    custom = parse_config({"objective": {"name": "pgd_at", "threat": {"eps": 0.1}},
                           "eval": {"attacks": [{"name": "apgd", "loss": "dlr"}, "square"]}})
    attacks = custom.build_suite()
    assert [a.label for a in attacks] == ["apgd_dlr", "square"]


@pytest.mark.parametrize("name", objectives_available())
def test_every_objective_builds_from_yaml_by_name(name: str) -> None:
    raw = {"objective": {"name": name}, "eval": {"threat": {"eps": 0.1}}}
    inputs = OBJECTIVES.get(name).inputs
    if inputs in ("recsys", "chat"):  # another domain's batches: refused in one line that says where they train
        with pytest.raises(ConfigError, match="task: recsys" if inputs == "recsys" else "task: language"):
            parse_config(raw)
        return
    assert parse_config(raw).build_objective().name == name


def test_another_domains_objective_is_refused_even_when_wrapped() -> None:
    with pytest.raises(ConfigError, match="'cat' is a language-model objective"):
        parse_config({"objective": {"name": "dro", "base": {"name": "cat"}}, "eval": {"threat": {"eps": 0.1}}})


def test_wrappers_nest_in_yaml() -> None:
    raw = {
        "objective": {
            "name": "dro", "divergence": "cvar",
            "base": {"name": "robustlt", "alpha": 0.4, "beta": 0.6,
                     "base": {"name": "awp", "gamma": 0.01, "base": {"name": "trades", "threat": {"eps": 0.1}}}},
        },
    }
    objective = parse_config(raw).build_objective()
    assert objective.base.name == "robustlt" and objective.base.alpha == 0.4
    assert objective.base.base.name == "awp" and objective.base.base.base.name == "trades"
    assert threat_of(objective).eps == pytest.approx(0.1)  # the evaluation threat is found through three wrappers
    described = objective.describe()
    assert described["base"]["base"]["base"]["threat"]["eps"] == pytest.approx(0.1)
