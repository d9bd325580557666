"""EOT gradients and the ``rand`` suite for randomized models (issue 23, requirement 2)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sparring.checks as checks
from sparring.attacks import APGD, suite
from sparring.attacks.cascade import Cascade
from sparring.gradients import EOT, Autograd
from sparring.losses import cross_entropy
from sparring.threat import LinfBall


class EvalDropout(nn.Module):
    """Dropout that stays on in eval mode: a randomized model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, 0.5, training=True)


class RandomPhase(nn.Module):
    """x + a·sin(ω x + φ), φ ~ U(0, 2π) per element and call: the outputs barely move (|a| = 0.01) but a single
    draw's input gradient is dominated by the random factor 1 + aω cos(·) (aω = 5), which averages to 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.sin(500.0 * x + 2 * torch.pi * torch.rand_like(x))


@pytest.fixture(scope="module")
def points(digits, single_thread) -> tuple[torch.Tensor, torch.Tensor]:
    return digits[1].x[:24], digits[1].y[:24]


def test_eot_gradient_is_closer_to_the_expected_gradient(trained_mlp, points) -> None:
    x, y = points
    model = nn.Sequential(trained_mlp[0], trained_mlp[1], trained_mlp[2], EvalDropout(), trained_mlp[3]).eval()
    torch.manual_seed(0)
    expected = EOT(n=1000, batched=True)(model, x, cross_entropy, y).grad.flatten(1)

    def cosine(grad: torch.Tensor) -> float:
        return float(nn.functional.cosine_similarity(grad.flatten(1), expected, dim=1).mean())

    single = sum(cosine(Autograd()(model, x, cross_entropy, y).grad) for _ in range(5)) / 5
    looped = cosine(EOT(n=20)(model, x, cross_entropy, y).grad)
    batched = cosine(EOT(n=20, batched=True)(model, x, cross_entropy, y).grad)
    assert looped > single + 0.08 and batched > single + 0.08
    assert looped > 0.85 and batched > 0.85
    step = EOT(n=20)(model, x, cross_entropy, y)
    assert step.loss.shape == (24,) and step.logits.shape == (24, 10)


def test_eot_refuses_no_draws() -> None:
    with pytest.raises(Exception, match="n >= 1"):
        EOT(n=0)


def test_rand_suite_is_autoattacks_rand_version() -> None:
    rand = suite("rand")
    assert rand.name == "rand" and rand.labels == ("apgd_ce", "apgd_dlr")
    assert [a.loss for a in rand.attacks] == ["ce", "dlr"]
    for attack in rand.attacks:
        assert isinstance(attack, APGD) and attack.steps == 100 and attack.restarts == 1
        assert attack.gradients == EOT(n=20)
        assert attack.describe()["gradients"] == "eot(n=20)"


def _with(cascade: Cascade, **settings: object) -> Cascade:
    attacks = tuple(dataclasses.replace(a, **{k: v for k, v in settings.items() if hasattr(a, k)})
                    for a in cascade.attacks)
    return dataclasses.replace(cascade, attacks=attacks)


def test_rand_suite_beats_the_deterministic_suites_on_a_randomized_model(trained_mlp, points) -> None:
    x, y = points
    model = nn.Sequential(RandomPhase(), trained_mlp).eval()
    threat = LinfBall(eps=0.1)
    # 30 steps each (and a 300-query Square) to stay fast; EOT's 20 draws as one batched pass (per-element noise).
    runs = {
        "rand": _with(suite("rand"), steps=30, gradients=EOT(n=20, batched=True)),
        "standard": _with(suite("standard"), steps=30, queries=300),
        "fast": _with(suite("fast"), steps=30),
    }
    reported, expected = {}, {}
    for name, cascade in runs.items():
        torch.manual_seed(0)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        result = cascade.run(model, x, y, threat, active=correct)
        reported[name] = float((correct & (result.broken_by < 0)).float().mean())
        with torch.no_grad():  # robust in expectation: the mean logits of 200 draws at the returned inputs
            mean_logits = sum(model(result.x_adv) for _ in range(200)) / 200
        expected[name] = float((correct & (mean_logits.argmax(1) == y)).float().mean())
    assert reported["rand"] <= reported["standard"]
    assert reported["rand"] <= reported["fast"] - 0.2
    # Square's and the single-draw attacks' extra breaks are mostly lucky draws; EOT's hold in expectation.
    assert expected["rand"] <= expected["standard"] - 2 / 24 + 1e-9
    assert expected["rand"] <= expected["fast"] - 0.2


def test_deterministic_model_check_points_to_the_rand_suite(trained_mlp, points) -> None:
    x, _ = points
    flagged = checks.deterministic_model(nn.Sequential(RandomPhase(), trained_mlp).eval(), x)
    assert flagged["passed"] is False and "--suite rand" in flagged["detail"]
    fine = checks.deterministic_model(trained_mlp, x)
    assert fine["passed"] is True and "rand" not in fine["detail"]


def test_cli_and_config_accept_the_rand_suite(tmp_path: Path, monkeypatch, capsys) -> None:
    import sparring.experiment
    from sparring.cli import main
    from sparring.config import EvalSpec

    assert EvalSpec(suite="rand").suite == "rand"
    (tmp_path / "factory.py").write_text(
        "from sparring.models import build_model\n\n\ndef make():\n"
        "    return build_model('mlp', input_shape=(1, 8, 8), num_classes=10, hidden=(8,))\n"
    )
    seen: dict[str, object] = {}
    monkeypatch.setattr(sparring.experiment, "evaluate_model", lambda *a, **kw: seen.update(kw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sparring", "eval", "--model", "factory.py:make", "--data", "digits",
                                      "--eps", "0.1", "--suite", "rand", "--out", "out", "-q"])
    main()  # returns normally: the option was accepted and handed to the evaluation
    assert seen["suite"] == "rand"
    monkeypatch.setattr(sys, "argv", ["sparring", "eval", "--model", "factory.py:make", "--data", "digits",
                                      "--eps", "0.1", "--suite", "random", "--out", "out", "-q"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "rand" in capsys.readouterr().err
