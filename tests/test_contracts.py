"""Contract tests: every registered attack and objective keeps the invariants of DESIGN.md.

A new component that is registered is tested here without anyone writing a test for it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import sparring.attacks as attacks
import sparring.objectives as objectives
from sparring.losses import cross_entropy
from sparring.threat import L2Ball, LinfBall, ThreatModel

B = 8


def small_model(seed: int = 0, *, batch_norm: bool = True, dropout: bool = True) -> nn.Module:
    """A CNN with BatchNorm and Dropout so that mode and buffer changes would show."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(8 * 8 * 8, 10))
    return nn.Sequential(*layers)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 10, (B,), generator=g)


def threats() -> list[ThreatModel]:
    per_sample = torch.linspace(0.0, 0.3, B)
    return [LinfBall(eps=0.1), L2Ball(eps=0.8), LinfBall(eps=per_sample), L2Ball(eps=per_sample * 4)]


THREAT_IDS = ["linf", "l2", "linf-per-sample", "l2-per-sample"]


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    for a, b in zip(before["grads"], after["grads"], strict=True):  # type: ignore[call-overload]
        assert (a is None and b is None) or torch.equal(a, b)
    for key, value in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(value, after["state"][key]), key  # type: ignore[index]


def prepared_model() -> nn.Module:
    """Train mode, one frozen parameter, existing .grad on another: the state an attack must keep."""
    model = small_model()
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.5)
    return model


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Smaller budgets for slow attacks: the invariants do not depend on them, and the defaults would take seconds.
QUICK_SETTINGS: dict[str, dict[str, object]] = {
    "square": {"queries": 100}, "apgd": {"steps": 10}, "apgd_t": {"steps": 10, "targets": 2},
}


def build_attack(name: str, **settings: object) -> attacks.Attack:
    return attacks.build(name, **{**QUICK_SETTINGS.get(name, {}), **settings})


