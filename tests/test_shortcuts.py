"""The front door in Python and on the command line: one-liners, ε and norm as people write them."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from test_cli import one_error_line, run_main

import sparring
from sparring.attacks import PGD
from sparring.errors import ConfigError, ThreatModelError
from sparring.threat import LinfBall, parse_eps, parse_norm


@pytest.fixture(scope="module")
def batch(digits):
    return digits[1].x[:48], digits[1].y[:48]


# ----------------------------------------------------------------------------- ε and norm as written
@pytest.mark.parametrize(("text", "value"), [("8/255", 8 / 255), ("0.03", 0.03), (" 1e-2 ", 0.01), (0.5, 0.5),
                                             ("2/ 255", 2 / 255), ("0", 0.0)])
def test_eps_as_written(text, value) -> None:
    assert parse_eps(text) == value


@pytest.mark.parametrize("text", ["8/0", "abc", "1/2/3", "-1", "inf", "__import__('os')", "2**8", True])
def test_eps_refuses_anything_else_in_one_line(text) -> None:
    with pytest.raises(ThreatModelError, match="eps") as info:
        parse_eps(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "name"), [("Linf", "linf"), ("LINF", "linf"), ("inf", "linf"), ("L2", "l2"),
                                             ("l2", "l2"), ("points", "points")])
def test_norm_is_case_insensitive(text, name) -> None:
    assert parse_norm(text) == name


def test_yaml_takes_fractions_and_keeps_the_float(tmp_path) -> None:
    from sparring.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("objective: {name: pgd_at, threat: {norm: Linf, eps: 8/255},\n"
                    "            attack: {name: pgd, step_size: 2/255}}\n"
                    "eval: {eps_curve: [0, 4/255, 8/255]}\n")
    config = load_config(path)
    objective = config.build_objective()
    assert objective.threat.eps == 8 / 255 and objective.threat.norm == "linf"
    assert objective.attack.step_size == 2 / 255
    assert config.eval.eps_curve == [0.0, 4 / 255, 8 / 255]
    assert objective.threat.describe()["eps"] == pytest.approx(8 / 255)  # the report keeps the float
    path.write_text("objective: {name: pgd_at, threat: {norm: linf, eps: 8/0}}\n")
    with pytest.raises(ConfigError, match=r"objective.threat.eps: write a number like 0.03 or a fraction like 8/255"):
        load_config(path)


def test_cli_takes_eps_fractions_and_any_norm_case(tmp_path, monkeypatch, capsys, single_thread) -> None:
    (tmp_path / "factory.py").write_text(
        "from sparring.models import build_model\n\n"
        "def make():\n    return build_model('mlp', input_shape=(1, 8, 8), num_classes=10, hidden=(16,))\n")
    args = ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "8/255", "--norm", "Linf",
            "--suite", "fast", "--max-samples", "16", "--eps-curve", "0,4/255", "--out", "ev", "-q"]
    code, _, err = run_main(args, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["threat"]["norm"] == "linf" and report["threat"]["eps"] == pytest.approx(8 / 255)
    assert [p["eps"] for p in report["eps_curve"]] == pytest.approx([0, 4 / 255, 8 / 255])
    code, _, err = run_main([*args[:5], "--eps", "8/0", *args[7:]], tmp_path, monkeypatch, capsys)
    assert code == 2 and "--eps" in one_error_line(err)
    code, _, err = run_main([*args[:7], "--norm", "l7", *args[9:]], tmp_path, monkeypatch, capsys)
    assert code == 2 and "--norm must be linf or l2" in one_error_line(err)


# ----------------------------------------------------------------------------- one-liners
def test_attack_one_liner_matches_the_attack_object(trained_mlp, batch, single_thread) -> None:
    x, y = batch
    x_adv = sparring.attack(trained_mlp, x, y, attack="pgd", eps=8 / 255, norm="Linf", steps=5, batch_size=16)
    direct = PGD(steps=5)(trained_mlp, x, y, LinfBall(eps=8 / 255), generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and LinfBall(eps=8 / 255).contains(x_adv, x).all()
    # batch independence: 16 at a time gives the attack's own result on the whole batch
    torch.testing.assert_close(x_adv, direct.x_adv, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert (trained_mlp(x_adv).argmax(1) != y).sum() >= (trained_mlp(x).argmax(1) != y).sum()
    x_l2 = sparring.attack(trained_mlp, x, y, attack="fgsm", eps="0.5", norm="L2")
    assert (x_l2 - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


def test_attack_one_liner_refuses_bad_input_clearly(trained_mlp, batch) -> None:
    x, y = batch
    with pytest.raises(ConfigError, match="unknown attack"):
        sparring.attack(trained_mlp, x, y, attack="nope", eps=0.1)
    with pytest.raises(ConfigError, match="settings"):
        sparring.attack(trained_mlp, x, y, attack=PGD(), eps=0.1, steps=3)
    with pytest.raises(ThreatModelError, match="eps"):
        sparring.attack(trained_mlp, x, y, eps="a lot")


def test_robust_accuracy_one_liner_is_the_evaluation_worst_case(trained_mlp, batch, single_thread) -> None:
    x, y = batch
    settings = {"eps": 0.1, "norm": "linf", "suite": [PGD(steps=5)], "eps_curve": [0, 0.1], "progress": False}
    value = sparring.robust_accuracy(trained_mlp, x, y, **settings)
    full = sparring.evaluate(trained_mlp, (x, y), LinfBall(eps=0.1), suite=[PGD(steps=5)], eps_curve=[0, 0.1])
    assert value == full.robust_accuracy and 0 <= value < float((trained_mlp(x).argmax(1) == y).float().mean())


def test_robust_accuracy_warns_when_the_number_is_not_trustworthy(trained_mlp, batch) -> None:
    x, y = batch
    softmaxed = torch.nn.Sequential(trained_mlp, torch.nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="not trustworthy.*outputs_not_probabilities"):
        sparring.robust_accuracy(softmaxed, x, y, eps=0.1, suite=[PGD(steps=2)], eps_curve=[])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparring.robust_accuracy(trained_mlp, x[:8], y[:8], eps=0.0, suite=[PGD(steps=2)], eps_curve=[])


def test_evaluation_save_writes_the_report(trained_mlp, batch, tmp_path) -> None:
    x, y = batch
    ev = sparring.evaluate(trained_mlp, (x, y), LinfBall(eps=0.1), suite=[PGD(steps=2)], eps_curve=[0, 0.1])
    folder = ev.save(tmp_path / "mine", model_name="mlp")
    report = json.loads((folder / "report.json").read_text())
    assert report["robust_accuracy"]["worst_case"] == ev.robust_accuracy
    assert report["model"]["name"] == "mlp" and report["data"]["n_eval"] == len(y)
    assert (folder / "report.html").read_text().count("<html") == 1
