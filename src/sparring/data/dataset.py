"""The in-memory dataset every loader returns, and the stratified train/test split.

A :class:`Dataset` is a whole classification data set held as two tensors: inputs ``x`` (float32, images
(N, C, H, W) in [0, 1], tabular (N, D)) and labels ``y`` (int64, (N,)). It checks itself on construction,
so NaN pixels or out-of-range labels fail loudly at load time instead of as a strange loss later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparring.errors import DataError


@dataclass
class Dataset:
    """A labelled classification data set in memory.

    Attributes:
        x: (N, ...) float32 inputs; images are (N, C, H, W) with pixels in [0, 1].
        y: (N,) int64 labels in ``[0, num_classes)``.
        num_classes: number of classes K (some may have no samples, e.g. in a subset).
        class_names: K names; ``str(i)`` when left empty.
        name: a short identifier used in reports (``"digits"``, ``"cifar10-lt100"``).
        layout: one line saying how the inputs were read, for the user to check (``"cifar.npz: x: 10000
            images (N, H, W, C) uint8 → (N, 3, 32, 32) float32 ×1/255, values in [0, 1]"``); empty when the
            loader has nothing to state. The CLI prints it.
    """

    x: Tensor
    y: Tensor
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    name: str = "dataset"
    layout: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise DataError(f"x and y must be tensors, got {type(self.x).__name__} and {type(self.y).__name__}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise DataError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if self.y.dim() == 2 and self.y.shape[1] == 1:
            self.y = self.y.flatten()
        if self.y.dim() != 1:
            raise DataError(f"y must have shape (N,), got {tuple(self.y.shape)}")
        if self.x.dim() < 2:
            raise DataError(f"x must have shape (N, ...) with at least one feature dim, got {tuple(self.x.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"x and y differ in length: x has {self.x.shape[0]} samples, y has {self.y.shape[0]}")
        if self.x.shape[0] == 0:
            raise DataError(f"data set {self.name!r} is empty (N = 0)")
        if self.x.dtype == torch.bool or self.x.is_complex():
            raise DataError(f"x must be real-valued, got dtype {self.x.dtype}")
        if self.x.dtype != torch.float32:
            self.x = self.x.to(torch.float32)
        finite = torch.isfinite(self.x)
        if not finite.all():
            n_nan = int(torch.isnan(self.x).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise DataError(f"x contains {n_nan} NaN and {n_inf} infinite values; clean the data before loading")
        if self.y.dtype == torch.bool or self.y.is_complex():
            raise DataError(f"labels must be integers, got dtype {self.y.dtype}")
        if self.y.is_floating_point():
            if not torch.isfinite(self.y).all() or not (self.y == self.y.round()).all():
                raise DataError("labels must be integer-valued; found non-integer or non-finite labels")
        self.y = self.y.to(torch.int64)
        lo, hi = int(self.y.min()), int(self.y.max())
        if lo < 0:
            raise DataError(f"labels out of range: found {lo} but labels must be >= 0")
        if hi >= self.num_classes:
            raise DataError(f"labels out of range: found {hi} but num_classes is {self.num_classes}")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise DataError(f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dim: (C, H, W) for images, (D,) for tabular data."""
        return tuple(self.x.shape[1:])

    def subset(self, index: Tensor) -> Dataset:
        """The rows ``index`` (int64 positions or an (N,) bool mask); classes and names are kept."""
        index = index.to(self.x.device)
        return Dataset(
            x=self.x[index],
            y=self.y[index],
            num_classes=self.num_classes,
            class_names=list(self.class_names),
            name=self.name,
            layout=self.layout,
        )

    def class_counts(self) -> Tensor:
        """(K,) int64: number of samples of each class."""
        return torch.bincount(self.y, minlength=self.num_classes)


def stratified_split(ds: Dataset, *, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into (train, test) with ``⌊test_fraction · n_c + ½⌋`` test samples from each class c.

    Deterministic under ``seed`` (a private ``torch.Generator``; global RNG state is untouched). Both
    parts keep the original sample order.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    y = ds.y.cpu()
    is_test = torch.zeros(len(ds), dtype=torch.bool)
    for c in range(ds.num_classes):
        members = torch.nonzero(y == c).flatten()
        n_test = math.floor(float(test_fraction) * members.numel() + 0.5)  # round half up
        if n_test:
            is_test[members[torch.randperm(members.numel(), generator=gen)[:n_test]]] = True
    n_test = int(is_test.sum())
    if n_test == 0 or n_test == len(ds):
        raise DataError(
            f"cannot split {len(ds)} samples with test_fraction={test_fraction}: one side would be empty; "
            "provide more data or an explicit test set"
        )
    return ds.subset(torch.nonzero(~is_test).flatten()), ds.subset(torch.nonzero(is_test).flatten())
