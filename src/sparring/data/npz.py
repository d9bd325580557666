"""Any classification data saved with ``numpy.savez``: arrays ``x`` and ``y``, optionally ``x_test``/``y_test``.

``x`` is (N, ...) (images (N, C, H, W) or features (N, D)) and ``y`` is (N,) integer labels. uint8 inputs
are taken as 8-bit pixels and scaled to [0, 1] by /255; every other dtype is cast to float32 as is.
Without a test set, a stratified, seeded split is made. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparring.data.dataset import Dataset, stratified_split
from sparring.errors import DataError


def _inputs(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if array.dtype.kind not in "biuf":
        raise DataError(f"x must be numeric, got dtype {array.dtype}")
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


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
            return stratified_split(sets[0], test_fraction=test_fraction, seed=seed)
        except DataError as e:
            raise DataError(f"{str(path)!r}: {e}") from None
    return sets[0], sets[1]


def load_npz_for_evaluation(path: str | Path, *, num_classes: int | None = None) -> Dataset:
    """The points to evaluate in an ``.npz`` file: ``x_test``/``y_test`` if present, else all of ``x``/``y``.

    ``sparring eval --data FILE.npz`` uses this: a file handed to an evaluation is evaluation data, so no
    part of it is held out as a training split."""
    return _read_npz(path, num_classes)[-1]


def _read_npz(path: str | Path, num_classes: int | None) -> list[Dataset]:
    """``[all]`` or ``[train, test]`` as stored in the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} does not exist; expected a numpy .npz with arrays 'x' and 'y'")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {str(path)!r} as a numpy .npz archive: {e}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{str(path)!r} has no array {key!r} (found {sorted(arrays)}); save x and y with np.savez")
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        raise DataError(f"{str(path)!r} has only one of 'x_test' and 'y_test'; save both or neither")
    parts = [("x", "y")] + ([("x_test", "y_test")] if all(has_test) else [])
    tensors = [(_inputs(arrays[kx]), _labels(arrays[ky], ky)) for kx, ky in parts]
    if num_classes is None:
        num_classes = max([0] + [int(y.max()) for _, y in tensors if y.numel()]) + 1
    name = path.stem
    try:
        return [Dataset(x=x, y=y, num_classes=num_classes, name=name) for x, y in tensors]
    except DataError as e:
        raise DataError(f"{str(path)!r}: {e}") from None
