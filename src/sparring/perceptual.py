"""Perceptual metrics of a perturbation δ = x' − x: how far, and how visible, an adversarial input is.

Per example (``(N, ...)`` in, ``(N,)`` out), for every input:

* ``l0``: the number of changed **pixels** of an image (a pixel (h, w) changed when any of its channels moved by
  more than 1e-6 × the data range; sparse attacks count pixels, not colour values), or of changed **entries** of any
  other input (tabular rows, embeddings, point coordinates);
* ``l1``, ``l2``, ``linf``: the norms of δ over all its entries (the threat models' norms).

And for ``(N, 1|3, H, W)`` images with a known data range R (the threat's box ``hi − lo``):

* ``psnr``: 10·log10(R² / MSE) in dB, MSE over all entries; **capped at** :data:`PSNR_CAP_DB` = 100 dB, which is
  also the value of an unchanged input (a finite number keeps report.json plain JSON);
* ``ssim``: SSIM (Wang et al., IEEE TIP 2004): Gaussian window (σ = 1.5), K = (0.01, 0.03), the map over the *valid*
  region (no padding), averaged over positions and channels. The window is the standard 11 × 11 when it fits, else
  the largest odd size ≤ half the smaller side (3 × 3 on 8 × 8 digits; 11 × 11 on 32 × 32 CIFAR), the Gaussian
  truncated to it (:func:`ssim_window`);
* ``ms_ssim``: MS-SSIM (Wang, Simoncelli & Bovik 2003): contrast-structure terms at scales 1..S−1 and full SSIM at the
  coarsest scale S, each scale a 2 × 2 average-pool of the previous one, same window as ``ssim``. S is as many of the
  standard 5 scales as leave the coarsest image at least one window wide (:func:`ms_ssim_scales`: 2 on 8 × 8 and on
  32 × 32; 5 from 176 × 176), and the weights are the first S of the standard (0.0448, 0.2856, 0.3001, 0.2363,
  0.1333), renormalised to sum to 1. Negative terms are clipped at 0 (as torchmetrics' and pytorch-msssim's
  ``relu``) so fractional powers stay real. With fewer than 5 scales it is *not* the standard MS-SSIM: reports say so.
* ``lpips``: only when the caller gives a **local** TorchScript backbone (:func:`load_lpips_backbone`; nothing is ever
  downloaded): the LPIPS distance *without* the learned linear layers (Zhang et al., CVPR 2018, the "baseline"
  variant ``lpips=False`` of the ``lpips`` package): per layer, features unit-normalised along channels, squared
  difference summed over channels and averaged over positions, then **summed over layers** (as the package does).
  Optional per-layer channel weights turn it into the calibrated variant. The backbone sees the inputs as the model
  does: put any normalisation (LPIPS' [-1, 1] scaling) inside the TorchScript module.

Why SSIM is written here rather than taken from a library: neither candidate scores the small images sparring
evaluates. torchmetrics 1.9 (not a core dependency: it comes with the ``scale`` extra's Lightning) ignores
``kernel_size`` for its Gaussian window (the window follows σ: 11 × 11 at σ = 1.5), averages SSIM over a
reflection-padded image but crops only the contrast terms, so MS-SSIM at 8 × 8 fails (a 5-pixel pad on a 4 × 4
scale), and checks the scale budget with ``(len(betas) − 1)²`` rather than 2^(scales−1). pytorch-msssim asserts
``side > (window − 1) · 2⁴`` whatever number of weights it is given, so 32 × 32 and 8 × 8 cannot be scored without
its private helpers. Forty lines of convolutions give exactly the metric documented above, on any size, with no
new dependency. ``tests/test_perceptual.py`` checks them against hand-computed cases and SSIM window by window; on
a 40 × 40 image the SSIM equals torchmetrics' full SSIM map cropped to the valid region (to 1e-5).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError

PSNR_CAP_DB = 100.0  # PSNR of an unchanged input, and the most any input gets
CHANGED_TOL = 1e-6  # an entry changed when |δ| > CHANGED_TOL × data range (1 without a range)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # finest scale first
NORMS = ("l0", "l1", "l2", "linf")
IMAGE_METRICS = ("psnr", "ssim", "ms_ssim")
STATS = ("count", "mean", "median", "p10", "p25", "p75", "p90", "min", "max")


def is_image(point_shape: Sequence[int]) -> bool:
    """Whether points of this shape (without the batch dimension) are images: ``(1|3, H, W)``."""
    return len(point_shape) == 3 and int(point_shape[0]) in (1, 3)


def ssim_window(height: int, width: int) -> int:
    """The SSIM window side: 11 when it fits in half the smaller side, else the largest odd size that does (≥ 1)."""
    side = min(SSIM_WINDOW, min(height, width) // 2)
    return max(side - (1 - side % 2), 1)


def ms_ssim_scales(height: int, width: int, window: int | None = None) -> int:
    """How many of the 5 standard MS-SSIM scales fit: the coarsest image must be at least one window wide."""
    window = window or ssim_window(height, width)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(height, width) // 2**scales >= window:
        scales += 1
    return scales


def metric_names(point_shape: Sequence[int], *, data_range: float | None, lpips: bool = False) -> list[str]:
    """The metrics :func:`perturbation_metrics` gives for points of ``point_shape`` (without the batch dimension)."""
    names = list(NORMS)
    if is_image(point_shape):
        names += list(IMAGE_METRICS) if data_range is not None else []
        names += ["lpips"] if lpips else []
    return names


def settings(point_shape: Sequence[int], *, data_range: float | None, lpips: str | None = None) -> dict[str, Any]:
    """What exactly is computed for points of ``point_shape``: report.json's ``perceptual.settings``."""
    image = is_image(point_shape)
    out: dict[str, Any] = {"data_range": data_range, "l0": "pixels" if image else "entries",
                           "changed_tolerance": CHANGED_TOL, "psnr_cap_db": None, "ssim_window": None,
                           "ssim_sigma": None, "ms_ssim_scales": None, "ms_ssim_weights": None, "lpips_backbone": None}
    if image and data_range is not None:
        height, width = int(point_shape[-2]), int(point_shape[-1])
        window = ssim_window(height, width)
        scales = ms_ssim_scales(height, width, window)
        out.update(psnr_cap_db=PSNR_CAP_DB, ssim_window=window, ssim_sigma=SSIM_SIGMA, ms_ssim_scales=scales,
                   ms_ssim_weights=[round(w, 6) for w in _weights(scales).tolist()])
    if image and lpips is not None:
        out["lpips_backbone"] = lpips
    return out


