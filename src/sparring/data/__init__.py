"""Data: in-memory classification data sets and the loaders that make them.

``load_data(source)`` returns ``(train, test)`` :class:`Dataset` pairs for ``"digits"`` (scikit-learn,
offline), ``"mnist1d"`` (generated in code), ``"shapes"`` (procedural point clouds), ``"modelnet40"`` /
``"scanobjectnn"`` (their HDF5 releases under ``root``), ``"cifar10"`` / ``"cifar100"`` (the python release under
``root``), a path to an ``.npz`` file or an image folder (one sub-folder per class). Nothing is downloaded.
``long_tail`` makes an exponentially imbalanced subset. ``docs/data.md`` lists the accepted layouts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparring.data.cifar import LAYOUTS, load_cifar
from sparring.data.dataset import Dataset, stratified_split
from sparring.data.digits import load_digits
from sparring.data.image_folder import load_image_folder, load_image_folder_for_evaluation
from sparring.data.longtail import long_tail, long_tail_counts
from sparring.data.mnist1d import load_mnist1d
from sparring.data.npz import load_npz, load_npz_for_evaluation
from sparring.errors import DataError

SOURCES = ("digits", "mnist1d", "shapes", "modelnet40", "scanobjectnn", "cifar10", "cifar100")


def load_data(
    source: str,
    *,
    root: str | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    num_classes: int | None = None,
) -> tuple[Dataset, Dataset]:
    """(train, test) for a named source, an ``.npz`` path or an image folder.

    Args:
        source: ``"digits"``, ``"mnist1d"``, ``"shapes"`` (procedural 3-D point clouds, (N, 256, 3)),
            ``"modelnet40"`` / ``"scanobjectnn"`` (HDF5 releases under ``root``, 1024 points, PB_T50_RS),
            ``"cifar10"``, ``"cifar100"``, a path ending in ``.npz``, or a folder of images in the ImageFolder
            layout (class sub-folders, or ``train/`` and ``test/`` / ``val/`` sub-folders of them). Named sources
            win over a folder of the same name.
        root: for CIFAR, the extracted release folder, a folder containing it, or the ``.tar.gz`` archive; for
            ModelNet40 / ScanObjectNN, the folder of the h5 files or its parent.
        test_fraction: share of each class held out, for sources without an official split (digits, npz
            without ``x_test``, an image folder without ``train/`` and ``test/``).
        seed: seed of that split.
        num_classes: the class count for npz data (default ``max(y) + 1``); for named sources and image
            folders it must match the source if given.
    """
    source = str(source)
    if source.endswith(".npz"):
        return load_npz(source, test_fraction=test_fraction, seed=seed, num_classes=num_classes)
    if source == "digits":
        train, test = load_digits(test_fraction=test_fraction, seed=seed)
    elif source == "mnist1d":
        train, test = load_mnist1d()  # the package's fixed split and seed: the benchmark everyone uses
    elif source == "shapes":
        from sparring.points.data import load_shapes  # deferred: the point-cloud domain imports this package

        train, test = load_shapes(test_fraction=test_fraction, seed=seed)
        # The procedural set comes grouped by class: shuffle the test split so that max_samples and the report's
        # examples see every class (training shuffles its own batches).
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(seed)))
    elif source in ("modelnet40", "scanobjectnn"):
        from sparring.points.data import load_modelnet40, load_scanobjectnn

        train, test = (load_modelnet40 if source == "modelnet40" else load_scanobjectnn)(root)  # type: ignore[arg-type]
    elif source in LAYOUTS:
        train, test = load_cifar(source, root=root)
    elif Path(source).expanduser().is_dir():
        train, test = load_image_folder(source, test_fraction=test_fraction, seed=seed)
    else:
        raise DataError(
            f"unknown data source {source!r}; accepted: {', '.join(SOURCES)}, or a path ending in .npz, or an "
            "existing folder of images (one sub-folder per class)"
        )
    if num_classes is not None and num_classes != train.num_classes:
        raise DataError(f"{source} has {train.num_classes} classes but num_classes={num_classes} was given")
    return train, test


def load_eval_data(source: str, *, root: str | None = None, seed: int = 0) -> tuple[Dataset | None, Dataset]:
    """``(train or None, points to evaluate)`` for ``sparring eval`` / ``sparring attack``: a named source's test
    split (its training split beside it), or a file or folder handed over whole (an ``.npz``: its ``x_test`` if
    present; an image folder: its ``test/`` or ``val/`` sub-folder if present, else all its class folders)."""
    source = str(source)
    if source.endswith(".npz"):
        return None, load_npz_for_evaluation(source)
    if source not in SOURCES and Path(source).expanduser().is_dir():
        return None, load_image_folder_for_evaluation(source, seed=seed)
    return load_data(source, root=root, seed=seed)


__all__ = [
    "Dataset",
    "load_eval_data",
    "SOURCES",
    "load_cifar",
    "load_data",
    "load_digits",
    "load_image_folder",
    "load_mnist1d",
    "load_npz",
    "long_tail",
    "long_tail_counts",
    "stratified_split",
]
