"""Any classification data saved with ``numpy.savez``: arrays ``x`` and ``y``, optionally ``x_test``/``y_test``.

``x`` is (N, ...) (images (N, C, H, W) or (N, H, W, C), features (N, D)) and ``y`` is (N,) integer labels.
How each ``x`` is read (see ``docs/data.md``):

- layout: a 4-D ``x`` whose last dim is 1, 3 or 4 while dim 1 is not is channels-last (N, H, W, C), e.g.
  CIFAR saved as (N, 32, 32, 3), and is transposed to (N, C, H, W); every other 4-D ``x`` is taken as
  (N, C, H, W). Other ranks are kept as they are ((N, H, W) is not given a channel axis).
- dtype: uint8 inputs are 8-bit pixels, scaled to [0, 1] by 1/255; other numeric dtypes are cast to float32
  as they are. Other 4-D images (float, int16, ...) with no negative value and a maximum above 1.5 are refused:
  they look like unscaled 0-255 pixels, and ε is measured in [0, 1] units, so the error asks for ``x / 255``
  (nothing is rescaled silently). Standardized images (with negative values) pass, their range stated.

What was detected is stated in one line, ``Dataset.layout`` (and logged at INFO). Without a test set, a
stratified, seeded split is made. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import logging
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from sparring.data.dataset import Dataset, stratified_split
from sparring.errors import DataError

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"  # a single array saved with numpy.save
ZIP_MAGIC = b"PK"  # an .npz is a zip archive
CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA: the channel counts that mark a 4-D array's channel axis
UNSCALED_MAX = 1.5  # a float image brighter than this is taken for 0-255 pixels


def _inputs(array: np.ndarray, *, key: str, file: str) -> tuple[torch.Tensor, str]:
    """``x`` as float32 (N, C, H, W) / (N, ...) and the line saying how it was read."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{file}: {key} must be numeric, got dtype {array.dtype}")
    if array.ndim < 2:
        raise DataError(f"{file}: {key} must have shape (N, ...) with at least one feature dim, got {array.shape}")
    raw = f"(N, {', '.join(str(d) for d in array.shape[1:])})"
    note = ""
    if array.ndim == 4:
        channels_last = array.shape[3] in CHANNELS and array.shape[1] not in CHANNELS
        raw = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
        if channels_last:
            array = array.transpose(0, 3, 1, 2)  # (N, H, W, C) → (N, C, H, W)
        elif array.shape[3] in CHANNELS:
            note = "; taken as (N, C, H, W) (dims 1 and 3 could both be channels: save (N, C, H, W) to be sure)"
    elif array.ndim == 3:
        note = "; kept 3-D (an image model wants x[:, None], (N, 1, H, W))"
    dtype = str(array.dtype)
    if array.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0)
        scaled = " ×1/255"
    else:
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        scaled = ""
    n = array.shape[0]
    if n == 0:
        raise DataError(f"{file}: {key} is empty (N = 0)")
    lo, hi = float(x.min()), float(x.max())
    if array.ndim == 4 and array.dtype != np.uint8 and lo >= 0.0 and UNSCALED_MAX < hi < math.inf:
        raise DataError(
            f"{file}: {key} holds {dtype} images with values up to {hi:g}, not pixels in [0, 1] (unscaled 0-255?); "
            "ε is measured in [0, 1] units: save x / 255 as float32 (or uint8 pixels), and wrap a model that expects "
            "0-255 inputs to multiply by 255"
        )
    noun = {2: "rows", 4: "images"}.get(array.ndim, "examples")
    final = f"(N, {', '.join(str(d) for d in x.shape[1:])})"
    line = f"{file}: {key}: {n} {noun} {raw} {dtype} → {final} float32{scaled}, values in [{lo:.3g}, {hi:.3g}]{note}"
    return x, line


def _labels(array: np.ndarray, key: str) -> torch.Tensor:
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise DataError(f"{key} must hold integer labels; found non-integer values")
    elif array.dtype.kind not in "iu":
        raise DataError(f"{key} must hold integer labels, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.int64))


def load_npz(
    path: str | Path, *, test_fraction: float = 0.25, seed: int = 0, num_classes: int | None = None
) -> tuple[Dataset, Dataset]:
    """(train, test) from an ``.npz`` file; ``num_classes`` defaults to ``max(y) + 1`` over both parts."""
    sets = _read_npz(path, num_classes)
    if len(sets) == 1:
        try:
            train, test = stratified_split(sets[0], test_fraction=test_fraction, seed=seed)
        except DataError as e:
            raise DataError(f"{str(path)!r}: {e}") from None
        for part in (train, test):
            part.layout += f"; stratified split {len(train)} train / {len(test)} test (seed {seed})"
        return train, test
    return sets[0], sets[1]


def load_npz_for_evaluation(path: str | Path, *, num_classes: int | None = None) -> Dataset:
    """The points to evaluate in an ``.npz`` file: ``x_test``/``y_test`` if present, else all of ``x``/``y``.

    ``sparring eval --data FILE.npz`` uses this: a file handed to an evaluation is evaluation data, so no
    part of it is held out as a training split."""
    return _read_npz(path, num_classes)[-1]


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; a one-line DataError naming the file if it is not a whole .npz."""
    redo = "write it again with numpy.savez(path, x=..., y=...)"
    try:
        with path.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e.strerror or e}; check its permissions") from None
    if not head:
        raise DataError(f"{str(path)!r} is empty (0 bytes); {redo}")
    if head.startswith(NPY_MAGIC):
        raise DataError(f"{str(path)!r} holds one numpy array (.npy), not an .npz archive with 'x' and 'y'; {redo}")
    if not head.startswith(ZIP_MAGIC):
        raise DataError(f"{str(path)!r} is not a numpy .npz archive (it does not start like one); {redo}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"cannot read {str(path)!r} as a numpy .npz archive ({reason}): it is damaged or truncated; {redo}"
        ) from None


def _read_npz(path: str | Path, num_classes: int | None) -> list[Dataset]:
    """``[all]`` or ``[train, test]`` as stored in the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} does not exist; expected a numpy .npz with arrays 'x' and 'y'")
    arrays = _npz_arrays(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{str(path)!r} has no array {key!r} (found {sorted(arrays)}); save x and y with np.savez")
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        raise DataError(f"{str(path)!r} has only one of 'x_test' and 'y_test'; save both or neither")
    parts = [("x", "y")] + ([("x_test", "y_test")] if all(has_test) else [])
    tensors = [(*_inputs(arrays[kx], key=kx, file=path.name), _labels(arrays[ky], ky)) for kx, ky in parts]
    if len(tensors) == 2 and tensors[0][0].shape[1:] != tensors[1][0].shape[1:]:
        shapes = [tuple(x.shape[1:]) for x, _, _ in tensors]
        raise DataError(
            f"{str(path)!r}: x gives inputs of shape {shapes[0]} but x_test gives {shapes[1]}; "
            "save both in one layout (both (N, C, H, W) or both (N, H, W, C))"
        )
    if num_classes is None:
        num_classes = max([0] + [int(y.max()) for _, _, y in tensors if y.numel()]) + 1
    name = path.stem
    for _, line, _ in tensors:
        log.info("data: %s", line)
    try:
        return [Dataset(x=x, y=y, num_classes=num_classes, name=name, layout=line) for x, line, y in tensors]
    except DataError as e:
        raise DataError(f"{str(path)!r}: {e}") from None