def notes(point_shape: Sequence[int], *, data_range: float | None, lpips: str | None = None) -> list[str]:
    """One sentence per caveat of what is computed for points of ``point_shape`` (report.json ``perceptual.notes``)."""
    found = settings(point_shape, data_range=data_range, lpips=lpips)
    shape = "×".join(str(int(s)) for s in point_shape)
    if not is_image(point_shape):
        return [f"The inputs ({shape}) are not (N, 1|3, H, W) images: only the lp norms of the perturbation "
                "(l0 counts changed entries)."]
    out = ["l0 counts changed pixels (any channel moved by more than 1e-6 of the data range)."]
    if data_range is None:
        out.append("The threat model has no box bounds, so no data range: no PSNR, SSIM or MS-SSIM.")
    else:
        out.append(f"PSNR is capped at {PSNR_CAP_DB:g} dB (an unchanged input).")
        window, scales = found["ssim_window"], found["ms_ssim_scales"]
        if window < SSIM_WINDOW:
            out.append(f"SSIM uses a {window}×{window} Gaussian window (sigma 1.5, truncated): the standard "
                       f"{SSIM_WINDOW}×{SSIM_WINDOW} does not fit {shape} images.")
        if scales < len(MS_SSIM_WEIGHTS):
            out.append(f"MS-SSIM uses {scales} of the standard {len(MS_SSIM_WEIGHTS)} scales (weights renormalised): "
                       f"{shape} images are too small for more; it is not comparable with full-scale MS-SSIM.")
    if lpips is not None:
        out.append(f"LPIPS without learned linear weights (the baseline variant), backbone {lpips}.")
    return out


