"""WARDEN-style DRO reweighting: the duals (KL, fixed-τ KL, χ², CVaR), their weights and gradients, the learned
temperature, and a short training run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import sparring.objectives as objectives
from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.objectives import DRO, PGDAT, Objective, ObjectiveOutput, Standard
from sparring.objectives.dro import chi2_dual, cvar, kl_dual
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

DIVERGENCES = ["kl", "kl_fixed", "chi2", "cvar"]


@dataclass(kw_only=True)
class FixedLosses(Objective):
    """Returns the given per-example losses whatever the batch (not registered)."""

    name = "fixed_losses_test"
    losses: Tensor

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: Any = None) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(loss=self.losses + 0 * logits.sum(), logits=logits)


def spread_losses(n: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g, dtype=dtype) * 3).square()


def linear_batch(n: int = 8) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(n, 5, generator=g) * 3, torch.randint(0, 3, (n,), generator=g)


# --------------------------------------------------------------------------- the duals
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_weights_are_a_distribution_and_returned_mean_is_the_dual_value(divergence: str) -> None:
    model, x, y = linear_batch()
    dro = DRO(base=Standard(), divergence=divergence, rho=0.1, temperature_lr=0.0)
    out = dro(model, x, y)
    value, weights, _ = dro.dual(cross_entropy(model(x), y).detach())
    assert out.loss.shape == (8,)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(out.loss.mean(), value)
    assert 0 <= float(out.metrics["dro_weight_entropy"]) <= math.log(8) + 1e-5
    assert 1 / 8 - 1e-6 <= float(out.metrics["dro_weight_max"]) <= 1
    assert float(out.metrics["dro_temperature"]) == pytest.approx(1.0)


def test_fixed_temperature_limits_are_mean_and_max() -> None:
    losses = spread_losses()
    hot, _, _ = kl_dual(losses, 1e5, 0.0)
    cold, _, _ = kl_dual(losses, 1e-4, 0.0)
    torch.testing.assert_close(hot, losses.mean(), rtol=0, atol=1e-4)
    torch.testing.assert_close(cold, losses.max(), rtol=0, atol=1e-3)
    # The objective reaches them too, and its log-mean-exp does not overflow at tiny τ.
    model, x, y = linear_batch()
    ce = cross_entropy(model(x), y).detach()
    cold_dro = DRO(base=Standard(), divergence="kl_fixed", temperature=1e-4)(model, x, y).loss.mean()
    hot_dro = DRO(base=Standard(), divergence="kl_fixed", temperature=1e5)(model, x, y).loss.mean()
    torch.testing.assert_close(cold_dro, ce.max(), rtol=0, atol=1e-3)
    torch.testing.assert_close(hot_dro, ce.mean(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 4.0])
@pytest.mark.parametrize("rho", [0.0, 0.1])
def test_kl_dual_upper_bounds_the_mean(temperature: float, rho: float) -> None:
    losses = spread_losses()
    value, _, _ = kl_dual(losses, temperature, rho)
    assert value >= losses.mean() - 1e-12


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 4.0])
def test_chi2_dual_lies_between_mean_and_max(temperature: float) -> None:
    losses, rho = spread_losses(), 0.1
    value, weights, _ = chi2_dual(losses, temperature, rho)
    assert value >= losses.mean() - 1e-12
    assert value <= losses.max() + temperature * rho + 1e-12  # the dual at ν = max ℓ
    # ν solved exactly: the first-order condition mean (1 + s/2)_+ = 1 holds, i.e. Σ w = 1.
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    # and no ν does better (the dual is convex in ν; scan a grid around the solution)
    b = losses.shape[0]
    for nu in torch.linspace(-2, 12, 141, dtype=torch.float64):
        s = (losses - nu) / temperature
        other = temperature * rho + nu + temperature * (((1 + s / 2).clamp_min(0)).square() - 1).sum() / b
        assert other >= value - 1e-9


def test_chi2_optimum_over_lambda_is_at_most_the_max_and_tends_to_the_mean() -> None:
    losses = spread_losses()
    lams = torch.logspace(-3, 3, 400, dtype=torch.float64)
    best = min(float(chi2_dual(losses, lam, 0.1)[0]) for lam in lams)
    assert float(losses.mean()) < best <= float(losses.max())
    lams = torch.logspace(-3, 6, 600, dtype=torch.float64)
    tiny = min(float(chi2_dual(losses, lam, 1e-8)[0]) for lam in lams)
    assert tiny == pytest.approx(float(losses.mean()), abs=1e-2)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
def test_cvar_is_the_mean_of_the_top_alpha_losses(alpha: float) -> None:
    losses = spread_losses(16)
    value, weights = cvar(losses, alpha)
    k = int(alpha * 16)
    torch.testing.assert_close(value, losses.topk(k).values.mean())
    assert int((weights > 0).sum()) == k


def test_cvar_fractional_rank_gets_a_fractional_weight() -> None:
    losses = torch.tensor([4.0, 1.0, 3.0, 2.0])
    value, weights = cvar(losses, 0.3)  # mass 1.2: all of 4.0 and a fifth of 3.0
    torch.testing.assert_close(weights, torch.tensor([1 / 1.2, 0.0, 0.2 / 1.2, 0.0]))
    torch.testing.assert_close(value, torch.tensor((4.0 + 0.2 * 3.0) / 1.2))


@pytest.mark.parametrize("dual", [kl_dual, chi2_dual])
@pytest.mark.parametrize("temperature", [0.2, 1.0, 3.0])
def test_temperature_gradient_matches_finite_differences(dual, temperature: float) -> None:
    losses, rho, h = spread_losses(), 0.1, 1e-6
    _, _, analytic = dual(losses, temperature, rho)
    up, _, _ = dual(losses, temperature + h, rho)  # χ²: ν re-solved at each λ, so this is the total derivative
    down, _, _ = dual(losses, temperature - h, rho)
    assert float(analytic) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5, abs=1e-8)


def test_two_point_dual_optimum_is_the_closed_form_worst_case() -> None:
    """P uniform on {a, b}: the worst Q in the KL ball is the exponential tilt (1 − q, q), KL(Q‖P) = ρ."""
    a, b, rho = 0.0, 1.0, 0.05

    def kl_to_uniform(q: float) -> float:
        return q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))

    lo, hi = 0.5, 1.0 - 1e-12  # KL increases on (1/2, 1): bisection for the boundary point
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl_to_uniform(mid) < rho else (lo, mid)
    q = (lo + hi) / 2
    primal = (1 - q) * a + q * b
    lam_star = (b - a) / math.log(q / (1 - q))  # the tilt q = sigmoid((b − a)/λ*)

    losses = torch.tensor([a, b], dtype=torch.float64)
    value, weights, d_lam = kl_dual(losses, lam_star, rho)
    assert float(value) == pytest.approx(primal, abs=1e-10)  # strong duality at λ*
    torch.testing.assert_close(weights, torch.tensor([1 - q, q], dtype=torch.float64))
    assert abs(float(d_lam)) < 1e-10  # λ* is stationary
    for lam in (0.5 * lam_star, 0.9 * lam_star, 1.1 * lam_star, 2 * lam_star):
        assert float(kl_dual(losses, lam, rho)[0]) > primal  # and the minimum

    # The objective's own temperature updates find λ* and the worst-case weights.
    dro = DRO(base=FixedLosses(losses=torch.tensor([a, b])), rho=rho, temperature_lr=2.0)
    model, x = nn.Linear(5, 3).train(), torch.zeros(2, 5)
    for _ in range(400):
        out = dro(model, x, torch.zeros(2, dtype=torch.long))
    assert float(dro.current_temperature()) == pytest.approx(lam_star, rel=1e-3)
    assert float(out.loss.detach().mean()) == pytest.approx(primal, abs=1e-5)
    assert float(out.metrics["dro_weight_max"]) == pytest.approx(q, abs=1e-4)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_model_gradient_is_the_weighted_sum_of_example_gradients(divergence: str) -> None:
    model, x, y = linear_batch()
    dro = DRO(base=Standard(), divergence=divergence, rho=0.1, temperature=0.7, alpha=0.25, temperature_lr=0.0)
    dro(model, x, y).loss.mean().backward()
    got = [p.grad.clone() for p in model.parameters()]

    losses = cross_entropy(model(x), y)
    _, weights, _ = dro.dual(losses.detach())
    expected = torch.autograd.grad((weights * losses).sum(), list(model.parameters()), retain_graph=True)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    if divergence in ("kl", "kl_fixed"):  # and it is the gradient of the dual value itself (λ held fixed)
        lam = 0.7
        rho = 0.1 if divergence == "kl" else 0.0
        value = lam * (rho + torch.logsumexp(losses / lam, 0) - math.log(len(y)))
        direct = torch.autograd.grad(value, list(model.parameters()))
        for g, e in zip(got, direct, strict=True):
            torch.testing.assert_close(g, e)


# --------------------------------------------------------------------------- the learned temperature
@pytest.mark.parametrize("divergence", ["kl", "chi2"])
def test_temperature_stays_positive_after_many_aggressive_updates(divergence: str) -> None:
    losses = torch.tensor([0.0, 0.0, 0.0, 50.0])  # ρ = 0: ∂L/∂λ < 0 always pushes λ down
    dro = DRO(base=FixedLosses(losses=losses), divergence=divergence, rho=0.0, temperature_lr=50.0)
    model, x, y = nn.Linear(5, 3).train(), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long)
    for _ in range(300):
        out = dro(model, x, y)
        assert torch.isfinite(out.loss).all()
    lam = float(dro.current_temperature())
    assert lam >= dro.min_temperature > 0
    assert math.isfinite(lam)


def test_temperature_moves_only_in_training_with_grad() -> None:
    base = FixedLosses(losses=torch.tensor([0.0, 0.5, 3.0, 1.0]))
    model, x, y = nn.Linear(5, 3), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long)
    dro = DRO(base=base, rho=0.01, temperature_lr=0.5)
    dro(model.eval(), x, y)
    with torch.no_grad():
        dro(model.train(), x, y)
    assert float(dro.current_temperature()) == pytest.approx(1.0)
    dro(model.train(), x, y)
    assert float(dro.current_temperature()) != pytest.approx(1.0)
    fixed = DRO(base=base, divergence="kl_fixed", temperature=2.0, temperature_lr=0.5)
    fixed(model.train(), x, y)
    assert float(fixed.current_temperature()) == pytest.approx(2.0)


def test_state_dict_round_trip_keeps_the_temperature() -> None:
    base = FixedLosses(losses=torch.tensor([0.0, 0.5, 3.0, 1.0]))
    model, x, y = nn.Linear(5, 3).train(), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long)
    dro = DRO(base=base, rho=0.01, temperature_lr=0.5)
    for _ in range(5):
        dro(model, x, y)
    restored = DRO(base=base, rho=0.01, temperature_lr=0.5)
    restored.load_state_dict(dro.state_dict())
    assert float(restored.current_temperature()) == float(dro.current_temperature()) != 1.0
    assert isinstance(dro.state_dict()["eta"], float)


# --------------------------------------------------------------------------- registry, config, training
def test_registered_with_defaults_and_describes_its_base() -> None:
    assert "dro" in objectives.available()
    dro = objectives.build("dro")
    assert isinstance(dro, DRO) and isinstance(dro.base, PGDAT)
    assert (dro.divergence, dro.rho, dro.temperature) == ("kl", 5e-4, 1.0)
    described = dro.describe()
    assert described["name"] == "dro"
    assert described["base"]["name"] == "pgd_at"
    assert described["current_temperature"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "settings",
    [{"divergence": "tv"}, {"rho": -1.0}, {"temperature": 0.0}, {"alpha": 0.0}, {"alpha": 1.5},
     {"temperature": 1e-4}],
)
def test_bad_settings_are_config_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DRO(**settings)


def test_short_training_run_on_digits(digits, single_thread) -> None:
    train_set, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    base = PGDAT(threat=LinfBall(eps=0.1))
    base.attack.steps = 2
    dro = DRO(base=base, rho=0.1, temperature_lr=0.05)
    config = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0, val_size=64,
                         val_attack_steps=2, progress=False)
    n = 512
    result = Trainer(model=model, objective=dro, train=(train_set.x[:n], train_set.y[:n]), config=config,
                     val_threat=LinfBall(eps=0.1)).fit()
    first, last = result.history[0], result.history[-1]
    for key in ("train_dro_weight_entropy", "train_dro_weight_max", "train_dro_temperature"):
        assert math.isfinite(last[key])
    assert 0 < last["train_dro_weight_entropy"] <= math.log(64)
    assert last["train_dro_mean_loss"] < first["train_dro_mean_loss"]
    assert last["train_loss"] >= last["train_dro_mean_loss"] - 1e-6  # the dual value bounds the mean
    assert float(dro.current_temperature()) != pytest.approx(1.0)


def test_dro_passes_the_epoch_hook_and_the_threat_through_to_its_base() -> None:
    from sparring.objectives import FastAT, threat_of

    class Recorder(FastAT):
        def on_epoch_end(self, model, *, epoch, holdout, generator=None):  # type: ignore[no-untyped-def]
            return {"seen_epoch": epoch}

    base = Recorder(threat=LinfBall(eps=0.1))
    dro = DRO(base=base)
    assert dro.on_epoch_end(torch.nn.Linear(2, 2), epoch=3, holdout=None) == {"seen_epoch": 3}
    assert threat_of(dro) is base.threat
