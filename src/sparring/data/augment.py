"""Batched, generator-driven augmentations on tensors (torchvision cannot be imported here).

Every function takes a whole batch and draws its randomness as (B, ...) tensors from an explicit
``torch.Generator`` in a fixed order, row ``i`` using row ``i`` of each draw; so a sample's augmentation
depends only on the generator state and its position, never on its batch mates, and one seed gives one
result. No per-sample Python loops: per-sample crops and shifts are ``torch.gather`` windows.

* :func:`random_crop` — images (B, C, H, W): pad by ``pad`` (zeros or reflection), then crop an H × W
  window at a per-sample offset in [0, 2·pad]² (torchvision's ``RandomCrop(H, padding=pad)``).
* :func:`random_flip` — horizontal flip of each sample with probability ``p`` (last dim).
* :func:`random_shift` — signals (B, L) or (B, C, L): shift by a per-sample s ∈ [−k, k], circularly
  (default: values are only permuted, so any box is kept) or with zero fill.
* :func:`gaussian_noise` — ``x + σ·N(0, I)`` clipped to the box, for flat tabular vectors.

:func:`make_augment` turns a spec string into a ``(x, generator) → x'`` callable. ``"auto"`` picks by the
per-sample ``input_shape``: (C, H, W) images get a crop with pad ``max(1, H // 8)`` (4 on 32 × 32 CIFAR, as
the usual ``crop+flip`` pipeline, 1 on 8 × 8 digits) and **no flip**, because digits and letters are not
flip-invariant (ask for ``"crop_flip"`` on natural images, as RAAT's CIFAR ``base`` augmentation does);
(C, L) signals (MNIST-1D stored as (1, L)) get a circular shift of up to ``max(1, L // 10)``; flat (D,)
vectors get Gaussian noise of σ = 0.03 (a flat MNIST-1D signal looks like a tabular vector: ask for
``"shift"`` explicitly).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from sparring.errors import ConfigError

Augment = Callable[[Tensor, torch.Generator | None], Tensor]

SPECS = ("auto", "none", "crop", "crop_reflect", "crop_flip", "flip", "shift", "shift_zero", "noise")
NOISE_STD = 0.03


def _window(padded: Tensor, start: Tensor, size: int, dim: int) -> Tensor:
    """Per-sample window ``padded[b, ..., start[b] : start[b] + size, ...]`` along ``dim``; ``start`` is (B,)."""
    shape = [1] * padded.dim()
    shape[0], shape[dim] = -1, size
    index = (start.view(-1, *([1] * (padded.dim() - 1))) + torch.arange(size, device=padded.device).view(shape))
    out_shape = list(padded.shape)
    out_shape[dim] = size
    return padded.gather(dim, index.expand(out_shape))


def _randint(high: int, n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """(n,) integers in [0, high) drawn on ``x``'s device."""
    return torch.randint(0, high, (n,), generator=generator, device=x.device)


