"""Data layer: the Dataset checks, the loaders (digits, CIFAR folder/archive, npz) and long-tailed subsets."""

from __future__ import annotations

import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sparring.data import Dataset, load_data, long_tail, long_tail_counts, stratified_split
from sparring.errors import DataError

# ----------------------------------------------------------------------------------------------- Dataset


def _toy(n_per_class: list[int], shape: tuple[int, ...] = (1, 2, 2)) -> Dataset:
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(n_per_class)])
    x = torch.rand((len(y), *shape), generator=torch.Generator().manual_seed(0))
    return Dataset(x=x, y=y, num_classes=len(n_per_class), name="toy")


def test_dataset_basics() -> None:
    ds = _toy([3, 5, 2])
    assert len(ds) == 10
    assert ds.input_shape == (1, 2, 2)
    assert ds.class_counts().tolist() == [3, 5, 2]
    assert ds.class_names == ["0", "1", "2"]
    sub = ds.subset(torch.tensor([0, 9]))
    assert len(sub) == 2 and sub.y.tolist() == [0, 2] and sub.num_classes == 3 and sub.name == "toy"
    assert len(ds.subset(ds.y == 1)) == 5


def test_dataset_casts_dtypes() -> None:
    ds = Dataset(x=torch.zeros(2, 3, dtype=torch.float64), y=torch.tensor([0.0, 1.0]), num_classes=2)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64


@pytest.mark.parametrize(
    ("x", "y", "k", "match"),
    [
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), 2, "differ in length"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2, "empty"),
        (torch.tensor([[0.0], [float("nan")]]), torch.tensor([0, 1]), 2, "1 NaN"),
        (torch.tensor([[0.0], [float("inf")]]), torch.tensor([0, 1]), 2, "infinite"),
        (torch.zeros(2, 1), torch.tensor([0.0, 0.5]), 2, "integer"),
        (torch.zeros(2, 1), torch.tensor([0, 12]), 10, "labels out of range: found 12 but num_classes is 10"),
        (torch.zeros(2, 1), torch.tensor([0, -1]), 10, "found -1"),
        (torch.zeros(2, 1), torch.tensor([0, 1]), 0, "num_classes"),
    ],
)
def test_dataset_rejects_bad_data(x: torch.Tensor, y: torch.Tensor, k: int, match: str) -> None:
    with pytest.raises(DataError, match=match):
        Dataset(x=x, y=y, num_classes=k)


def test_stratified_split_rejects_bad_fraction() -> None:
    with pytest.raises(DataError, match="test_fraction"):
        stratified_split(_toy([4, 4]), test_fraction=1.5)


# ----------------------------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_split() -> None:
    train, test = load_data("digits")
    assert train.input_shape == (1, 8, 8) and test.input_shape == (1, 8, 8)
    assert len(train) + len(test) == 1797
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert train.num_classes == 10 and train.class_names == [str(i) for i in range(10)]
    # Stratified: each class contributes ⌊0.25 · n_c + ½⌋ samples to the test set.
    full = train.class_counts() + test.class_counts()
    expected = torch.tensor([math.floor(0.25 * int(n) + 0.5) for n in full])
    assert torch.equal(test.class_counts(), expected)
    # Train and test are disjoint: no test image occurs in train.
    train_rows = {tuple(r.tolist()) for r in train.x.flatten(1)}
    dupes = sum(tuple(r.tolist()) in train_rows for r in test.x.flatten(1))
    assert dupes < 5  # digits itself holds a few exact duplicate images


def test_digits_split_is_deterministic_and_seeded() -> None:
    state = torch.get_rng_state()
    a_train, a_test = load_data("digits", seed=3)
    b_train, b_test = load_data("digits", seed=3)
    c_train, _ = load_data("digits", seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a_train.x, b_train.x) and torch.equal(a_test.y, b_test.y)
    assert not torch.equal(a_train.x, c_train.x)
    small_train, small_test = load_data("digits", test_fraction=0.1)
    assert abs(len(small_test) - 180) <= 10 and len(small_train) + len(small_test) == 1797


def test_named_source_checks_num_classes() -> None:
    with pytest.raises(DataError, match="10 classes"):
        load_data("digits", num_classes=5)


