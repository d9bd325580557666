"""Point-cloud data: procedural shapes, ModelNet40 / ScanObjectNN h5 loaders (on small files in the release
layouts), farthest-point sampling and normalization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparring.errors import DataError
from sparring.points.data import (
    SCANOBJECTNN_CLASSES,
    farthest_point_sample,
    gather_points,
    load_modelnet40,
    load_scanobjectnn,
    load_shapes,
    normalize_unit_sphere,
    procedural_shapes,
    random_sample,
)

h5py = pytest.importorskip("h5py")

# ------------------------------------------------------------------------------------------- shapes


def test_shapes_layout_and_range() -> None:
    ds = procedural_shapes(n_per_class=6, num_points=128, seed=0)
    assert ds.num_classes >= 10 and len(set(ds.class_names)) == ds.num_classes
    assert ds.x.shape == (6 * ds.num_classes, 128, 3) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.class_counts().tolist() == [6] * ds.num_classes
    assert ds.name == "shapes"
    radius = ds.x.norm(dim=-1)
    assert float(radius.max()) <= 1.0 + 1e-5
    assert torch.allclose(radius.amax(dim=1), torch.ones(len(ds)), atol=1e-5)  # scaled to touch the sphere
    assert float(ds.x.mean(dim=1).abs().max()) < 1e-5  # centred


def test_shapes_deterministic_and_seeded() -> None:
    a = procedural_shapes(n_per_class=4, num_points=64, seed=3)
    b = procedural_shapes(n_per_class=4, num_points=64, seed=3)
    c = procedural_shapes(n_per_class=4, num_points=64, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.allclose(a.x, c.x)
    # a class's samples do not depend on which other classes were asked for
    sub = procedural_shapes(n_per_class=4, num_points=64, seed=3, classes=["torus", "cube"])
    assert sub.class_names == ["torus", "cube"] and sub.y.tolist() == [0] * 4 + [1] * 4
    assert torch.equal(sub.x[:4], a.x[a.y == a.class_names.index("torus")])


def test_shapes_bad_arguments() -> None:
    with pytest.raises(DataError, match="classes"):
        procedural_shapes(classes=["sphere", "blob"])
    with pytest.raises(DataError, match="noise"):
        procedural_shapes(noise=-1.0)


def _descriptors(x: torch.Tensor) -> torch.Tensor:
    """Rotation-invariant features: sorted PCA eigenvalues and a radial histogram."""
    cov = torch.einsum("npi,npj->nij", x, x) / x.shape[1]
    eig = torch.linalg.eigvalsh(cov)  # (n, 3) ascending
    r = x.norm(dim=-1)
    hist = torch.stack([((r >= lo) & (r < lo + 0.125)).float().mean(1) for lo in np.arange(0, 1.0, 0.125)], 1)
    return torch.cat([eig * 4, hist], dim=1)


def test_shapes_classes_are_distinguishable() -> None:
    train, test = load_shapes(n_per_class=40, num_points=256, seed=1)
    assert len(test) == 10 * 10 and len(train) == 10 * 30
    f_train, f_test = _descriptors(train.x), _descriptors(test.x)
    centroids = torch.stack([f_train[train.y == c].mean(0) for c in range(train.num_classes)])
    pred = torch.cdist(f_test, centroids).argmin(dim=1)
    accuracy = float((pred == test.y).float().mean())
    assert accuracy > 0.6, accuracy  # chance is 0.1


# -------------------------------------------------------------------------------------------- utilities


def test_normalize_unit_sphere_invariants() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(4, 50, 3, generator=g) * 7 + 3
    out = normalize_unit_sphere(pts)
    assert torch.allclose(out.mean(dim=1), torch.zeros(4, 3), atol=1e-5)
    assert torch.allclose(out.norm(dim=-1).amax(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(normalize_unit_sphere(out), out, atol=1e-5)  # idempotent
    assert torch.allclose(normalize_unit_sphere(pts * 2.5 - 1), out, atol=1e-5)  # scale/shift invariant
    assert torch.allclose(normalize_unit_sphere(pts[0]), out[0], atol=1e-6)  # a single (N, 3) cloud
    assert torch.isfinite(normalize_unit_sphere(torch.ones(1, 5, 3))).all()  # degenerate cloud


def _min_pairwise(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    return (d + torch.eye(x.shape[1]) * 1e9).amin(dim=(1, 2))


def test_farthest_point_sample() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 400, 3, generator=g)
    idx = farthest_point_sample(pts, 32)
    assert idx.shape == (3, 32) and idx.dtype == torch.int64
    assert all(len(set(row.tolist())) == 32 for row in idx)
    assert torch.equal(idx, farthest_point_sample(pts, 32))
    assert (idx[:, 0] == 0).all()
    a = farthest_point_sample(pts, 32, generator=torch.Generator().manual_seed(5))
    b = farthest_point_sample(pts, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # each cloud is sampled on its own: batch mates do not matter
    assert torch.equal(farthest_point_sample(pts[1:2], 32), idx[1:2])
    # covers the cloud better than random sampling
    rnd = random_sample(pts, 32, generator=torch.Generator().manual_seed(0))
    assert (_min_pairwise(gather_points(pts, idx)) > 2 * _min_pairwise(gather_points(pts, rnd))).all()
    with pytest.raises(DataError, match="m=401"):
        farthest_point_sample(pts, 401)


def test_random_sample_and_gather() -> None:
    pts = torch.arange(2 * 10 * 4, dtype=torch.float32).view(2, 10, 4)  # extra channels are carried along
    idx = random_sample(pts, 5, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (2, 5) and all(len(set(row.tolist())) == 5 for row in idx)
    assert torch.equal(idx, random_sample(pts, 5, generator=torch.Generator().manual_seed(0)))
    out = gather_points(pts, idx)
    assert out.shape == (2, 5, 4)
    assert torch.equal(out[1, 2], pts[1, idx[1, 2]])


# ---------------------------------------------------------------------------------------------- loaders


def _write_h5(path: Path, n: int, *, points: int = 32, k: int = 40, label_2d: bool = True, **over) -> None:
    rng = np.random.default_rng(n)
    data = rng.standard_normal((n, points, 3)).astype(np.float32)
    label = (np.arange(n) % k).astype(np.uint8 if label_2d else np.int64)
    label = label[:, None] if label_2d else label
    items = {"data": data, "label": label, **over}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in items.items():
            if value is not None:
                f.create_dataset(key, data=value)


def _modelnet(tmp_path: Path) -> Path:
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    for i, n in enumerate([5, 3]):
        _write_h5(folder / f"ply_data_train{i}.h5", n)
    _write_h5(folder / "ply_data_test0.h5", 4)
    (folder / "shape_names.txt").write_text("".join(f"class{i}\n" for i in range(40)))
    return folder


def test_modelnet40_both_roots(tmp_path: Path) -> None:
    folder = _modelnet(tmp_path)
    for root in (folder, tmp_path):
        train, test = load_modelnet40(root, num_points=16)
        assert train.x.shape == (8, 16, 3) and test.x.shape == (4, 16, 3)
        assert train.y.dtype == torch.int64 and train.num_classes == 40 and train.class_names[3] == "class3"
        assert train.name == "modelnet40"
    with h5py.File(folder / "ply_data_train0.h5", "r") as f:
        assert np.array_equal(train.x[:5].numpy(), f["data"][:, :16])  # first points, files in order


def test_modelnet40_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ply_data_train"):
        load_modelnet40(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_modelnet40(tmp_path / "nowhere")
    folder = _modelnet(tmp_path)
    with pytest.raises(DataError, match="32 points per cloud but num_points=64"):
        load_modelnet40(folder, num_points=64)
    (folder / "shape_names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 class names"):
        load_modelnet40(folder, num_points=16)
    (folder / "shape_names.txt").unlink()
    assert load_modelnet40(folder, num_points=16)[0].class_names[0] == "0"
    (folder / "ply_data_test0.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="ply_data_test0.h5.*not a readable HDF5"):
        load_modelnet40(folder, num_points=16)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"label": None}, r"lacks HDF5 dataset\(s\) \['label'\]"),
        ({"data": None}, r"lacks HDF5 dataset\(s\) \['data'\]"),
        ({"data": np.zeros((4, 8, 2), np.float32)}, r"'data' has shape \(4, 8, 2\)"),
        ({"label": np.zeros((3, 1), np.int64)}, "'label' has shape"),
        ({"data": np.full((4, 8, 3), np.nan, np.float32)}, "96 NaN or infinite"),
        ({"label": np.array([[0], [1], [40], [2]])}, r"labels span \[0, 40\]"),
        ({"label": np.array([[0], [-1], [3], [2]])}, r"must be in \[0, 40\)"),
    ],
)
def test_h5_bad_contents(tmp_path: Path, override: dict, message: str) -> None:
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    _write_h5(folder / "ply_data_train0.h5", 4, points=8)
    _write_h5(folder / "ply_data_test0.h5", 4, points=8, **override)
    with pytest.raises(DataError, match=message) as info:
        load_modelnet40(tmp_path, num_points=8)
    assert "ply_data_test0.h5" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("variant", "sub", "train_name", "test_name"),
    [
        ("PB_T50_RS", "main_split", "training_objectdataset_augmentedrot_scale75.h5",
         "test_objectdataset_augmentedrot_scale75.h5"),
        ("OBJ_BG", "main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
        ("OBJ_ONLY", "main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    ],
)  # fmt: skip
def test_scanobjectnn_layouts(tmp_path: Path, variant: str, sub: str, train_name: str, test_name: str) -> None:
    folder = tmp_path / "h5_files" / sub
    _write_h5(folder / train_name, 6, k=15, label_2d=False)
    _write_h5(folder / test_name, 4, k=15, label_2d=False)
    for root in (folder, folder.parent):
        train, test = load_scanobjectnn(root, variant=variant, num_points=20)
        assert train.x.shape == (6, 20, 3) and test.x.shape == (4, 20, 3)
        assert train.num_classes == 15 and train.class_names == SCANOBJECTNN_CLASSES
        assert test.y.tolist() == [0, 1, 2, 3] and train.name == "scanobjectnn"


def test_scanobjectnn_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test_objectdataset_augmentedrot_scale75.h5"):
        load_scanobjectnn(tmp_path)
    with pytest.raises(DataError, match="unknown ScanObjectNN variant"):
        load_scanobjectnn(tmp_path, variant="PB_T99")
    folder = tmp_path / "main_split"
    _write_h5(folder / "training_objectdataset.h5", 3, k=15)
    with pytest.raises(DataError, match=r"missing .*\['test_objectdataset.h5'\]"):
        load_scanobjectnn(tmp_path, variant="OBJ_BG")
    _write_h5(folder / "test_objectdataset.h5", 3, k=40)  # labels 0..2 fit; then one out of range
    with h5py.File(folder / "test_objectdataset.h5", "a") as f:
        f["label"][0] = 15
    with pytest.raises(DataError, match=r"test_objectdataset.h5: labels span \[1, 15\] but must be in \[0, 15\)"):
        load_scanobjectnn(tmp_path, variant="OBJ_BG", num_points=8)
    with pytest.raises(DataError, match="num_points must be a positive integer"):
        load_scanobjectnn(tmp_path, variant="OBJ_BG", num_points=0)


def test_load_data_reads_the_h5_releases_by_source_name(tmp_path: Path) -> None:
    from sparring.data import load_data

    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    _write_h5(folder / "ply_data_train0.h5", 4, points=1024)
    _write_h5(folder / "ply_data_test0.h5", 2, points=1024)
    train, test = load_data("modelnet40", root=str(tmp_path))
    assert train.x.shape == (4, 1024, 3) and test.num_classes == 40
    scan = tmp_path / "h5_files" / "main_split"
    _write_h5(scan / "training_objectdataset_augmentedrot_scale75.h5", 3, points=1024, k=15, label_2d=False)
    _write_h5(scan / "test_objectdataset_augmentedrot_scale75.h5", 2, points=1024, k=15, label_2d=False)
    train, _ = load_data("scanobjectnn", root=str(scan.parent))
    assert train.x.shape == (3, 1024, 3) and train.num_classes == 15
    with pytest.raises(DataError, match="needs root"):
        load_data("modelnet40")


def test_shapes_source_mixes_the_classes_of_its_test_split() -> None:
    from sparring.data import load_data

    _, test = load_data("shapes", seed=0)
    assert len(set(test.y[:40].tolist())) >= 8  # the first points (max_samples, report examples) span the classes
    _, again = load_data("shapes", seed=0)
    assert torch.equal(test.y, again.y)
