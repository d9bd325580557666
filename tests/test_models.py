"""Model layer: every registered model builds, maps a batch to (B, K) logits and passes gradients to the input."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from sparring.errors import ConfigError
from sparring.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MODELS,
    Normalize,
    WideResNet,
    available,
    build_model,
    with_normalization,
)

# Small inputs and settings keep every forward pass cheap on CPU; the full-size registered models are
# checked on CIFAR shapes by parameter count below.
SMALL: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((20,), {"hidden": (16,)}),
    "cnn1d": ((40,), {"width": 8}),
    "pointnet": ((32, 3), {"width": 16}),
    "dgcnn": ((32, 3), {"width": 16, "embed": 64, "k": 8}),
    "small_cnn": ((1, 8, 8), {}),
    "wide_resnet": ((3, 16, 16), {"depth": 10, "widen_factor": 1}),
}
DEFAULT_SMALL: tuple[tuple[int, ...], dict[str, Any]] = ((3, 8, 8), {})


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_architectures() -> None:
    names = available()
    assert {"mlp", "small_cnn", "preact_resnet18", "wide_resnet", "wrn28_10", "wrn34_10"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", available())
def test_every_model_gives_logits_and_input_gradients(name: str) -> None:
    torch.manual_seed(0)
    input_shape, settings = SMALL.get(name, DEFAULT_SMALL)
    model = build_model(name, input_shape=input_shape, num_classes=7, **settings)
    assert (type(model).__doc__ or "").strip(), f"{name} needs a docstring naming its architecture and paper"
    model.eval().requires_grad_(False)  # input gradients only: skips the weight gradients of 46M parameters
    x = torch.rand(2, *input_shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():  # eval mode: a sample's logits do not depend on its batch mates
        assert torch.allclose(model(x[:1]), logits[:1], atol=1e-5)


@pytest.mark.parametrize(
    ("name", "millions"),
    [("preact_resnet18", 11.17), ("wrn28_10", 36.48), ("wrn34_10", 46.16)],
)
def test_reference_parameter_counts(name: str, millions: float) -> None:
    model = build_model(name, input_shape=(3, 32, 32), num_classes=10)
    assert abs(_params(model) / 1e6 - millions) < 0.01


def test_wide_resnet_generic_matches_registered() -> None:
    generic = WideResNet(input_shape=(3, 32, 32), num_classes=10, depth=16, widen_factor=2)
    assert _params(generic) == _params(
        build_model("wide_resnet", input_shape=(3, 32, 32), num_classes=10, depth=16, widen_factor=2)
    )
    assert generic(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        WideResNet(input_shape=(3, 32, 32), num_classes=10, depth=27)


def test_small_cnn_sizes() -> None:
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32)]:
        model = build_model("small_cnn", input_shape=shape, num_classes=10)
        assert _params(model) <= 100_000
        assert model(torch.rand(3, *shape)).shape == (3, 10)
    bn = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10, batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())


def test_cnn1d_signals_and_channels() -> None:
    assert build_model("cnn1d", input_shape=(40,), num_classes=10)(torch.rand(3, 40)).shape == (3, 10)
    assert build_model("cnn1d", input_shape=(2, 37), num_classes=4)(torch.rand(3, 2, 37)).shape == (3, 4)
    with pytest.raises(ConfigError, match="signal input_shape"):
        build_model("cnn1d", input_shape=(1, 8, 8), num_classes=10)


def test_penultimate_features_of_every_architecture() -> None:
    from sparring.models import classifier_head, logits_and_features

    for name, (shape, settings) in {**SMALL, "preact_resnet18": ((3, 8, 8), {})}.items():
        model = build_model(name, input_shape=shape, num_classes=5, **settings).eval()
        x = torch.rand(2, *shape)
        logits, features = logits_and_features(model, x)
        head = classifier_head(model)
        assert features.shape == (2, head.in_features)
        torch.testing.assert_close(logits, head(features))
        torch.testing.assert_close(logits, model(x))


def test_mlp_any_shape_and_linear() -> None:
    assert build_model("mlp", input_shape=(1, 8, 8), num_classes=3)(torch.rand(4, 1, 8, 8)).shape == (4, 3)
    linear = build_model("mlp", input_shape=(5,), num_classes=2, hidden=())
    assert _params(linear) == 5 * 2 + 2


def test_build_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"\['colour', 'depthh'\]"):
        build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10, depthh=3, colour=1)
    with pytest.raises(ConfigError, match="unknown model 'resnet9'"):
        build_model("resnet9", input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        build_model("small_cnn", input_shape=(64,), num_classes=10)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("mlp", input_shape=(4,), num_classes=0)


def test_factories_are_keyword_only() -> None:
    for name in available():
        factory = MODELS.get(name)
        with pytest.raises(TypeError):
            factory((3, 32, 32), 10)


def test_normalize() -> None:
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), (x - mean) / std)
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    assert "mean" in norm.state_dict() and not list(norm.parameters())
    tabular = Normalize([1.0, 2.0], [2.0, 4.0])
    assert torch.allclose(tabular(torch.tensor([[3.0, 6.0]])), torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(Normalize(0.5, 0.5)(x), 2 * x - 1)  # one value for all channels
    for std_bad in ([0.2, 0.0, 0.2], [-1.0]):
        with pytest.raises(ConfigError, match="std must be > 0"):
            Normalize([0.5, 0.5, 0.5], std_bad)
    with pytest.raises(ConfigError, match="3 means but 2 stds"):
        Normalize([0.5, 0.5, 0.5], [0.2, 0.2])


def test_with_normalization_keeps_input_units() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=(3, 8, 8), num_classes=4)
    wrapped = with_normalization(model, CIFAR10_MEAN, CIFAR10_STD)
    assert isinstance(wrapped, nn.Sequential) and isinstance(wrapped[0], Normalize) and wrapped[1] is model
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(wrapped(x), model((x - mean) / std), atol=1e-6)


def test_parameter_names_follow_reference_code() -> None:
    # Checkpoints of the reference implementations (Wong et al.'s PreActResNet18, the Madry/TRADES
    # WideResNet) load with load_state_dict only if the names match.
    wrn = WideResNet(input_shape=(3, 32, 32), num_classes=10, depth=10, widen_factor=2).state_dict()
    for key in (
        "conv1.weight",
        "block1.layer.0.bn1.running_mean",
        "block1.layer.0.convShortcut.weight",
        "block3.layer.0.conv2.weight",
        "bn1.weight",
        "fc.bias",
    ):
        assert key in wrn, key
    preact = build_model("preact_resnet18", input_shape=(3, 32, 32), num_classes=10).state_dict()
    for key in (
        "conv1.weight",
        "layer1.0.bn1.weight",
        "layer2.0.shortcut.0.weight",
        "layer4.1.conv2.weight",
        "bn.running_var",
        "linear.weight",
    ):
        assert key in preact, key
