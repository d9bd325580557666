"""Input stages of the point models: outlier removal, random resampling, intrinsic features (adaptive or not)."""

from __future__ import annotations

import pytest
import torch

from sparring.errors import ConfigError
from sparring.models import build_model
from sparring.points import (
    IntrinsicFeatures,
    OutlierRemoval,
    RandomResampling,
    features_detached,
    fill_removed,
    procedural_shapes,
)
from sparring.points.defences import make_defence

N = 64


@pytest.fixture(scope="module")
def clouds() -> torch.Tensor:
    return procedural_shapes(n_per_class=2, num_points=N, seed=1, classes=["sphere", "torus"]).x


def test_fill_removed_copies_the_nearest_kept_point():
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0.9, 0, 0], [5, 5, 5]]])
    keep = torch.tensor([[True, True, False, True]])
    out = fill_removed(points, keep)
    assert torch.equal(out[0, 2], points[0, 1])  # 0.9 -> its nearest kept neighbour at 1
    assert torch.equal(out[:, [0, 1, 3]], points[:, [0, 1, 3]])


def test_outlier_removal_drops_a_far_point_and_keeps_a_clean_cloud(clouds):
    sor = OutlierRemoval()
    outlier = clouds.clone()
    outlier[0, 0] = torch.tensor([3.0, 3.0, 3.0])
    keep = sor.keep_mask(outlier)
    assert not keep[0, 0]
    cleaned = sor(outlier)
    assert cleaned[0].norm(dim=-1).max() <= 1.0 + 1e-6  # the outlier became a copy of a surface point
    assert keep.float().mean() > 0.8  # SOR (alpha 1.1) removes the tail, not the shape


def test_random_resampling_removes_its_fraction_reproducibly(clouds):
    srs = RandomResampling(fraction=0.25, seed=0)
    a = srs(clouds)
    changed = (a != clouds).any(-1).sum(1)
    assert (changed <= N // 4).all() and (changed > 0).all()
    assert not torch.equal(a, srs(clouds))  # a fresh draw on every call: a randomized defence
    assert torch.equal(a, RandomResampling(fraction=0.25, seed=0)(clouds))


def test_make_defence_names():
    assert isinstance(make_defence("sor"), OutlierRemoval)
    with pytest.raises(ConfigError, match="unknown point-cloud defence"):
        make_defence("dup-net")
    with pytest.raises(ConfigError, match="random resampling"):
        RandomResampling(fraction=1.0)


def test_intrinsic_features_are_differentiable_unless_detached(clouds):
    stage = IntrinsicFeatures()
    x = clouds.clone().requires_grad_(True)
    out = stage(x)
    assert out.shape == (len(clouds), N, 3 + stage.features)
    assert torch.equal(out[..., :3], x)
    (grad,) = torch.autograd.grad(out[..., 3:].sum(), x)
    assert grad.abs().sum() > 0
    with features_detached(stage):
        detached = stage(x)
        (none,) = torch.autograd.grad(detached[..., 3:].sum(), x)
        assert torch.equal(none, torch.zeros_like(x))
    torch.testing.assert_close(detached, out)
    assert stage.detach is False  # restored


def test_small_clouds_shrink_the_neighbourhoods():
    tiny = torch.randn(2, 10, 3)
    assert IntrinsicFeatures()(tiny).shape == (2, 10, 9)


@pytest.mark.parametrize("arch", ["pointnet", "dgcnn"])
def test_models_with_intrinsic_features_and_defences(arch, clouds):
    model = build_model(arch, input_shape=(N, 3), num_classes=2, width=8, intrinsic=True, defence="sor").eval()
    x = clouds.clone().requires_grad_(True)
    (adaptive,) = torch.autograd.grad(model(x).sum(), x)
    with features_detached(model):
        (masked,) = torch.autograd.grad(model(x).sum(), x)
    assert adaptive.abs().sum() > 0 and not torch.allclose(adaptive, masked)
    with pytest.raises(ConfigError, match="xyz clouds"):
        build_model(arch, input_shape=(N, 4), num_classes=2, intrinsic=True)
    with pytest.raises(ConfigError, match="defence"):
        build_model(arch, input_shape=(N, 3), num_classes=2, defence="magic")


def test_defended_model_loads_the_plain_weights(clouds):
    torch.manual_seed(0)
    plain = build_model("pointnet", input_shape=(N, 3), num_classes=2, width=8).eval()
    defended = build_model("pointnet", input_shape=(N, 3), num_classes=2, width=8, defence="sor").eval()
    assert defended.state_dict().keys() == plain.state_dict().keys()  # the defence has no parameters
    defended.load_state_dict(plain.state_dict())
    far = clouds.clone()
    far[:, 0] = 5.0  # an outlier the defence removes before the network sees it
    with torch.no_grad():
        torch.testing.assert_close(defended(far), plain(fill_removed(far, OutlierRemoval().keep_mask(far))))