# ----------------------------------------------------------------------------- the metrics
def perturbation_metrics(
    clean: Tensor, adv: Tensor, *, data_range: float | None = 1.0, lpips_backbone: nn.Module | None = None,
    lpips_weights: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-example metrics of ``adv − clean`` (both ``(N, ...)``): name → ``(N,)`` float64 tensor on ``clean``'s
    device (SSIM's convolutions run in float32). The names are :func:`metric_names`': norms always; PSNR, SSIM and
    MS-SSIM for images with a ``data_range``; ``lpips`` for images when ``lpips_backbone`` is given."""
    if clean.shape != adv.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and adv {tuple(adv.shape)} differ in shape")
    image = is_image(clean.shape[1:])
    delta = (adv.detach().double() - clean.detach().double()).flatten(1)  # (N, D)
    changed = delta.abs() > CHANGED_TOL * (data_range or 1.0)
    if image:  # a pixel changed when any channel did: (N, C, H, W) → (N, H·W)
        changed = changed.view(clean.shape).any(dim=1).flatten(1)
    out = {
        "l0": changed.sum(1).double(),
        "l1": delta.abs().sum(1),
        "l2": delta.norm(dim=1),
        "linf": delta.abs().amax(1) if delta.shape[1] else delta.new_zeros(len(delta)),
    }
    if image and data_range is not None:
        out["psnr"] = psnr(clean, adv, data_range=data_range)
        out["ssim"] = ssim(clean, adv, data_range=data_range)
        out["ms_ssim"] = ms_ssim(clean, adv, data_range=data_range)
    if image and lpips_backbone is not None:
        out["lpips"] = lpips_distance(clean, adv, lpips_backbone, weights=lpips_weights).double()
    return out


def psnr(clean: Tensor, adv: Tensor, *, data_range: float = 1.0) -> Tensor:
    """(N,) PSNR in dB, 10·log10(R² / MSE), capped at :data:`PSNR_CAP_DB` (an unchanged input gets the cap)."""
    mse = (adv.detach().double() - clean.detach().double()).flatten(1).pow(2).mean(1)
    value = 10 * torch.log10(data_range**2 / mse)  # inf where mse = 0
    return value.clamp(max=PSNR_CAP_DB)


def ssim(clean: Tensor, adv: Tensor, *, data_range: float = 1.0, window: int | None = None) -> Tensor:
    """(N,) SSIM of ``(N, C, H, W)`` images over the valid region, averaged over channels (module docstring)."""
    window = window or ssim_window(*clean.shape[-2:])
    return _ssim_cs(clean.float(), adv.float(), _gaussian(window, clean.device), data_range)[0].double()


def ms_ssim(
    clean: Tensor, adv: Tensor, *, data_range: float = 1.0, window: int | None = None, scales: int | None = None
) -> Tensor:
    """(N,) MS-SSIM with as many of the standard scales as fit (module docstring); ``scales`` to force fewer."""
    height, width = clean.shape[-2:]
    window = window or ssim_window(height, width)
    scales = min(scales or len(MS_SSIM_WEIGHTS), ms_ssim_scales(height, width, window))
    weights = _weights(scales).to(clean.device)
    g = _gaussian(window, clean.device)
    x, y = clean.float(), adv.float()
    terms = []
    for scale in range(scales):
        full, cs = _ssim_cs(x, y, g, data_range)
        terms.append(full if scale == scales - 1 else cs)
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(terms).double().clamp(min=0)  # (S, N)
    return (stacked ** weights.view(-1, 1)).prod(0)


def _weights(scales: int) -> Tensor:
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    return weights / weights.sum()


def _gaussian(window: int, device: torch.device) -> Tensor:
    r = torch.arange(window, dtype=torch.float32, device=device) - (window - 1) / 2
    g = torch.exp(-r.pow(2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _ssim_cs(x: Tensor, y: Tensor, g: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """(N,) SSIM and (N,) contrast-structure term of ``(N, C, H, W)`` images, Gaussian ``g``, valid region."""
    n, c = x.shape[:2]
    k = g.numel()
    stack = torch.cat([x, y, x * x, y * y, x * y])  # (5N, C, H, W)
    stack = F.conv2d(stack, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    stack = F.conv2d(stack, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    mu_x, mu_y, xx, yy, xy = stack.split(n)
    var_x = (xx - mu_x**2).clamp(min=0)
    var_y = (yy - mu_y**2).clamp(min=0)
    cov = xy - mu_x * mu_y
    c1, c2 = (SSIM_K[0] * data_range) ** 2, (SSIM_K[1] * data_range) ** 2
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    full = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return full.flatten(1).mean(1), cs.flatten(1).mean(1)


# ----------------------------------------------------------------------------- LPIPS from local weights
def load_lpips_backbone(path: Path | str, *, device: torch.device | str | None = None) -> torch.jit.ScriptModule:
    """A TorchScript feature extractor from a local file (``torch.jit.load``; never a pickle, never a download):
    it maps ``(N, C, H, W)`` inputs to a list or tuple of feature maps ``(N, C_l, H_l, W_l)``.

    Raises:
        ConfigError: if the file is missing or is not a TorchScript module.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"LPIPS backbone {path} not found: LPIPS needs a local TorchScript file (nothing is "
                          "downloaded); leave it out to skip LPIPS")
    try:
        with warnings.catch_warnings():  # torch ≥ 2.10 deprecates TorchScript; the user chose the file's format
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"LPIPS backbone {path} is not a TorchScript module (torch.jit.save one): {err}") from err
    return module.eval()


