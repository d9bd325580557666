"""CIFAR-10 and CIFAR-100 from the standard "python version" release (Krizhevsky, 2009).

``root`` may be the extracted folder (``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch``
and ``batches.meta``; ``cifar-100-python/`` with ``train``, ``test`` and ``meta``), a folder that contains
that folder or the archive, or the ``.tar.gz`` archive itself, whose members are read without extracting
it to disk. Nothing is downloaded.

Each file is a pickled dict with ``b"data"`` (N, 3072) uint8 in channel-major order and labels under
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). The release is pickle, and a pickle can name any
function to call, so it is read with a restricted unpickler (:func:`sparring.data.safe_pickle.safe_load`) that
rebuilds dicts, lists, bytes, numbers and numpy arrays only: a file that asks for anything else (``os.system``,
``numpy.load`` ...) is refused with a :class:`~sparring.errors.DataError` before any of it runs. Data files never
run code. The official train/test split is used.
"""

from __future__ import annotations

import pickle
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from sparring.data.dataset import Dataset
from sparring.data.safe_pickle import UnsafePickleError, safe_load
from sparring.errors import DataError


@dataclass(frozen=True)
class _Layout:
    folder: str
    archive: str
    train: str  # a regex over file names: all matches are concatenated in natural order
    train_hint: str
    test: str
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int


LAYOUTS: dict[str, _Layout] = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train=r"data_batch_(\d+)",
        train_hint="'data_batch_1'..'data_batch_5'",
        test="test_batch",
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train=r"train()",
        train_hint="'train'",
        test="test",
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}


class _Files:
    """Named files of a release, from a folder or from a tar archive (by base name, not extracted)."""

    def __init__(self, where: Path, archive: tarfile.TarFile | None) -> None:
        self.where = where
        self.archive = archive
        if archive is not None:
            self._members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        else:
            self._members = {p.name: p for p in where.iterdir() if p.is_file()}

    def names(self) -> list[str]:
        return sorted(self._members)

    def load(self, name: str) -> dict[bytes, Any]:
        member = self._members[name]
        try:
            if self.archive is not None:
                f: IO[bytes] | None = self.archive.extractfile(member)
                if f is None:
                    raise DataError(f"cannot read {name!r} in {self.where}: not a regular file")
                with f:
                    obj = safe_load(f, encoding="bytes")
            else:
                with open(member, "rb") as f:
                    obj = safe_load(f, encoding="bytes")
        except UnsafePickleError as e:
            raise DataError(
                f"{name!r} in {self.where} is not a plain CIFAR batch: it asks to load {e.what}; refusing to unpickle "
                "it (data files never run code)"
            ) from None
        except DataError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, tarfile.TarError, OSError) as e:
            raise DataError(f"cannot read {name!r} in {self.where}: {_one_line(e)}") from None
        except Exception as e:  # a malformed pickle can fail in many ways (TypeError, IndexError, ...)
            raise DataError(f"cannot read {name!r} in {self.where}: not a CIFAR pickle ({_one_line(e)})") from None
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            raise DataError(f"{name!r} in {self.where} is not a CIFAR pickle (expected a dict, got {kind})")
        return obj


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _expected(source: str) -> str:
    layout = LAYOUTS[source]
    return f"the extracted '{layout.folder}' folder or the '{layout.archive}' archive"


@contextmanager
def _open_release(source: str, root: str | Path | None) -> Iterator[_Files]:
    layout = LAYOUTS[source]
    if root is None:
        raise DataError(f"{source} needs root= pointing to {_expected(source)}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{source} root {str(path)!r} does not exist; expected {_expected(source)}")
    if path.is_dir():
        if (path / layout.test).is_file():
            pass
        elif (path / layout.folder).is_dir():
            path = path / layout.folder
        elif (path / layout.archive).is_file():
            path = path / layout.archive
        else:
            raise DataError(f"no {source} data in {str(path)!r}; expected {_expected(source)}")
    if path.is_dir():
        yield _Files(path, None)
        return
    if not tarfile.is_tarfile(path):
        raise DataError(f"{str(path)!r} is neither a folder nor a tar archive; expected {_expected(source)}")
    with tarfile.open(path, "r:*") as archive:
        yield _Files(path, archive)


def _decode(batch: dict[bytes, Any], name: str, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in batch or layout.label_key not in batch:
        raise DataError(f"{name!r} lacks b'data' or {layout.label_key!r}: not a {layout.folder} file")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name!r} has data of shape {data.shape} and {labels.shape[0]} labels; expected (N, 3072) and N labels"
        )
    return data, labels


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    x = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)  # (N, 3, 32, 32) in [0, 1]
    return x, torch.from_numpy(labels)


def load_cifar(source: str, *, root: str | Path | None) -> tuple[Dataset, Dataset]:
    """(train, test) of ``source`` (``"cifar10"`` or ``"cifar100"``): x (N, 3, 32, 32) in [0, 1]."""
    layout = LAYOUTS[source]
    with _open_release(source, root) as files:
        names = files.names()
        train_names = sorted(
            (n for n in names if re.fullmatch(layout.train, n)),
            key=lambda n: int(re.fullmatch(layout.train, n).group(1) or 0),  # type: ignore[union-attr]
        )
        if not train_names or layout.test not in names:
            raise DataError(
                f"{files.where} lacks {source} files: need {layout.train_hint} and {layout.test!r}; found {names[:10]}"
            )
        class_names = [str(i) for i in range(layout.num_classes)]
        if layout.meta in names:
            raw = files.load(layout.meta).get(layout.names_key)
            if raw is not None and len(raw) == layout.num_classes:
                class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
        train = _stack([_decode(files.load(n), n, layout) for n in train_names])
        test = _stack([_decode(files.load(layout.test), layout.test, layout)])
    k = layout.num_classes
    return (
        Dataset(x=train[0], y=train[1], num_classes=k, class_names=list(class_names), name=source),
        Dataset(x=test[0], y=test[1], num_classes=k, class_names=list(class_names), name=source),
    )