def test_unknown_source_lists_accepted() -> None:
    with pytest.raises(DataError, match=r"accepted: .*\.npz") as error:
        load_data("mnist")
    listed = str(error.value).split("accepted: ")[1].split(", or")[0].split(", ")
    assert sorted(listed) == sorted(["digits", "mnist1d", "shapes", "modelnet40", "scanobjectnn", "cifar10",
                                     "cifar100"])


# ------------------------------------------------------------------------------------------------ CIFAR


def _images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _fake_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in (1, 2):  # 20 train images in two batches (the real release has five of 10000)
        data, labels = _images(10, seed=i)
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"x", b"labels": labels, b"data": data})
    data, labels = _images(10, seed=99)
    _dump(folder / "test_batch", {b"labels": labels, b"data": data})
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship")]
    _dump(folder / "batches.meta", {b"label_names": names + [b"truck"], b"num_vis": 3072})
    return folder


def _archive(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return out


def _check_cifar10(train: Dataset, test: Dataset) -> None:
    assert len(train) == 20 and len(test) == 10
    assert train.input_shape == (3, 32, 32) and train.num_classes == 10 and train.name == "cifar10"
    assert train.class_names[0] == "airplane" and train.class_names[-1] == "truck"
    data, labels = _images(10, seed=1)
    # Channel-major rows: the first 1024 bytes are the red plane, row by row.
    assert torch.allclose(train.x[0], torch.from_numpy(data[0].reshape(3, 32, 32)).float() / 255)
    assert train.y[:10].tolist() == labels
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert test.y.tolist() == _images(10, seed=99)[1]


def test_cifar10_from_folder_parent_and_archive(tmp_path: Path) -> None:
    folder = _fake_cifar10(tmp_path / "data")
    _check_cifar10(*load_data("cifar10", root=str(folder)))
    _check_cifar10(*load_data("cifar10", root=str(tmp_path / "data")))
    archive = _archive(folder, tmp_path / "cifar-10-python.tar.gz")
    before = sorted(p.name for p in tmp_path.iterdir())
    _check_cifar10(*load_data("cifar10", root=str(archive)))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # read in place, nothing extracted


def test_cifar10_archive_found_in_folder(tmp_path: Path) -> None:
    folder = _fake_cifar10(tmp_path / "src")
    (tmp_path / "dl").mkdir()
    _archive(folder, tmp_path / "dl" / "cifar-10-python.tar.gz")
    _check_cifar10(*load_data("cifar10", root=str(tmp_path / "dl")))


def test_cifar10_without_meta_falls_back_to_indices(tmp_path: Path) -> None:
    folder = _fake_cifar10(tmp_path)
    (folder / "batches.meta").unlink()
    train, _ = load_data("cifar10", root=str(folder))
    assert train.class_names == [str(i) for i in range(10)]


def test_cifar100(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 12)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, size=n).tolist(), rng.integers(0, 20, size=n).tolist()
        _dump(folder / split, {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse})
    _dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []})
    for root in (folder, _archive(folder, tmp_path / "cifar-100-python.tar.gz")):
        train, test = load_data("cifar100", root=str(root))
        assert len(train) == 30 and len(test) == 12 and train.num_classes == 100
        assert train.class_names[7] == "c7" and train.input_shape == (3, 32, 32)


def test_cifar_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="root="):
        load_data("cifar10")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"nowhere.*cifar-10-batches-py"):
        load_data("cifar10", root=str(missing))
    with pytest.raises(DataError, match="cifar-100-python"):
        load_data("cifar100", root=str(tmp_path))  # exists but holds no release
    folder = _fake_cifar10(tmp_path)
    (folder / "test_batch").rename(folder / "other")
    with pytest.raises(DataError, match="test_batch"):
        load_data("cifar10", root=str(folder.parent))


# -------------------------------------------------------------------------------------------------- npz


def test_npz_round_trip_with_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float64)
    y = np.repeat(np.arange(4), 10)
    path = tmp_path / "tab.npz"
    np.savez(path, x=x, y=y)
    train, test = load_data(str(path), test_fraction=0.25, seed=1)
    assert len(train) == 28 and len(test) == 12 and train.num_classes == 4 and train.name == "tab"
    assert test.class_counts().tolist() == [3, 3, 3, 3]  # ⌊0.25 · 10 + ½⌋ per class
    assert train.x.dtype == torch.float32 and train.input_shape == (5,)
    merged = torch.cat([train.x, test.x])
    assert torch.allclose(merged.sort(0).values, torch.from_numpy(x).float().sort(0).values)


