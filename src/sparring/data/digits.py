"""scikit-learn's handwritten digits (8x8 grey images, 10 classes, 1797 samples), bundled and offline.

Pixels are integers 0..16 in the release; they are scaled to [0, 1] by /16, giving x of shape
(N, 1, 8, 8). There is no official split, so a stratified, seeded split is made.
"""

from __future__ import annotations

import torch

from sparring.data.dataset import Dataset, stratified_split


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test) from ``sklearn.datasets.load_digits``: x (N, 1, 8, 8) in [0, 1], y (N,) in 0..9."""
    from sklearn.datasets import load_digits as _sk_load_digits  # deferred: sklearn is slow to import

    bunch = _sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    full = Dataset(x=x, y=y, num_classes=10, class_names=[str(i) for i in range(10)], name="digits")
    return stratified_split(full, test_fraction=test_fraction, seed=seed)
