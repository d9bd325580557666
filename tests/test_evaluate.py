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
    assert {"fgsm", "pgd", "pgd_margin", "eps_curve", "worst_case"} <= set(ra) <= {*ev.sources, "worst_case"}
    assert ev.sources[:4] == ["fgsm", "pgd", "pgd_margin", "eps_curve"]
    # cumulative: robust after FGSM ⊇ after PGD ⊇ after PGD-margin ⊇ after the ε-curve = the per-sample worst case
    assert torch.equal(ev.robust["pgd"], ev.robust["pgd"] & ev.robust["fgsm"])
    assert torch.equal(ev.robust["pgd_margin"], ev.robust["pgd_margin"] & ev.robust["pgd"])
    assert torch.equal(ev.robust["eps_curve"], ev.robust["eps_curve"] & ev.robust["pgd_margin"])
    assert torch.equal(ev.worst_case, ev.robust[ev.sources[-1]])
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
    assert curve[0.1] == ev.robust_accuracy  # the curve passes through the headline
    assert curve[0.4] < 0.05


def test_eps_curve_below_eps_attacks_only_points_the_suite_broke_with_a_larger_perturbation(setup) -> None:
    """The curve reuses the suite's work: points robust at ε are not re-attacked below ε (robust at ε is the
    evidence at r < ε), a suite break within r counts at r without an attack; at ε the survivors get a second look."""
    model, data = setup
    calls: list[tuple[float, int]] = []

    class Recording(PGD):
        def __call__(self, model, x, y, threat, **kwargs):  # type: ignore[override]
            calls.append((float(threat.eps), len(x)))
            return super().__call__(model, x, y, threat, **kwargs)

    ev = quick(model, data, curve_attack=Recording(steps=10))
    broken_by_suite = int((ev.broken_by >= 0).sum() - (ev.broken_by == ev.sources.index("eps_curve")).sum())
    survivors = int(ev.robust[ev.sources[2]].sum())
    attacked = dict(calls)
    assert all(n <= broken_by_suite for r, n in calls if r < 0.1)  # only the suite's breaks, never its survivors
    assert attacked.get(0.0, 0) <= broken_by_suite
    assert attacked[0.1] == survivors  # the second opinion at ε itself
    curve = {p["eps"]: p["robust_accuracy"] for p in ev.eps_curve}
    assert curve[0.0] == pytest.approx(ev.clean_accuracy)
    assert curve[0.05] >= curve[0.1] == ev.robust_accuracy


def test_eps_curve_always_holds_the_evaluated_eps(setup) -> None:
    model, data = setup
    ev = quick(model, data, eps_curve=[0.0, 0.05, 0.2])
    assert [p["eps"] for p in ev.eps_curve] == [0.0, 0.05, 0.1, 0.2]
    assert ev.eps_curve[2]["robust_accuracy"] == ev.robust_accuracy


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

    fast = suite("fast")  # a scale-invariant loss in every suite: CE alone is fooled by saturated logits
    assert fast.labels == ("apgd_ce", "apgd_margin") and [a.loss for a in fast.attacks] == ["ce", "margin"]
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
    assert ev.suite == "fast" and ev.sources[:2] == ["apgd_ce", "apgd_margin"]
    assert ev.robust_accuracy <= pgd.robust_accuracy + 1e-9
    # the fast suite has no black-box member: the check runs a short Square on the probe instead, and its
    # breaks count in the worst case
    bb = check(ev, "black_box_not_stronger")
    assert bb["passed"] is not None and "square (1000 queries" in bb["detail"]
    assert "survived apgd_ce, apgd_margin" in bb["detail"]
    suite_left = int(ev.robust[ev.sources[-2] if "check_probes" in ev.sources else ev.sources[-1]][:120].sum())
    assert f"of {suite_left} points that survived" in bb["detail"]
    probe = {row["name"]: row["broken"] for row in ev.attacks}.get("check_probes", 0)
    assert f"broke {probe} of" in bb["detail"]


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


