"""Evaluation: worst case, ε-curve consistency, per-class numbers and the checks that flag masking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparring.attacks import FGSM, PGD
from sparring.evaluate import evaluate
from sparring.threat import LinfBall


@pytest.fixture(scope="module")
def setup(trained_mlp, digits) -> tuple[nn.Module, object]:
    return trained_mlp, digits[1].subset(torch.arange(120))


def quick(model, data, **kwargs):
    kwargs.setdefault("attacks", [FGSM(), PGD(steps=10), PGD(steps=10, loss="margin")])
    kwargs.setdefault("eps_curve", [0.0, 0.05, 0.1, 0.2, 0.4])
    return evaluate(model, data, LinfBall(eps=0.1), **kwargs)


def check(evaluation, name: str) -> dict:
    return next(c for c in evaluation.checks if c["name"] == name)


def test_worst_case_is_per_sample_minimum(setup) -> None:
    model, data = setup
    ev = quick(model, data)
    report = ev.to_dict()
    ra = report["robust_accuracy"]
    assert set(ra) == {"fgsm", "pgd", "pgd_margin", "worst_case"}
    expected = ev.clean_correct & ev.robust["fgsm"] & ev.robust["pgd"] & ev.robust["pgd_margin"]
    assert torch.equal(ev.worst_case, expected)
    assert ra["worst_case"] <= min(ra["fgsm"], ra["pgd"], ra["pgd_margin"]) <= report["clean_accuracy"]


def test_eps_curve_is_monotone_and_consistent(setup) -> None:
    model, data = setup
    ev = quick(model, data)
    curve = {p["eps"]: p["robust_accuracy"] for p in ev.eps_curve}
    values = [curve[e] for e in sorted(curve)]
    assert values == sorted(values, reverse=True)
    assert curve[0.0] == pytest.approx(ev.clean_accuracy)
    assert curve[0.1] <= ev.robust_accuracy
    assert curve[0.4] < 0.05


def test_per_class_and_balanced(setup) -> None:
    model, data = setup
    report = quick(model, data).to_dict()
    rows = report["per_class"]
    assert sum(r["n"] for r in rows) == len(data)
    weighted = sum(r["n"] * r["robust_accuracy"] for r in rows) / len(data)
    assert weighted == pytest.approx(report["robust_accuracy"]["worst_case"])
    assert report["balanced_accuracy"]["clean"] == pytest.approx(sum(r["clean_accuracy"] for r in rows) / 10)


def test_checks_pass_on_a_sound_model(setup) -> None:
    model, data = setup
    ev = quick(model, data)
    assert all(c["passed"] for c in ev.checks), ev.checks
    assert ev.trustworthy


def test_softmax_outputs_are_flagged(setup) -> None:
    model, data = setup
    ev = quick(nn.Sequential(model, nn.Softmax(dim=1)), data, eps_curve=[])
    assert check(ev, "outputs_not_probabilities")["passed"] is False
    assert not ev.trustworthy


class _Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + torch.randn(len(x), 10)


def test_randomized_model_is_flagged(setup) -> None:
    model, data = setup
    ev = quick(_Noisy(model), data, eps_curve=[])
    assert check(ev, "deterministic_model")["passed"] is False


class _Quantized(nn.Module):
    """Rounds its input: zero gradients everywhere (the classic masking defence)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def test_masked_gradients_are_flagged(setup) -> None:
    model, data = setup
    ev = quick(_Quantized(model), data)
    assert check(ev, "gradients_finite_nonzero")["passed"] is False
    assert check(ev, "large_eps_breaks_model")["passed"] is False
    assert not ev.trustworthy


def test_examples_for_the_grid(setup) -> None:
    model, data = setup
    ev = quick(model, data, n_examples=4)
    assert ev.examples["clean"].shape == (4, 1, 8, 8) and ev.examples["adv"].shape == (4, 1, 8, 8)
    assert LinfBall(eps=0.1).contains(ev.examples["adv"], ev.examples["clean"]).all()


def test_per_sample_eps_evaluation(setup) -> None:
    model, data = setup
    eps = torch.where(data.y % 2 == 0, 0.0, 0.2)
    ev = evaluate(model, data, LinfBall(eps=eps), attacks=[PGD(steps=10)], eps_curve=[])
    even = data.y % 2 == 0
    assert torch.equal(ev.worst_case[even], ev.clean_correct[even])
    assert ev.eps_curve == []


def test_evaluation_refuses_unscored_attacks(setup) -> None:
    from sparring.errors import ConfigError

    model, data = setup
    with pytest.raises(ConfigError, match="scored"):
        evaluate(model, data, LinfBall(eps=0.1), attacks=[FGSM(score=False)])
