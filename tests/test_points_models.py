"""Point-cloud models: shapes, order invariance, input gradients, features, a training sanity check, errors.

Parameter counts (K = 40, C = 3): PointNet 813,288 (``input_transform=True``: 1,614,385); DGCNN 430,504.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import sparring.points.models  # noqa: F401  (registers "pointnet" and "dgcnn")
from sparring.errors import ConfigError
from sparring.models import build_model, logits_and_features
from sparring.points.models import DGCNN, EdgeConv, PointNet, _gather, knn

# Narrow variants keep every test cheap on one core; the full-size defaults are only counted.
SMALL: dict[str, dict[str, Any]] = {"pointnet": {"width": 16}, "dgcnn": {"width": 16, "embed": 64, "k": 8}}
NAMES = sorted(SMALL)


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """Tiny models are fastest single-threaded."""


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _model(name: str, channels: int = 3, num_classes: int = 5, **extra: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, input_shape=(32, channels), num_classes=num_classes, **{**SMALL[name], **extra})


def test_registry_builds_both_models_with_paper_sized_defaults() -> None:
    pointnet = build_model("pointnet", input_shape=(64, 3), num_classes=5)
    dgcnn = build_model("dgcnn", input_shape=(64, 3), num_classes=5)
    assert isinstance(pointnet, PointNet) and isinstance(dgcnn, DGCNN)
    assert 0.7e6 < _params(pointnet) < 0.9e6  # the paper's 64-64-128-1024 / 512-256 stack
    assert 0.3e6 < _params(dgcnn) < 0.5e6
    assert _params(build_model("pointnet", input_shape=(64, 3), num_classes=5, input_transform=True)) > 1.5e6
    assert isinstance(pointnet.head, nn.Linear) and isinstance(dgcnn.head, nn.Linear)


@pytest.mark.parametrize("channels", [3, 7])
@pytest.mark.parametrize("name", NAMES)
def test_logits_shape_and_any_number_of_points(name: str, channels: int) -> None:
    model = _model(name, channels).eval()
    with torch.no_grad():
        for n in (32, 20):  # N differs from input_shape's: the models pool over points
            logits = model(torch.randn(3, n, channels))
            assert logits.shape == (3, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("extra", [{}, {"input_transform": True}, {"batch_norm": False}])
def test_pointnet_options_run(extra: dict[str, Any]) -> None:
    model = _model("pointnet", 4, **extra)
    model.train()(torch.randn(4, 16, 4)).sum().backward()  # train mode: batch statistics, dropout


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_invariant_to_the_order_of_the_points(name: str) -> None:
    model = _model(name, 5).eval()
    x = torch.randn(4, 32, 5)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), model(x[:, perm]), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_input_gradients_reach_the_coordinates(name: str) -> None:
    model = _model(name, 4).eval().requires_grad_(False)
    x = torch.randn(2, 32, 4, requires_grad=True)
    model(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[..., :3].abs().sum() > 0  # the coordinates, which attacks perturb


@pytest.mark.parametrize("name", NAMES)
def test_features_are_the_heads_input(name: str) -> None:
    model = _model(name).eval()
    x = torch.randn(3, 32, 3)
    logits, features = logits_and_features(model, x)
    assert features.shape == (3, model.head.in_features) == (3, 256)
    assert torch.allclose(model.head(features), logits, atol=1e-6)


def test_edgeconv_eval_shortcut_matches_the_edge_formula() -> None:
    """In eval mode the max over neighbours is taken before BatchNorm; values and gradients must not change."""
    torch.manual_seed(0)
    layer = EdgeConv(6, 8, k=5, batch_norm=True)
    with torch.no_grad():  # negative scales exercise the max -> min flip
        layer.norm.bn.weight.copy_(torch.randn(8))
        layer.norm.bn.running_mean.copy_(torch.randn(8))
        layer.norm.bn.running_var.copy_(torch.rand(8) + 0.5)
    layer.eval()
    x = torch.randn(2, 20, 6, requires_grad=True)

    centre, neighbour = layer.proj(x).split(8, dim=-1)
    edges = centre.unsqueeze(2) + _gather(neighbour, knn(x, 5))
    reference = layer.act(layer.norm(edges)).amax(dim=2)
    (grad_ref,) = torch.autograd.grad(reference.square().sum(), x)

    out = layer(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.allclose(out, reference, atol=1e-5) and torch.allclose(grad, grad_ref, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(layer(x), reference, atol=1e-5)


def test_knn_includes_the_point_itself_and_clamps_to_n() -> None:
    x = torch.randn(2, 6, 3)
    idx = knn(x, 4)
    assert idx.shape == (2, 6, 4) and (idx[..., 0] == torch.arange(6)).all()
    assert knn(x, 10).shape == (2, 6, 6)


def _spheres_and_cubes(n_each: int = 40, points: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on the unit sphere (class 0) vs on the surface of the cube [-1, 1]^3 scaled to the same mean radius."""
    g = torch.Generator().manual_seed(0)
    sphere = torch.randn(n_each, points, 3, generator=g)
    sphere = sphere / sphere.norm(dim=-1, keepdim=True)
    cube = torch.rand(n_each, points, 3, generator=g) * 2 - 1
    face = torch.randint(0, 3, (n_each, points, 1), generator=g)
    side = torch.randint(0, 2, (n_each, points, 1), generator=g).float() * 2 - 1
    cube = torch.where(torch.arange(3) == face, side, cube)  # push one coordinate onto a face
    cube = cube / cube.norm(dim=-1).mean()
    return torch.cat([sphere, cube]), torch.cat([torch.zeros(n_each), torch.ones(n_each)]).long()


