"""The restoring contexts: ``conv_layout`` runs convolutions channels-last and gives the caller back its tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparring.context import conv_layout


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(5))


def test_conv_layout_gives_the_same_outputs_and_gradients_and_restores_the_tensors() -> None:
    model = _cnn()
    x = torch.rand(6, 3, 9, 9, requires_grad=True)
    expected = model(x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    weights = [model[0].weight, model[2].weight]
    before = [w.data_ptr() for w in weights]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with conv_layout(model):
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        assert all(w.data_ptr() != d for w, d in zip(weights, before, strict=True))
        out = model(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
    assert all(w.data_ptr() == d for w, d in zip(weights, before, strict=True))  # the caller's own storage
    assert all(w.is_contiguous() for w in weights)
    assert optimizer.param_groups[0]["params"][0] is model[0].weight


def test_conv_layout_restores_on_error_and_passes_other_models_through() -> None:
    model = _cnn()
    before = model[0].weight.data_ptr()
    with pytest.raises(RuntimeError, match="inside"), conv_layout(model):
        raise RuntimeError("inside")
    assert model[0].weight.data_ptr() == before
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = mlp[1].weight.data_ptr()
    with conv_layout(mlp):
        assert mlp[1].weight.data_ptr() == data
    with conv_layout(model, enabled=False):
        assert model[0].weight.data_ptr() == before
