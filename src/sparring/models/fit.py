"""Does this model fit this data? One forward pass on two inputs, before any long job starts.

``check_model_accepts(model, data)`` runs the model on the first two inputs (eval mode, no gradients,
state restored by :func:`sparring.context.frozen_model`) and turns what would be a traceback deep in an
attack into one :class:`~sparring.errors.DataError` line naming both shapes: the data's per-example shape
and, where the model's first layer tells, one it would accept. It also checks the output is logits
(B, K) with K at least the data's class count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparring.context import device_of, frozen_model
from sparring.data import Dataset
from sparring.errors import DataError, SparringError

PROBE = 2  # inputs run through the model: two, so batch-dim bugs (squeeze) show, yet cheap on any model


def check_model_accepts(
    model: nn.Module, data: Dataset | tuple[Tensor, Tensor], *, device: torch.device | str | None = None
) -> None:
    """Raise a one-line :class:`DataError` unless ``model`` maps ``data``'s inputs to (B, K ≥ classes) logits.

    Args:
        model: the classifier; its training mode, gradients and buffers are left as they were.
        data: a :class:`Dataset`, or ``(x, y)`` tensors (the class count is then ``max(y) + 1``).
        device: where to run the probe (default: the model's device).
    """
    if isinstance(data, Dataset):
        x, name, num_classes = data.x, data.name, data.num_classes
    else:
        x, y = data
        name = "the data"
        num_classes = int(y.max()) + 1 if y.numel() else 0
    if len(x) == 0:
        return
    shape = tuple(int(d) for d in x.shape[1:])
    device = torch.device(device) if device is not None else device_of(model)
    probe = x[:PROBE].to(device)
    try:
        with frozen_model(model), torch.no_grad():
            out = model(probe)
    except (SparringError, torch.cuda.OutOfMemoryError):
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        expects = expected_input_shape(model, shape)
        hint = f"it expects e.g. {expects}?" if expects is not None else "its input shape cannot be told"
        raise DataError(
            f"the model does not accept inputs of shape {shape} from {name} ({hint}: {_first_line(e)}); give data "
            "of the shape the model was built for, or a model built for this data"
        ) from None
    if not isinstance(out, Tensor):
        raise DataError(
            f"the model returns {type(out).__name__} on inputs of shape {shape} from {name}, not a logits tensor "
            "(B, K); wrap it to return the logits"
        )
    if out.dim() != 2 or out.shape[0] != len(probe) or out.shape[1] < num_classes:
        raise DataError(
            f"the model returns shape {tuple(out.shape)} for {len(probe)} inputs of shape {shape} but the data has "
            f"{num_classes} classes; it must return logits ({len(probe)}, K) with K >= {num_classes}"
        )


def expected_input_shape(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """A per-example input shape ``model``'s first layer would take instead of ``shape``, or None when its first
    layer does not tell (or would take ``shape`` itself: the mismatch is further in).

    A first Conv2d (Conv1d) with C input channels suggests (C, H, W) ((C, L)) with the data's H, W (L); a first
    Linear with D inputs suggests, for image data, a square image (C, S, S) with C·S² = D (C the data's
    channels, else 1 or 3), else (D,)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    guess: tuple[int, ...] | None = None
    if isinstance(first, nn.Conv2d) and len(shape) >= 2:
        guess = (int(first.in_channels), *shape[-2:])
    elif isinstance(first, nn.Conv1d) and len(shape) >= 1:
        guess = (int(first.in_channels), shape[-1])
    elif isinstance(first, nn.Linear) and int(first.in_features) > 0:  # a lazy one has 0 until its first call
        features = int(first.in_features)
        guess = (features,)
        for channels in dict.fromkeys(([shape[0]] if len(shape) == 3 else []) + [1, 3]):
            side = math.isqrt(features // channels)
            if len(shape) >= 2 and side > 1 and channels * side * side == features:
                guess = (channels, side, side)
                break
    if guess is None or guess == shape or (len(guess) == 1 and guess[0] == math.prod(shape)):
        return None
    return guess


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


__all__ = ["check_model_accepts", "expected_input_shape"]
