"""Evaluation: worst case, ε-curve consistency, per-class numbers and the checks that flag masking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparring.attacks import FGSM, PGD
from sparring.evaluate import evaluate
from sparring.threat import LinfBall


@pytest.fixture(scope="module")
def setup(trained_mlp, digits, single_thread) -> tuple[nn.Module, object]:
    return trained_mlp, digits[1].subset(torch.arange(120))


def quick(model, data, **kwargs):
    kwargs.setdefault("suite", [FGSM(), PGD(steps=10), PGD(steps=10, loss="margin")])
    kwargs.setdefault("eps_curve", [0.0, 0.05, 0.1, 0.2, 0.4])
    return evaluate(model, data, LinfBall(eps=0.1), **kwargs)


def check(evaluation, name: str) -> dict:
    return next(c for c in evaluation.checks if c["name"] == name)


def test_cascade_worst_case_and_per_attack_numbers(setup) -> None:
    model, data = setup
    ev = quick(model, data)
    report = ev.to_dict()
    ra = report["robust_accuracy"]
    assert set(ra) == {"fgsm", "pgd", "pgd_margin", "worst_case"}
    # cumulative: robust after FGSM ⊇ after PGD ⊇ after PGD-margin = the per-sample worst case
    assert torch.equal(ev.robust["pgd"], ev.robust["pgd"] & ev.robust["fgsm"])
    assert torch.equal(ev.robust["pgd_margin"], ev.robust["pgd_margin"] & ev.robust["pgd"])
    assert torch.equal(ev.worst_case, ev.robust["pgd_margin"])
    assert ra["worst_case"] <= ra["pgd"] <= ra["fgsm"] <= report["clean_accuracy"]
    rows = {row["name"]: row for row in report["attacks"]}
    # each attack ran only on the points still robust, and broke what the masks say
    assert rows["fgsm"]["attacked"] == int(ev.clean_correct.sum())
    assert rows["pgd"]["attacked"] == int(ev.robust["fgsm"].sum())
    assert rows["pgd_margin"]["attacked"] == int(ev.robust["pgd"].sum())
    assert rows["pgd"]["broken"] == int((ev.robust["fgsm"] & ~ev.robust["pgd"]).sum())
    assert torch.equal(ev.broken_by == -2, ~ev.clean_correct)


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
    ev = evaluate(model, data, LinfBall(eps=eps), suite=[PGD(steps=10)], eps_curve=[])
    even = data.y % 2 == 0
    assert torch.equal(ev.worst_case[even], ev.clean_correct[even])
    assert ev.eps_curve == []


def test_evaluation_refuses_unscored_attacks(setup) -> None:
    from sparring.errors import ConfigError

    model, data = setup
    with pytest.raises(ConfigError, match="scored"):
        evaluate(model, data, LinfBall(eps=0.1), suite=[FGSM(score=False)])


def test_named_suites(setup) -> None:
    from sparring.attacks.cascade import suite

    assert suite("fast").labels == ("apgd_ce",)
    standard = suite("standard")
    assert standard.labels == ("apgd_ce", "apgd_t", "square")
    assert [a.steps for a in standard.attacks[:2]] == [100, 100] and standard.attacks[1].targets == 9
    assert standard.attacks[2].queries == 5000 and standard.attacks[2].p_init == 0.8
    plus = suite("plus")
    assert plus.attacks[0].restarts == 5 and plus.attacks[1].loss == "dlr" and plus.attacks[-1].black_box
    from sparring.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown suite"):
        suite("strong")


def test_fast_suite_through_evaluate(setup) -> None:
    model, data = setup
    ev = evaluate(model, data, LinfBall(eps=0.1), suite="fast", eps_curve=[])
    pgd = evaluate(model, data, LinfBall(eps=0.1), suite=[PGD(steps=10)], eps_curve=[])
    assert ev.suite == "fast" and set(ev.robust) == {"apgd_ce"}
    assert ev.robust_accuracy <= pgd.robust_accuracy + 1e-9
    # the fast suite has no black-box member: the check runs a short Square on the probe instead
    bb = check(ev, "black_box_not_stronger")
    assert bb["passed"] is not None and "square (1000 queries" in bb["detail"]
    assert f"of {int(ev.worst_case.sum())} points (" in bb["detail"] and "survived apgd_ce" in bb["detail"]
    if bb["passed"] is False:
        assert "not in the number" in bb["detail"]


def test_black_box_beating_white_box_is_flagged_and_the_number_kept(setup) -> None:
    from sparring.attacks import Square

    model, data = setup
    masked = _Quantized(model)
    ev = evaluate(masked, data, LinfBall(eps=0.1), suite=[PGD(steps=10), Square(queries=300)], eps_curve=[])
    bb = check(ev, "black_box_not_stronger")
    assert bb["passed"] is False and "square broke" in bb["detail"] and "are counted" in bb["detail"]
    rows = {row["name"]: row for row in ev.attacks}
    assert rows["square"]["broken"] > 0
    assert ev.robust_accuracy == pytest.approx(float(ev.worst_case.float().mean()))  # the number stays
    assert not ev.trustworthy


def test_bf16_attacks_agree_with_fp32(setup) -> None:
    model, data = setup
    settings = {"suite": [PGD(steps=10)], "eps_curve": [0.0, 0.1]}
    fp32 = evaluate(model, data, LinfBall(eps=0.1), **settings)
    bf16 = evaluate(model, data, LinfBall(eps=0.1), precision="bf16", **settings)
    assert abs(bf16.robust_accuracy - fp32.robust_accuracy) <= 0.05
    assert bf16.eps_curve[0]["robust_accuracy"] == pytest.approx(bf16.clean_accuracy)
    # every break counted under bf16 is a break of the fp32 model
    adv = bf16.examples["adv"]
    with torch.no_grad():
        fooled = model(adv).argmax(1) != bf16.examples["labels"]
    broken = ~bf16.worst_case[: len(adv)] & bf16.clean_correct[: len(adv)]
    assert torch.equal(fooled & broken, broken)
    assert bf16.attacks[0]["settings"]["precision"] == "bf16"


def test_bf16_attack_runs_under_autocast(setup) -> None:
    model, data = setup
    seen: list[torch.dtype] = []
    handle = model[-1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        PGD(steps=2, precision="bf16")(model, data.x[:8], data.y[:8], LinfBall(eps=0.1))
    finally:
        handle.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)


def test_plus_suite_runs_and_is_at_least_as_strong_as_fast(setup) -> None:
    model, data = setup
    small = data.subset(torch.arange(24))
    plus = evaluate(model, small, LinfBall(eps=0.1), suite="plus", eps_curve=[])
    fast = evaluate(model, small, LinfBall(eps=0.1), suite="fast", eps_curve=[])
    assert [row["name"] for row in plus.attacks] == ["apgd_ce", "apgd_dlr", "apgd_t", "square"]
    assert plus.robust_accuracy <= fast.robust_accuracy