def random_crop(
    x: Tensor, pad: int, generator: torch.Generator | None = None, *, mode: str = "zero"
) -> Tensor:
    """Pad images (B, C, H, W) by ``pad`` on each side and crop H × W at a per-sample random offset.

    ``mode``: ``"zero"`` (torchvision's default fill, stays in any box containing 0) or ``"reflect"``.
    Draws: row offsets (B,), then column offsets (B,).
    """
    if x.dim() != 4:
        raise ConfigError(f"random_crop needs images (B, C, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ConfigError(f"crop padding must be >= 0, got {pad}")
    if mode not in ("zero", "reflect"):
        raise ConfigError(f"crop padding mode must be 'zero' or 'reflect', got {mode!r}")
    n, _, h, w = x.shape
    dy, dx = _randint(2 * pad + 1, n, x, generator), _randint(2 * pad + 1, n, x, generator)
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant" if mode == "zero" else "reflect")
    return _window(_window(padded, dy, h, 2), dx, w, 3)


def random_flip(x: Tensor, generator: torch.Generator | None = None, *, p: float = 0.5) -> Tensor:
    """Reverse the last dim of each sample with probability ``p`` (horizontal flip for images). Draws (B,)."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def random_shift(
    x: Tensor, max_shift: int, generator: torch.Generator | None = None, *, circular: bool = True
) -> Tensor:
    """Shift signals (B, L) or (B, C, L) along the last dim by a per-sample s ∈ [−max_shift, max_shift].

    ``circular`` rolls (values wrap around); otherwise vacated positions are zero. Draws (B,).
    """
    if x.dim() not in (2, 3):
        raise ConfigError(f"random_shift needs signals (B, L) or (B, C, L), got shape {tuple(x.shape)}")
    if max_shift < 0:
        raise ConfigError(f"max_shift must be >= 0, got {max_shift}")
    length = x.shape[-1]
    offset = _randint(2 * max_shift + 1, x.shape[0], x, generator)  # window start in the padded signal
    if max_shift == 0:
        return x
    if circular:
        source = torch.arange(length, device=x.device) + (offset - max_shift)[:, None]  # (B, L)
        source = source.remainder(length).view(-1, *([1] * (x.dim() - 2)), length)
        return x.gather(-1, source.expand(x.shape))
    padded = F.pad(x, (max_shift, max_shift))
    return _window(padded, offset, length, x.dim() - 1)


def gaussian_noise(
    x: Tensor,
    std: float,
    generator: torch.Generator | None = None,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """``x + std · N(0, I)``, clipped to ``bounds`` (None: no box). Draws a tensor of ``x``'s shape."""
    if std < 0:
        raise ConfigError(f"noise std must be >= 0, got {std}")
    noisy = x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return noisy if bounds is None else noisy.clamp(*bounds)


def make_augment(
    spec: str, input_shape: tuple[int, ...], *, bounds: tuple[float, float] | None = (0.0, 1.0)
) -> Augment:
    """The augmentation named ``spec`` for samples of shape ``input_shape`` (no batch dim).

    Specs: ``"none"``; ``"crop"`` / ``"crop_reflect"`` (pad ``max(1, H // 8)``, zero / reflect fill);
    ``"crop_flip"`` (crop, then flip); ``"flip"``; ``"shift"`` / ``"shift_zero"`` (up to ``max(1, L // 10)``,
    circular / zero fill); ``"noise"`` (σ = 0.03, clipped to ``bounds``); ``"auto"`` (see the module doc).
    """
    if spec not in SPECS:
        raise ConfigError(f"unknown augmentation {spec!r}; available: {', '.join(SPECS)}")
    shape = tuple(int(d) for d in input_shape)
    if spec == "auto":
        spec = {3: "crop", 2: "shift"}.get(len(shape), "noise")
    if spec == "none":
        return lambda x, generator=None: x
    if spec in ("crop", "crop_reflect", "crop_flip"):
        if len(shape) != 3:
            raise ConfigError(f"augmentation {spec!r} needs images (C, H, W), got input shape {shape}")
        pad = max(1, shape[1] // 8)
        mode = "reflect" if spec == "crop_reflect" else "zero"
        if spec == "crop_flip":
            return lambda x, generator=None: random_flip(random_crop(x, pad, generator), generator)
        return lambda x, generator=None: random_crop(x, pad, generator, mode=mode)
    if spec == "flip":
        return lambda x, generator=None: random_flip(x, generator)
    if spec in ("shift", "shift_zero"):
        if len(shape) not in (1, 2):
            raise ConfigError(f"augmentation {spec!r} needs signals (L,) or (C, L), got input shape {shape}")
        k, circular = max(1, shape[-1] // 10), spec == "shift"
        return lambda x, generator=None: random_shift(x, k, generator, circular=circular)
    return lambda x, generator=None: gaussian_noise(x, NOISE_STD, generator, bounds=bounds)