# ----------------------------------------------------------------------------- every break counts
class _Saturated(nn.Module):
    """Logits × 1e4: softmax saturates in float32, so CE's input gradient vanishes and CE attacks are fooled."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e4


def test_every_break_counts_when_ce_attacks_are_fooled(setup) -> None:
    """The headline is the lowest figure any attack of the evaluation found: here the ε-curve's margin attack."""
    from sparring.attacks import APGD

    model, data = setup
    saturated = _Saturated(model)
    threat = LinfBall(eps=0.1)
    ev = evaluate(saturated, data, threat, suite=[PGD(steps=10)], eps_curve=[0.0, 0.05, 0.1, 0.2])
    # each attack alone, on every point
    alone = {
        "pgd_ce": PGD(steps=10)(saturated, data.x, data.y, threat, generator=torch.Generator().manual_seed(0)),
        "apgd_margin": APGD(loss="margin", steps=20)(saturated, data.x, data.y, threat,
                                                      generator=torch.Generator().manual_seed(0)),
    }
    lowest = min(float((r.robust & ev.clean_correct).float().mean()) for r in alone.values())
    ce_alone = float((alone["pgd_ce"].robust & ev.clean_correct).float().mean())
    assert ce_alone > 0.5 > lowest  # CE is fooled; the margin attack is not
    assert ev.robust_accuracy <= lowest + 1e-9
    curve = {p["eps"]: p["robust_accuracy"] for p in ev.eps_curve}
    assert curve[0.1] == ev.robust_accuracy
    assert [curve[e] for e in sorted(curve)] == sorted(curve.values(), reverse=True)
    rows = {row["name"]: row for row in ev.to_dict()["attacks"]}
    assert rows["eps_curve"]["source"] == "eps_curve" and rows["eps_curve"]["broken"] > 0
    assert ev.to_dict()["breaks_outside_suite"]["eps_curve"] == rows["eps_curve"]["broken"]
    found = ev.found_by()
    assert found.count("eps_curve") == rows["eps_curve"]["broken"]
    assert all(f is not None for f, r in zip(found, ev.worst_case.tolist(), strict=True) if not r)
    outside = check(ev, "breaks_outside_suite")
    assert outside["passed"] is False and "too weak" in outside["detail"]
    assert not ev.trustworthy
    # the report's example grid shows the input that broke the point, wherever it was found
    n = len(ev.examples["adv"])
    with torch.no_grad():
        fooled = saturated(ev.examples["adv"]).argmax(1) != ev.examples["labels"]
    assert torch.equal(fooled, ~ev.worst_case[:n])


def test_check_probe_breaks_count(setup) -> None:
    """The black-box check's own Square (suite without a black-box attack) breaks points: they are counted."""
    model, data = setup
    masked = _Quantized(model)
    ev = evaluate(masked, data, LinfBall(eps=0.1), suite=[PGD(steps=5)], eps_curve=[])
    rows = {row["name"]: row for row in ev.to_dict()["attacks"]}
    assert rows["check_probes"]["broken"] > 0
    pgd_only = float(ev.robust["pgd"].float().mean())
    assert ev.robust_accuracy == pytest.approx(pgd_only - rows["check_probes"]["broken"] / len(data))
    assert check(ev, "black_box_not_stronger")["passed"] is False


def test_a_rare_black_box_break_on_a_sound_model_passes_with_a_note() -> None:
    from sparring.checks import black_box_not_stronger

    rare = black_box_not_stronger(1, 249, "square", "apgd_ce, apgd_t", evaluated=451)  # the demo's PGD-AT model
    assert rare["passed"] is True and "1 of 249" in rare["detail"] and "under 1%" in rare["detail"]
    many = black_box_not_stronger(5, 249, "square", "apgd_ce, apgd_t", evaluated=451)
    assert many["passed"] is False and "5 of 249" in many["detail"] and "1.1% of the 451" in many["detail"]
    masked = black_box_not_stronger(1, 249, "square", "apgd_ce", evaluated=451, masking=["gradients_finite_nonzero"])
    assert masked["passed"] is False and "gradients_finite_nonzero" in masked["detail"]
