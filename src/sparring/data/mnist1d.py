"""MNIST-1D (Greydanus & Kobak, 2020/2024): ten 1-D digit templates, randomly padded, translated, scaled, sheared and
noised into length-40 signals. Generated in code by the PyPI package ``mnist1d`` (its ``make_dataset``; its
downloader is never called), so it works offline and is deterministic under ``seed``.

The package standardizes the signals (mean 0, std 1, range about [−5.5, 4.5]); here they are min–max scaled
with the training split's extremes to [0, 1] (test values clipped), so an L∞ ε means the same fraction of
the signal's range as a pixel ε does on images. x has shape (N, 40); the package's 80 / 20 split is kept.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from sparring.data.dataset import Dataset
from sparring.errors import DataError


def load_mnist1d(*, num_samples: int = 5000, seed: int = 42) -> tuple[Dataset, Dataset]:
    """(train, test) of MNIST-1D: x (N, 40) in [0, 1], y in 0..9; ``num_samples`` in all (package default 5000)."""
    if num_samples < 20:
        raise DataError(f"mnist1d needs num_samples >= 20 (two per class and split), got {num_samples}")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("the mnist1d source needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args()
    args.num_samples, args.seed = int(num_samples), int(seed)
    # make_dataset seeds numpy's and random's global generators; leave the caller's streams as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train = torch.as_tensor(raw["x"], dtype=torch.float32)
    lo, hi = x_train.min(), x_train.max()
    scale = lambda x: ((torch.as_tensor(x, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)  # noqa: E731
    names = [str(i) for i in range(10)]
    train = Dataset(x=scale(raw["x"]), y=torch.as_tensor(raw["y"], dtype=torch.int64), num_classes=10,
                    class_names=names, name="mnist1d")
    test = Dataset(x=scale(raw["x_test"]), y=torch.as_tensor(raw["y_test"], dtype=torch.int64), num_classes=10,
                   class_names=names, name="mnist1d")
    return train, test
