"""Data: in-memory classification data sets and the loaders that make them.

``load_data(source)`` returns ``(train, test)`` :class:`Dataset` pairs for a named source of :data:`DATA_SOURCES`
(``"digits"``: scikit-learn, offline; ``"mnist1d"``: generated in code; ``"cifar10"`` / ``"cifar100"``: the python
release under ``root``; the point clouds register ``"shapes"``, ``"modelnet40"``, ``"scanobjectnn"``), a path to an
``.npz`` file or an image folder (one sub-folder per class). Nothing is downloaded.
``long_tail`` makes an exponentially imbalanced subset. ``docs/data.md`` lists the accepted layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sparring.data.cifar import LAYOUTS, load_cifar
from sparring.data.dataset import Dataset, stratified_split
from sparring.data.digits import load_digits
from sparring.data.image_folder import load_image_folder, load_image_folder_for_evaluation
from sparring.data.longtail import long_tail, long_tail_counts
from sparring.data.mnist1d import load_mnist1d
from sparring.data.npz import load_npz, load_npz_for_evaluation
from sparring.errors import DataError
from sparring.registry import Registry

#: Named data sources: ``name → loader(*, root, test_fraction, seed) → (train, test)``. Domains add theirs (the point
#: clouds' ``shapes``, ``modelnet40``, ``scanobjectnn``), loaded on the first lookup.
DATA_SOURCES: Registry[Callable[..., tuple[Dataset, Dataset]]] = Registry("data source")


@DATA_SOURCES.register("digits")
def _digits(*, root: str | None, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    return load_digits(test_fraction=test_fraction, seed=seed)


@DATA_SOURCES.register("mnist1d")
def _mnist1d(*, root: str | None, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    return load_mnist1d()  # the package's fixed split and seed: the benchmark everyone uses


for _name in LAYOUTS:  # cifar10, cifar100: the python release under root
    DATA_SOURCES.register(_name)(
        lambda *, root, test_fraction, seed, _source=_name: load_cifar(_source, root=root)
    )


def sources() -> list[str]:
    """Every named data source (the domains' included)."""
    return DATA_SOURCES.names()


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
        source: a named source (:func:`sources`: ``"digits"``, ``"mnist1d"``, ``"cifar10"``, ``"cifar100"``, and the
            point clouds' ``"shapes"`` (procedural, (N, 256, 3)), ``"modelnet40"`` / ``"scanobjectnn"`` (HDF5
            releases under ``root``, 1024 points, PB_T50_RS)), a path ending in ``.npz``, or a folder of images in
            the ImageFolder layout (class sub-folders, or ``train/`` and ``test/`` / ``val/`` sub-folders of them).
            Named sources win over a folder of the same name.
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
    if source in DATA_SOURCES:
        train, test = DATA_SOURCES.get(source)(root=root, test_fraction=test_fraction, seed=seed)
    elif Path(source).expanduser().is_dir():
        train, test = load_image_folder(source, test_fraction=test_fraction, seed=seed)
    else:
        raise DataError(
            f"unknown data source {source!r}; accepted: {', '.join(sources())}, or a path ending in .npz, or an "
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
    if source not in DATA_SOURCES and Path(source).expanduser().is_dir():
        return None, load_image_folder_for_evaluation(source, seed=seed)
    return load_data(source, root=root, seed=seed)


__all__ = [
    "Dataset",
    "load_eval_data",
    "DATA_SOURCES",
    "sources",
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
