"""The one restoring context every attack runs in.

``frozen_model(model)`` puts the model in the state an attack wants (eval mode, parameters without
``requires_grad`` so no weight gradients are built) and, on exit, restores exactly what the caller had:
each module's training flag, each parameter's ``requires_grad`` and ``.grad``, and every buffer
(BatchNorm running statistics and ``num_batches_tracked``), even when the attack ran the model in train
mode or raised. Attacks never restore state ad hoc; they enter this context.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen_model(model: nn.Module, *, train_mode: bool = False) -> Iterator[nn.Module]:
    """Run an attack on ``model`` without leaving any trace on it.

    Args:
        model: the caller's model.
        train_mode: run the attack with the model in training mode (BatchNorm using batch statistics);
            buffers it updates are restored on exit. Default: eval mode, the usual choice.
    """
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    # only buffers that changed inside are copied back, so a graph built inside (a detector's soft score,
    # backpropagated after the call) keeps valid saved tensors; compared by value, since BatchNorm's kernel updates
    # its running statistics without bumping their version counters
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.train(train_mode)
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for p, flag, grad in zip(params, requires_grad, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        with torch.no_grad():
            for buffer, saved in buffers:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def conv_layout(model: nn.Module, *, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` with its 2-D convolution weights in channels-last layout; restore the caller's tensors on exit.

    Values are unchanged (only the strides differ), but oneDNN's and cuDNN's channels-last kernels are faster: on
    the digits CNN on one CPU core a forward pass takes about 0.7x and a forward-backward about 0.8x the time. The
    inputs may stay contiguous (the kernels follow the weights' layout). On exit every converted parameter gets
    back its original tensor object, so nothing the caller holds (an optimizer's state, a reference) changes.
    A model without ``nn.Conv2d`` layers, or ``enabled=False``, passes through untouched.
    """
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    if enabled:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (isinstance(module, nn.Conv2d) and isinstance(weight, nn.Parameter) and weight.dim() == 4
                    and not weight.is_contiguous(memory_format=torch.channels_last)):
                saved.append((weight, weight.data))
    try:
        for weight, data in saved:
            weight.data = data.contiguous(memory_format=torch.channels_last)
        yield model
    finally:
        for weight, data in saved:
            weight.data = data