def test_npz_with_test_arrays_uint8_and_num_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(8, 1, 4, 4), dtype=np.uint8)
    path = tmp_path / "img.npz"
    np.savez(path, x=x, y=np.arange(8) % 3, x_test=x[:4], y_test=np.array([0, 1, 2, 4]))
    train, test = load_data(str(path))
    assert len(train) == 8 and len(test) == 4 and train.num_classes == 5  # max over both parts, + 1
    assert torch.allclose(train.x, torch.from_numpy(x).float() / 255)
    train, _ = load_data(str(path), num_classes=7)
    assert train.num_classes == 7


def test_npz_for_evaluation_is_the_whole_file_or_its_test_part(tmp_path: Path) -> None:
    from sparring.data.npz import load_npz_for_evaluation

    x = np.random.default_rng(2).random((30, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "all.npz", x=x, y=np.arange(30) % 3)
    whole = load_npz_for_evaluation(tmp_path / "all.npz")
    assert len(whole) == 30 and torch.equal(whole.x, torch.from_numpy(x))
    np.savez(tmp_path / "both.npz", x=x, y=np.arange(30) % 3, x_test=x[:5], y_test=np.arange(5) % 3)
    assert len(load_npz_for_evaluation(tmp_path / "both.npz")) == 5


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((4, 2))}, "no array 'y'"),
        ({"y": np.zeros(4, dtype=np.int64)}, "no array 'x'"),
        ({"x": np.array([[0.0], [np.nan], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "NaN"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 12])}, "labels out of range: found 12 but num_classes is 10"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "x_test": np.zeros((2, 2))}, "y_test"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_data(str(path), num_classes=10 if "12" in match else None)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.npz"):
        load_data(str(tmp_path / "missing.npz"))


# -------------------------------------------------------------------------------------------- long tail


@pytest.mark.parametrize("rho", [1.0, 10.0, 50.0])
def test_long_tail_follows_profile(rho: float) -> None:
    ds = _toy([100] * 10)
    lt = long_tail(ds, imbalance_ratio=rho, seed=0)
    expected = [math.floor(100 * rho ** (-c / 9)) for c in range(10)]
    assert lt.class_counts().tolist() == expected
    counts = lt.class_counts()
    assert abs(float(counts[0] / counts[-1]) - rho) / rho < 0.05
    assert lt.name == f"toy-lt{rho:g}" and lt.num_classes == 10


def test_long_tail_respects_available_counts_and_seed() -> None:
    train, _ = load_data("digits")
    lt = long_tail(train, imbalance_ratio=10.0, seed=0)
    available = train.class_counts()
    counts = lt.class_counts()
    assert (counts <= available).all() and counts.tolist() == long_tail_counts(available.tolist(), 10.0)
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)
    assert torch.equal(lt.x, long_tail(train, imbalance_ratio=10.0, seed=0).x)
    assert not torch.equal(lt.x, long_tail(train, imbalance_ratio=10.0, seed=1).x)
    # A scarce tail class caps the head: n_max = min_c ⌊a_c · ρ^(c/(C−1))⌋.
    assert long_tail_counts([100, 100, 5], 4.0) == [20, 10, 5]


def test_long_tail_rejects_bad_ratio() -> None:
    with pytest.raises(DataError, match="imbalance_ratio"):
        long_tail(_toy([5, 5]), imbalance_ratio=0.5)
    with pytest.raises(DataError, match="tail class would be empty"):
        long_tail(_toy([5, 5]), imbalance_ratio=100.0)


def test_mnist1d_is_generated_offline_scaled_and_deterministic() -> None:
    import random

    from sparring.data import load_mnist1d

    np.random.seed(123)
    before = np.random.get_state()[1].copy(), random.getstate()
    train, test = load_mnist1d(num_samples=200, seed=3)
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]  # global RNG kept
    assert train.x.shape == (160, 40) and test.x.shape == (40, 40) and train.num_classes == 10
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert 0.0 <= float(test.x.min()) and float(test.x.max()) <= 1.0
    assert set(train.y.tolist()) == set(range(10))
    again, _ = load_mnist1d(num_samples=200, seed=3)
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    other, _ = load_mnist1d(num_samples=200, seed=4)
    assert not torch.equal(train.x, other.x)
    with pytest.raises(DataError, match="num_samples"):
        load_mnist1d(num_samples=5)
