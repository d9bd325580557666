"""What the :class:`~sparring.train.Trainer` trains on: rows that may change from one epoch to the next.

A classifier's training set is the same tensors every epoch (:class:`TensorData`); a recommender draws fresh
negatives each epoch; a language model mixes behaviours with a new draw of utility chats. One protocol covers
them, so every domain trains through the one Trainer:

* ``len(data)``: rows per epoch (fixed for the whole run: the schedule counts steps from it);
* ``data.set_epoch(epoch)``: make epoch ``epoch``'s rows; it must depend only on the data's seed and ``epoch``, so
  a run resumed at epoch k sees what the uninterrupted run saw;
* ``data.batch(indices)``: the ``(x, y)`` of those rows of the current epoch; ``x`` a tensor or any batch object
  with ``.to(device)`` and ``len`` (a ChatBatch), ``y`` a tensor of labels or None;
* ``data.shuffle``: whether the Trainer permutes the rows each epoch (by ``(seed, epoch)``); False when
  ``set_epoch`` orders them itself;
* ``data.class_counts()``: per-class training counts for the objectives' ``on_train_begin``;
* ``data.tensors()``: the whole training set as ``(x, y)`` for objectives that read it (MCAT's manifold), or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class EpochData(Protocol):
    shuffle: bool

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def batch(self, indices: Sequence[int]) -> tuple[Any, Tensor | None]: ...

    def class_counts(self) -> list[int]: ...

    def tensors(self) -> tuple[Tensor, Tensor] | None: ...


class TensorData:
    """Fixed ``(x, y)`` tensors, the same every epoch, permuted by the Trainer."""

    shuffle = True

    def __init__(self, x: Tensor, y: Tensor, *, num_classes: int | None = None) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y
        self.num_classes = num_classes if num_classes is not None else int(y.max()) + 1 if len(y) else 0

    def __len__(self) -> int:
        return len(self.x)

    def set_epoch(self, epoch: int) -> None:
        pass

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.x[index], self.y[index]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y.long().cpu(), minlength=self.num_classes).tolist()

    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y


class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """An :class:`EpochData` as a map-style dataset whose batches are fetched whole (``__getitems__``), so a
    DataLoader (and accelerate's sharding of it) hands the Trainer ``data.batch(indices)`` as it is."""

    def __init__(self, data: EpochData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Tensor | None]:
        return self.data.batch([index])

    def __getitems__(self, indices: list[int]) -> tuple[Any, Tensor | None]:
        return self.data.batch(indices)


def as_is(batch: Any) -> Any:
    """The DataLoader's collate function for :class:`Rows`: the batch is already whole."""
    return batch


__all__ = ["EpochData", "Rows", "TensorData", "as_is"]
