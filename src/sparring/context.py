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
