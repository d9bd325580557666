"""MAPR (methods.md §6.2): CE on the feature-augmented cloud plus a consistency term under intrinsic perturbations."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from sparring.errors import ConfigError, DataError
from sparring.losses import cross_entropy
from sparring.models import build_model
from sparring.objectives import build
from sparring.points import procedural_shapes
from sparring.points.mapr import MAPR
from sparring.train import TrainConfig, Trainer

N = 64


@pytest.fixture(scope="module")
def shapes() -> tuple[torch.Tensor, torch.Tensor]:
    data = procedural_shapes(n_per_class=6, num_points=N, seed=3, classes=["sphere", "cube", "cylinder", "plane"])
    return data.x, data.y


def pointnet(*, intrinsic: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("pointnet", input_shape=(N, 3), num_classes=4, width=8, dropout=0.0, intrinsic=intrinsic)


def test_loss_is_ce_plus_mu_times_the_divergence(shapes):
    x, y = shapes
    model = pointnet().eval()
    objective = MAPR(mu=2.0)
    out = objective(model, x, y, generator=torch.Generator().manual_seed(0))
    moved = objective.perturb(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = cross_entropy(model(x), y) + 2.0 * objective.consistency(model(x), model(moved))
    assert out.loss.shape == (len(y),)
    torch.testing.assert_close(out.loss.detach(), expected)


def test_mu_zero_and_identity_perturbation_give_plain_ce(shapes):
    x, y = shapes
    model = pointnet().eval()
    with torch.no_grad():
        ce = cross_entropy(model(x), y)
    torch.testing.assert_close(MAPR(mu=0.0)(model, x, y).loss.detach(), ce)
    identity = MAPR(jitter=0.0, keep=1.0, max_angle=0.0, scale=(1.0, 1.0))
    torch.testing.assert_close(identity.perturb(x, None), x)
    torch.testing.assert_close(identity(model, x, y).loss.detach(), ce, atol=1e-6, rtol=0)


def test_perturbation_preserves_geometry_and_resamples(shapes):
    x, _ = shapes
    objective = MAPR(jitter=0.2, keep=0.75, max_angle=0.1, scale=(1.0, 1.0))
    moved = objective.perturb(x, torch.Generator().manual_seed(1))
    assert moved.shape == (len(x), round(0.75 * N), 3)
    # A rotation about the origin and a tangent slide keep each cloud's radius profile: the mean norm barely moves.
    before, after = x.norm(dim=-1).mean(1), moved.norm(dim=-1).mean(1)
    assert (after - before).abs().max() < 0.05
    again = objective.perturb(x, torch.Generator().manual_seed(1))
    assert torch.equal(moved, again)


def test_kl_and_js_divergences():
    clean, other = torch.randn(5, 4), torch.randn(5, 4)
    kl = MAPR(divergence="kl").consistency(clean, other)
    js = MAPR(divergence="js").consistency(clean, other)
    assert (kl >= 0).all() and (js >= 0).all() and (js <= math.log(2) + 1e-6).all()
    torch.testing.assert_close(MAPR(divergence="js").consistency(clean, clean), torch.zeros(5), atol=1e-6, rtol=0)
    hot = MAPR(temperature=4.0).consistency(clean, other)
    assert (hot < kl).all()  # a higher temperature flattens both distributions


def test_detach_clean_stops_the_consistency_gradient_through_the_clean_branch():
    clean = torch.randn(3, 4, requires_grad=True)
    other = torch.randn(3, 4, requires_grad=True)
    MAPR(detach_clean=True).consistency(clean, other).sum().backward()
    assert clean.grad is None and other.grad is not None
    MAPR().consistency(clean, other).sum().backward()
    assert clean.grad is not None and clean.grad.abs().sum() > 0


def test_training_lowers_the_loss(shapes):
    x, y = shapes
    model = pointnet()
    config = TrainConfig(epochs=6, batch_size=8, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="constant",
                         progress=False, val_size=8, val_attack_steps=1)
    history = Trainer(model=model, objective=build("mapr"), train=(x, y), config=config, num_classes=4).fit().history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_consistency"] > 0  # a trained model does tell the perturbed clouds apart a little


@pytest.mark.parametrize(
    "settings",
    [{"mu": -1.0}, {"temperature": 0.0}, {"keep": 0.0}, {"keep": 1.5}, {"scale": (1.2, 1.1)}, {"divergence": "l2"},
     {"jitter": -0.1}],
)
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError, match="mapr"):
        MAPR(**settings)


def test_wrong_inputs_are_data_errors():
    model = pointnet()
    with pytest.raises(DataError, match="point clouds"):
        MAPR()(model, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


def test_warns_once_when_the_model_has_no_intrinsic_features(shapes, caplog):
    x, y = shapes
    model = pointnet(intrinsic=False)
    objective = MAPR()
    with caplog.at_level(logging.WARNING, logger="sparring.points.mapr"):
        objective(model, x[:4], y[:4])
        objective(model, x[:4], y[:4])
    assert sum("intrinsic features" in r.message for r in caplog.records) == 1