@pytest.mark.parametrize("name", NAMES)
def test_learns_spheres_versus_cubes(name: str) -> None:
    x, y = _spheres_and_cubes()
    model = _model(name, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # 30 steps leave BatchNorm's running averages stale: recompute them on the data
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: one pass gives the exact statistics
        model(x)
        model.eval()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert math.isfinite(loss.item()) and accuracy > 0.9


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("pointnet", {"input_shape": (3, 8, 8)}),
        ("pointnet", {"input_shape": (64, 2)}),
        ("pointnet", {"input_shape": (64,)}),
        ("pointnet", {"width": 0}),
        ("pointnet", {"dropout": 1.0}),
        ("pointnet", {"batch_norm": "yes"}),
        ("pointnet", {"input_transform": 1}),
        ("pointnet", {"num_classes": 0}),
        ("dgcnn", {"k": 0}),
        ("dgcnn", {"k": 65}),
        ("dgcnn", {"embed": 2.5}),
        ("dgcnn", {"input_shape": (64, 1)}),
        ("dgcnn", {"unknown": 1}),
    ],
)
def test_bad_settings_raise_config_error(name: str, kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"input_shape": (64, 3), "num_classes": 5, **kwargs}
    with pytest.raises(ConfigError):
        build_model(name, **settings)


def test_point_clouds_go_through_the_core_attack_and_trainer() -> None:
    """Shapes from ``load_data("shapes")``, a PointNet, PGD-AT on coordinates (no box: bounds None)."""
    from sparring.attacks import PGD
    from sparring.data import load_data
    from sparring.objectives import PGDAT
    from sparring.threat import LinfBall
    from sparring.train import TrainConfig, Trainer

    train, test = load_data("shapes")
    assert train.x.shape[1:] == (256, 3) and train.num_classes >= 10
    torch.manual_seed(0)
    model = build_model("pointnet", input_shape=train.input_shape, num_classes=train.num_classes, width=16)
    threat = LinfBall(eps=0.02, bounds=None)
    objective = PGDAT(threat=threat, attack=PGD(steps=2, keep_best=False, score=False))
    Trainer(model=model, objective=objective, train=(train.x[:64], train.y[:64]),
            config=TrainConfig(epochs=1, batch_size=32, progress=False)).fit()
    result = PGD(steps=3)(model.eval(), test.x[:16], test.y[:16], threat)
    assert threat.contains(result.x_adv, test.x[:16]).all()
    assert (result.x_adv - test.x[:16]).abs().amax() > 0.01  # coordinates moved, unclipped by any box