def describe_backbone(path: Path | str) -> str:
    """``name (sha256 first 12)``: how reports and the resume fingerprint name a backbone file."""
    path = Path(path)
    return f"{path.name} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})"


def lpips_distance(clean: Tensor, adv: Tensor, backbone: nn.Module, *,
                   weights: Sequence[Tensor] | None = None) -> Tensor:
    """(N,) LPIPS without learned linear layers (module docstring); ``weights``: per layer, (C_l,) channel weights."""
    n = len(clean)
    with torch.no_grad():
        features = backbone(torch.cat([clean, adv]).float())
    layers = [features] if isinstance(features, Tensor) else list(features)
    if not layers or not all(isinstance(f, Tensor) and f.dim() >= 2 and len(f) == 2 * n for f in layers):
        raise ConfigError("the LPIPS backbone must return a list or tuple of (N, C, ...) feature maps")
    if weights is not None and len(weights) != len(layers):
        raise ConfigError(f"{len(weights)} LPIPS weight vectors for {len(layers)} backbone layers")
    total = clean.new_zeros(n, dtype=torch.float32)
    for i, f in enumerate(layers):
        f = f.float().flatten(2)  # (2N, C, positions)
        f = f / (f.norm(dim=1, keepdim=True) + 1e-10)
        diff = (f[:n] - f[n:]).pow(2)
        if weights is not None:
            diff = diff * weights[i].to(diff).view(1, -1, 1)
        total = total + diff.sum(1).mean(1)
    return total


# ----------------------------------------------------------------------------- distributions
def distribution(values: Sequence[float | None] | Tensor) -> dict[str, float | int | None]:
    """count, mean, median, p10, p25, p75, p90, min, max of the finite values (``None`` each when there are none)."""
    if isinstance(values, Tensor):
        values = values.double().flatten().tolist()
    kept = torch.tensor([float(v) for v in values if v is not None and math.isfinite(v)], dtype=torch.float64)
    if kept.numel() == 0:
        return {"count": 0, **{key: None for key in STATS[1:]}}
    q = torch.quantile(kept, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)).tolist()
    return {"count": int(kept.numel()), "mean": float(kept.mean()), "median": q[2], "p10": q[0], "p25": q[1],
            "p75": q[3], "p90": q[4], "min": float(kept.min()), "max": float(kept.max())}


__all__ = ["CHANGED_TOL", "MS_SSIM_WEIGHTS", "PSNR_CAP_DB", "describe_backbone", "distribution", "is_image",
           "load_lpips_backbone", "lpips_distance", "metric_names", "ms_ssim", "ms_ssim_scales", "notes", "psnr",
           "perturbation_metrics", "settings", "ssim", "ssim_window"]