@pytest.mark.parametrize("name", attacks.available())
class TestAttackContract:
    @pytest.mark.parametrize("threat", threats(), ids=THREAT_IDS)
    def test_model_unchanged(self, name: str, threat: ThreatModel) -> None:
        model = prepared_model()
        x, y = batch()
        before = snapshot(model)
        build_attack(name)(model, x, y, threat, generator=seeded())
        assert_same(before, snapshot(model))

    def test_model_unchanged_in_train_mode_attack(self, name: str) -> None:
        model = prepared_model()
        x, y = batch()
        before = snapshot(model)
        build_attack(name, train_mode=True)(model, x, y, LinfBall(eps=0.1), generator=seeded())
        assert_same(before, snapshot(model))  # BatchNorm running stats restored

    @pytest.mark.parametrize("threat", threats(), ids=THREAT_IDS)
    def test_inside_threat_set(self, name: str, threat: ThreatModel) -> None:
        x, y = batch()
        result = build_attack(name)(small_model(), x, y, threat, generator=seeded())
        assert result.x_adv.shape == x.shape
        assert threat.contains(result.x_adv, x).all()
        assert result.success.shape == (B,) and result.success.dtype == torch.bool
        assert result.loss.shape == (B,)

    @pytest.mark.parametrize("threat", [LinfBall(eps=0.0), L2Ball(eps=0.0)], ids=["linf", "l2"])
    def test_eps_zero_is_identity(self, name: str, threat: ThreatModel) -> None:
        x, y = batch()
        model = small_model()
        result = build_attack(name)(model, x, y, threat, generator=seeded())
        assert torch.equal(result.x_adv, x)
        model.eval()
        assert torch.equal(result.success, model(x).argmax(1) != y)

    def test_per_sample_zero_eps_rows_unchanged(self, name: str) -> None:
        x, y = batch()
        eps = torch.tensor([0.0, 0.2] * (B // 2))
        result = build_attack(name)(small_model(), x, y, LinfBall(eps=eps), generator=seeded())
        assert torch.equal(result.x_adv[eps == 0], x[eps == 0])
        assert (result.x_adv[eps > 0] - x[eps > 0]).abs().amax() > 0

    def test_batch_independence(self, name: str) -> None:
        x, y = batch(0)
        x_other, y_other = batch(1)
        x_mixed, y_mixed = x_other.clone(), y_other.clone()
        x_mixed[0], y_mixed[0] = x[0], y[0]
        attack = build_attack(name)
        a = attack(small_model(), x, y, LinfBall(eps=0.1), generator=seeded(3))
        b = attack(small_model(), x_mixed, y_mixed, LinfBall(eps=0.1), generator=seeded(3))
        torch.testing.assert_close(a.x_adv[0], b.x_adv[0])
        assert a.success[0] == b.success[0]

    def test_deterministic_under_seed(self, name: str) -> None:
        x, y = batch()
        attack = build_attack(name)
        a = attack(small_model(), x, y, L2Ball(eps=0.5), generator=seeded(7))
        b = attack(small_model(), x, y, L2Ball(eps=0.5), generator=seeded(7))
        assert torch.equal(a.x_adv, b.x_adv)

    def test_restores_model_on_error(self, name: str) -> None:
        model = prepared_model()
        before = snapshot(model)

        def failing_loss(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

        x, y = batch()
        with pytest.raises(RuntimeError, match="boom"):
            build_attack(name)(model, x, y, LinfBall(eps=0.1), loss_fn=failing_loss)
        assert_same(before, snapshot(model))


# A long-tailed training split handed to every objective's lifecycle hooks, as the Trainer does.
LT_COUNTS = [40, 30, 22, 16, 12, 9, 7, 5, 4, 3]


def built(name: str, model: nn.Module) -> objectives.Objective:
    """``name`` with defaults, after ``on_train_begin`` (2 epochs, the split above) and ``on_epoch_begin(1)``."""
    g = torch.Generator().manual_seed(99)
    y = torch.repeat_interleave(torch.arange(10), torch.tensor(LT_COUNTS))
    x = torch.rand(len(y), 1, 8, 8, generator=g)
    objective = objectives.build(name)
    objective.on_train_begin(model, class_counts=LT_COUNTS, epochs=2, train=(x, y))
    objective.on_epoch_begin(model, epoch=1)
    return objective


# MART's boosted loss is not CE at ε = 0 (it adds −log(1 − max_{k≠y} p_k)); its own tests check ε = 0.
ADVERSARIAL_OBJECTIVES = [n for n in objectives.available() if hasattr(objectives.build(n), "threat")
                          and getattr(objectives.OBJECTIVES.get(n), "reduces_to_clean_ce", True)]


@pytest.mark.parametrize("name", objectives.available())
class TestObjectiveContract:
    def test_per_example_differentiable_loss(self, name: str) -> None:
        model = small_model(dropout=False)
        model.train()
        x, y = batch()
        out = built(name, model)(model, x, y, generator=seeded())
        assert out.loss.shape == (B,)
        assert torch.isfinite(out.loss).all()
        assert out.logits.shape == (B, 10)
        out.loss.mean().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_model_mode_and_flags_kept(self, name: str) -> None:
        for training in (True, False):
            model = small_model()
            model.train(training)
            flags = [p.requires_grad for p in model.parameters()]
            built(name, model)(model, *batch(), generator=seeded())
            assert [m.training for m in model.modules()] == [training] * len(list(model.modules()))
            assert [p.requires_grad for p in model.parameters()] == flags

    def test_deterministic_under_seed(self, name: str) -> None:
        x, y = batch()
        model = small_model(batch_norm=False, dropout=False)
        a = built(name, model)(model, x, y, generator=seeded(5)).loss
        b = built(name, model)(model, x, y, generator=seeded(5)).loss
        assert torch.equal(a, b)

    def test_batch_independence(self, name: str) -> None:
        if getattr(objectives.OBJECTIVES.get(name), "batch_dependent", False):
            pytest.skip(f"{name} is batch-dependent by design (documented in its module); its own tests cover it")
        model = small_model(batch_norm=False, dropout=False)
        x, y = batch(0)
        x_mixed, y_mixed = batch(1)
        x_mixed[0], y_mixed[0] = x[0], y[0]
        a = built(name, model)(model, x, y, generator=seeded(2)).loss[0]
        b = built(name, model)(model, x_mixed, y_mixed, generator=seeded(2)).loss[0]
        torch.testing.assert_close(a, b)

@pytest.mark.parametrize("name", ADVERSARIAL_OBJECTIVES)
def test_eps_zero_objective_reduces_to_clean_cross_entropy(name: str) -> None:
    objective = objectives.build(name)
    objective = dataclasses.replace(objective, threat=objective.threat.with_eps(0.0))  # type: ignore[attr-defined]
    model = small_model(batch_norm=False, dropout=False)
    x, y = batch()
    torch.testing.assert_close(objective(model, x, y, generator=seeded()).loss, cross_entropy(model(x), y))


def test_registries_are_populated() -> None:
    assert {"fgsm", "fgsm_rs", "pgd"} <= set(attacks.available())
    assert {"standard", "pgd_at", "trades", "fgsm_rs"} <= set(objectives.available())
