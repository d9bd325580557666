"""AWP: γ = 0 is the base, the layer-wise size and direction of v, exactness of the gradient at w + v against a
perturbed copy, the model left as it was, replay of the adversarial inputs, warm-up, nesting, a short run."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import sparring.objectives.awp as awp_module
from sparring.attacks import PGD
from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.objectives.awp import AWP
from sparring.objectives.dro import DRO
from sparring.objectives.free_at import FreeAT
from sparring.objectives.pgd_at import PGDAT
from sparring.objectives.standard import Standard
from sparring.objectives.trades import TRADES
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

B = 8
THREAT = LinfBall(eps=0.1)


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """Every test here on one intra-op thread."""


def cnn(*, dropout: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(4 * 8 * 8, 10))
    return nn.Sequential(*layers).train()


def batch(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 10, (B,), generator=g)


def seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pgd_at() -> PGDAT:
    return PGDAT(threat=THREAT, attack=PGD(steps=3, keep_best=False, score=False))


BASES = {
    "pgd_at": pgd_at,
    "trades": lambda: TRADES(threat=THREAT, steps=3),
    "dro_pgd_at": lambda: DRO(base=pgd_at(), rho=0.1, temperature_lr=0.1),
}


def grads_after_backward(model: nn.Module, loss: Tensor) -> list[Tensor]:
    model.zero_grad(set_to_none=True)
    loss.float().mean().backward()
    return [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


def spy_functional_call(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Tensor], tuple[Any, ...]]]:
    """Record the (shifted parameters, inputs) of every forward at w + v."""
    calls: list[tuple[dict[str, Tensor], tuple[Any, ...]]] = []
    real = awp_module.functional_call

    def spy(module: nn.Module, params: dict[str, Tensor], args: tuple[Any, ...], kwargs: Any = None) -> Any:
        calls.append(({n: p.detach().clone() for n, p in params.items()}, args))
        return real(module, params, args, kwargs)

    monkeypatch.setattr(awp_module, "functional_call", spy)
    return calls


# --------------------------------------------------------------------------- γ = 0, settings
@pytest.mark.parametrize("name", list(BASES))
def test_gamma_zero_reproduces_the_base_exactly(name: str) -> None:
    x, y = batch()
    plain, wrapped = cnn(dropout=True), cnn(dropout=True)  # dropout: the second pass must see the same masks
    base, base_for_awp = BASES[name](), BASES[name]()
    g_plain, g_awp = seeded(), seeded()
    torch.manual_seed(11)
    expected = base(plain, x, y, generator=g_plain)
    torch.manual_seed(11)
    got = AWP(base=base_for_awp, gamma=0.0)(wrapped, x, y, generator=g_awp)
    assert torch.equal(got.loss, expected.loss)
    assert torch.equal(got.logits, expected.logits)
    for a, b in zip(grads_after_backward(plain, expected.loss), grads_after_backward(wrapped, got.loss), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain.buffers(), wrapped.buffers(), strict=True):
        assert torch.equal(a, b)  # BatchNorm statistics updated once, as by the base
    assert torch.equal(g_plain.get_state(), g_awp.get_state())
    assert torch.equal(torch.rand(3, generator=g_plain), torch.rand(3, generator=g_awp))
    if name == "dro_pgd_at":  # the temperature stepped once, not twice
        assert torch.equal(base.current_temperature(), base_for_awp.current_temperature())  # type: ignore[attr-defined]


def test_bad_settings_are_config_errors() -> None:
    for settings in ({"gamma": -1e-3}, {"gamma": float("nan")}, {"warmup_epochs": -1}, {"base": FreeAT()}):
        with pytest.raises(ConfigError):
            AWP(**settings)  # type: ignore[arg-type]


def test_defaults_and_description() -> None:
    objective = AWP()
    assert isinstance(objective.base, PGDAT) and objective.gamma == 5e-3 and objective.warmup_epochs == 0
    described = objective.describe()
    assert described["name"] == "awp" and described["base"]["name"] == "pgd_at" and "_epoch" not in described


# --------------------------------------------------------------------------- the perturbation
def test_v_is_gamma_times_each_weight_norm_along_the_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_functional_call(monkeypatch)
    model, (x, y), gamma = cnn(), batch(), 0.01
    params = dict(model.named_parameters())
    out = AWP(base=Standard(), gamma=gamma)(model, x, y, generator=seeded())
    shifted, _ = calls[0]
    assert set(shifted) == {"0.weight", "4.weight"}  # conv and linear weights; no bias, no BatchNorm affine
    # The direction: the gradient of the base loss at w (a copy, so the real model's buffers are not touched).
    reference = copy.deepcopy(model)
    loss = cross_entropy(reference(x), y).mean()
    grads = dict(zip(shifted, torch.autograd.grad(loss, [dict(reference.named_parameters())[n] for n in shifted]),
                     strict=True))
    for n, w in shifted.items():
        v = w - params[n].detach()
        torch.testing.assert_close(v.norm() / params[n].norm(), torch.tensor(gamma))
        torch.testing.assert_close(v / v.norm(), grads[n] / grads[n].norm())
    torch.testing.assert_close(out.metrics["awp_relative_norm"], torch.tensor(gamma))


@pytest.mark.parametrize("base", [Standard, pgd_at])
def test_loss_rises_at_the_perturbed_weights(base: Any) -> None:
    model, (x, y) = cnn(), batch()
    gains = [float(AWP(base=base(), gamma=gamma)(model, x, y, generator=seeded()).metrics["awp_loss_gain"])
             for gamma in (1e-3, 1e-2)]
    assert 0 < gains[0] < gains[1]


def test_gradient_is_the_base_gradient_at_a_perturbed_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    model, (x, y), gamma = cnn(), batch(), 0.02
    before = copy.deepcopy(model)
    out = AWP(base=pgd_at(), gamma=gamma)(model, x, y, generator=seeded())
    got = grads_after_backward(model, out.loss)

    # Independently: x' at w, g = ∇ CE at w on x' (train mode, a throwaway copy), v_l = γ‖w_l‖ g_l/‖g_l‖ on weights.
    x_adv = pgd_at().attack(before, x, y, THREAT, generator=seeded()).x_adv
    ascent = copy.deepcopy(before)
    g = torch.autograd.grad(cross_entropy(ascent(x_adv), y).mean(), list(ascent.parameters()))
    perturbed = copy.deepcopy(before)
    with torch.no_grad():
        for p, gp in zip(perturbed.parameters(), g, strict=True):
            if p.dim() > 1:
                p += gamma * p.norm() * gp / gp.norm()
    expected_loss = cross_entropy(perturbed(x_adv), y)
    torch.testing.assert_close(out.loss, expected_loss)
    for a, b in zip(got, grads_after_backward(perturbed, expected_loss), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(model.buffers(), perturbed.buffers(), strict=True):  # BatchNorm updated once, at w + v
        torch.testing.assert_close(a, b)
    for a, b in zip(model.parameters(), before.parameters(), strict=True):
        assert torch.equal(a, b)  # the real weights were never moved


@pytest.mark.parametrize("training", [True, False])
def test_model_state_is_kept(training: bool) -> None:
    model, (x, y) = cnn(), batch()
    model.train(training)
    model[0].bias.requires_grad_(False)
    model[4].weight.grad = torch.full_like(model[4].weight, 0.5)
    before = copy.deepcopy(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    AWP(base=pgd_at(), gamma=0.01)(model, x, y, generator=seeded())
    assert [m.training for m in model.modules()] == [m.training for m in before.modules()]
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in before.parameters()]
    for a, b, grad in zip(model.parameters(), before.parameters(), grads, strict=True):
        assert torch.equal(a, b)
        assert (a.grad is None and grad is None) or torch.equal(a.grad, grad)  # type: ignore[arg-type]
    bn, bn_before = model[1], before[1]
    expected_count = int(bn_before.num_batches_tracked) + int(training)  # one update by the final pass, if any
    assert int(bn.num_batches_tracked) == expected_count
    if not training:
        assert torch.equal(bn.running_mean, bn_before.running_mean)


# --------------------------------------------------------------------------- replay of x'
def test_attack_runs_once_and_its_result_is_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_functional_call(monkeypatch)
    base = pgd_at()
    results: list[Tensor] = []
    real_run = PGD._run

    def counted(self: PGD, *args: Any) -> Any:
        result = real_run(self, *args)
        results.append(result.x_adv)
        return result

    monkeypatch.setattr(PGD, "_run", counted)
    model, (x, y) = cnn(), batch()
    AWP(base=base, gamma=0.01)(model, x, y, generator=seeded())
    assert len(results) == 1 and len(calls) == 1
    assert torch.equal(calls[0][1][0], results[0])  # the loss at w + v is taken on the x' found at w
    assert isinstance(base.attack, PGD)  # the stand-in is gone


def test_attack_without_a_field_is_rerun_at_w(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_functional_call(monkeypatch)
    base = TRADES(threat=THREAT, steps=3)
    found: list[Tensor] = []
    real = TRADES.maximize_kl

    def recorded(self: TRADES, *args: Any) -> Tensor:
        found.append(real(self, *args))
        return found[-1]

    monkeypatch.setattr(TRADES, "maximize_kl", recorded)
    model, (x, y) = cnn(), batch()
    AWP(base=base, gamma=0.01)(model, x, y, generator=seeded())
    assert len(found) == 2 and torch.equal(found[0], found[1])  # same weights w, same randomness
    assert len(calls) == 2  # TRADES's clean and adversarial forwards at w + v
    assert torch.equal(calls[0][1][0], x) and torch.equal(calls[1][1][0], found[0])


# --------------------------------------------------------------------------- when it is off
def test_warmup_evaluation_and_no_grad_are_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_functional_call(monkeypatch)
    model, (x, y) = cnn(), batch()
    objective = AWP(base=pgd_at(), gamma=0.01, warmup_epochs=2)
    assert objective.on_epoch_begin(model, epoch=1)["awp_active"] == 0.0
    base_loss = pgd_at()(copy.deepcopy(model), x, y, generator=seeded()).loss
    assert torch.equal(objective(model, x, y, generator=seeded()).loss, base_loss)
    assert not calls
    assert objective.on_epoch_begin(model, epoch=2)["awp_active"] == 1.0
    with torch.no_grad():
        objective(model, x, y, generator=seeded())
    objective(model.eval(), x, y, generator=seeded())
    assert not calls
    model.train()
    out = objective(model, x, y, generator=seeded())
    assert calls and "awp_loss_gain" in out.metrics


# --------------------------------------------------------------------------- bases, determinism, training
@pytest.mark.parametrize("name", list(BASES))
def test_wraps_each_base(name: str) -> None:
    model, (x, y) = cnn(), batch()
    a = AWP(base=BASES[name](), gamma=0.01)(model, x, y, generator=seeded(5))
    b = AWP(base=BASES[name](), gamma=0.01)(cnn(), x, y, generator=seeded(5))
    assert a.loss.shape == (B,) and a.logits.shape == (B, 10) and torch.isfinite(a.loss).all()
    assert torch.equal(a.loss, b.loss)  # deterministic under a generator
    assert float(a.metrics["awp_loss_gain"]) > 0
    grads = grads_after_backward(model, a.loss)
    assert all(torch.isfinite(gp).all() for gp in grads)
    assert all(gp.abs().sum() > 0 for gp in grads)


def test_short_training_run_on_digits(digits: Any) -> None:
    train_set, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    base = PGDAT(threat=LinfBall(eps=0.1), attack=PGD(steps=2, keep_best=False, score=False))
    objective = AWP(base=base, gamma=0.01)
    config = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0, val_size=64,
                         val_attack_steps=2, progress=False)
    n = 512
    result = Trainer(model=model, objective=objective, train=(train_set.x[:n], train_set.y[:n]), config=config,
                     val_threat=LinfBall(eps=0.1)).fit()
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_awp_relative_norm"] == pytest.approx(0.01, rel=1e-4)
    assert math.isfinite(last["train_awp_loss_gain"]) and last["train_awp_loss_gain"] > 0
