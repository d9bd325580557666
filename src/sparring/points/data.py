"""Point-cloud data: procedural 3-D shapes, ModelNet40 and ScanObjectNN loaders, and sampling utilities.

Every cloud is a float32 tensor (N, 3) of xyz coordinates; a data set holds x (N_samples, P, 3), y int64.

* **Procedural shapes** (``procedural_shapes``, ``load_shapes``): generated in code, offline, deterministic
  under a seed. Ten classes of surfaces (sphere, cube, cylinder, cone, torus, square pyramid, ellipsoid,
  capsule, plane patch, helix), each sample with random shape parameters, a uniform random pose in SO(3), a
  random scale, points sampled uniformly by surface area (arc length for the helix), Gaussian jitter, then
  centred and scaled into the unit ball. A stand-in for ModelNet40 in tests and demos.
* **ModelNet40** (Wu et al., CVPR 2015), in the HDF5 release made for PointNet (Qi et al., 2017),
  ``modelnet40_ply_hdf5_2048/``: ``ply_data_train0..4.h5`` and ``ply_data_test0..1.h5``, each with datasets
  ``data`` (n, 2048, 3) float32 (clouds already centred and in the unit sphere, points in random order) and
  ``label`` (n, 1) int; class names in ``shape_names.txt`` (40 lines). The first ``num_points`` points are
  taken.
* **ScanObjectNN** (Uy et al., ICCV 2019), real scanned objects, 15 classes, from the authors' ``h5_files``
  release: ``main_split/training_objectdataset_augmentedrot_scale75.h5`` and
  ``test_objectdataset_augmentedrot_scale75.h5`` (variant PB_T50_RS, the hardest), ``main_split/
  training_objectdataset.h5`` / ``test_objectdataset.h5`` (OBJ_BG; OBJ_ONLY is the same names under
  ``main_split_nobg/``), each with datasets ``data`` (n, 2048, 3) and ``label`` (n,). The first
  ``num_points`` points are taken.

Nothing is downloaded: loaders read the files the user already has (h5py is an extra, imported on use).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparring.data import DATA_SOURCES
from sparring.data.dataset import Dataset, stratified_split
from sparring.errors import DataError

# --------------------------------------------------------------------------------------- utilities (B, N, 3)


def normalize_unit_sphere(points: Tensor) -> Tensor:
    """Centre each cloud (..., N, 3) at its centroid and scale it so its farthest point has norm 1."""
    centred = points - points.mean(dim=-2, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    return centred / radius.clamp_min(1e-12)


def _check_cloud(points: Tensor, m: int) -> None:
    if points.dim() != 3:
        raise DataError(f"points must have shape (B, N, C), got {tuple(points.shape)}")
    if not 1 <= int(m) <= points.shape[1]:
        raise DataError(f"cannot sample m={m} points from clouds of {points.shape[1]} points")


def farthest_point_sample(points: Tensor, m: int, *, generator: torch.Generator | None = None) -> Tensor:
    """(B, m) int64 indices of ``m`` points per cloud chosen by iterative farthest-point sampling.

    Each step adds the point farthest (Euclidean, on the first 3 channels) from those already chosen. The
    first index is drawn from ``generator`` when given, else 0. Vectorized over the batch; m steps.
    """
    _check_cloud(points, m)
    b, n = points.shape[:2]
    xyz = points[..., :3]
    if generator is None:
        current = torch.zeros(b, dtype=torch.int64, device=points.device)
    else:
        current = torch.randint(n, (b,), generator=generator, device=generator.device).to(points.device)
    idx = torch.empty(b, m, dtype=torch.int64, device=points.device)
    dist = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=points.device)  # to the chosen set
    rows = torch.arange(b, device=points.device)
    for i in range(m):
        idx[:, i] = current
        centre = xyz[rows, current].unsqueeze(1)  # (B, 1, 3)
        dist = torch.minimum(dist, (xyz - centre).square().sum(-1))
        current = dist.argmax(dim=-1)
    return idx


def random_sample(points: Tensor, m: int, *, generator: torch.Generator | None = None) -> Tensor:
    """(B, m) int64 indices of ``m`` distinct points per cloud drawn uniformly at random."""
    _check_cloud(points, m)
    b, n = points.shape[:2]
    device = generator.device if generator is not None else points.device
    keys = torch.rand(b, n, generator=generator, device=device)
    return keys.argsort(dim=-1)[:, :m].to(points.device)


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """(B, m, C): the points ``idx`` (B, m) of each cloud ``points`` (B, N, C)."""
    return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def nearest_kept(points: Tensor, keep: Tensor) -> Tensor:
    """(B, N) index of each point's nearest kept point (itself where kept), on the first 3 channels.

    ``keep`` (B, N) bool marks the points that stay. A cloud with no kept point keeps all of them.
    """
    if keep.shape != points.shape[:2] or keep.dtype != torch.bool:
        raise DataError(f"keep must be a (B, N) bool mask for clouds {tuple(points.shape)}, got {tuple(keep.shape)}")
    keep = keep | ~keep.any(dim=1, keepdim=True)
    with torch.no_grad():  # the choice is discrete; gathering by it stays differentiable
        xyz = points[..., :3]
        dist = torch.cdist(xyz, xyz, compute_mode="donot_use_mm_for_euclid_dist")  # (B, N, N), exact
        dist = dist.masked_fill(~keep.unsqueeze(1), float("inf"))
        return dist.argmin(dim=-1)


def fill_removed(points: Tensor, keep: Tensor) -> Tensor:
    """Remove the points where ``keep`` (B, N) is False without changing the shape: each removed point becomes
    a copy of its nearest kept point -> (B, N, C).

    Batched clouds must keep one size, so removal (point-drop attacks, outlier-removal defences) is written as
    duplication. For a model that pools with a max over points (PointNet) a duplicate changes nothing, so this
    *is* removal; models with mean pooling or kNN graphs (DGCNN) see the duplicates with a small weight.
    Differentiable in the kept points' coordinates.
    """
    return gather_points(points, nearest_kept(points, keep))


# -------------------------------------------------------------------------------------- procedural shapes
# Each sampler maps (n samples, P points, generator) to (n, P, 3) points on a surface of size ~1 about the
# origin, with its own random shape parameters per sample.


def _u(gen: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def _sphere_points(gen: torch.Generator, n: int, p: int) -> Tensor:
    v = torch.randn(n, p, 3, generator=gen)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _disk(gen: torch.Generator, n: int, p: int, radius: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    r = torch.sqrt(_u(gen, n, p)) * radius
    theta = _u(gen, n, p, hi=2 * math.pi)
    return r * torch.cos(theta), r * torch.sin(theta)


def _first_accepted(candidates: Tensor, prob: Tensor, gen: torch.Generator) -> Tensor:
    """Vectorized rejection sampling: candidates (n, p, K, 3), acceptance prob (n, p, K) -> (n, p, 3)."""
    accept = torch.rand(prob.shape, generator=gen) < prob
    k = accept.to(torch.uint8).argmax(dim=-1)  # first accepted candidate (0 in the rare all-rejected case)
    return torch.gather(candidates, 2, k[..., None, None].expand(-1, -1, 1, 3)).squeeze(2)


def _sphere(gen: torch.Generator, n: int, p: int) -> Tensor:
    return _sphere_points(gen, n, p)


def _cube(gen: torch.Generator, n: int, p: int) -> Tensor:
    face = torch.randint(6, (n, p), generator=gen)  # six faces of equal area
    pts = _u(gen, n, p, 3, lo=-1.0, hi=1.0)
    axis = (face // 2).unsqueeze(-1)
    sign = (face % 2).to(torch.float32).mul(2).sub(1).unsqueeze(-1)
    return pts.scatter(-1, axis, sign)


def _cylinder(gen: torch.Generator, n: int, p: int) -> Tensor:
    h = _u(gen, n, 1, lo=1.0, hi=3.0)  # height / radius
    side = _u(gen, n, p) < h / (h + 1.0)  # side area 2πh : caps area 2π
    theta = _u(gen, n, p, hi=2 * math.pi)
    dx, dy = _disk(gen, n, p)
    cap_z = torch.where(_u(gen, n, p) < 0.5, -h / 2, h / 2).expand(n, p)
    x = torch.where(side, torch.cos(theta), dx)
    y = torch.where(side, torch.sin(theta), dy)
    z = torch.where(side, _u(gen, n, p, lo=-0.5, hi=0.5) * h, cap_z)
    return torch.stack([x, y, z], dim=-1)


def _cone(gen: torch.Generator, n: int, p: int) -> Tensor:
    h = _u(gen, n, 1, lo=1.0, hi=2.5)  # height / base radius
    slant = torch.sqrt(1.0 + h * h)
    lateral = _u(gen, n, p) < slant / (slant + 1.0)  # lateral area πs : base area π
    t = torch.sqrt(_u(gen, n, p))  # distance from the apex, density ∝ t
    theta = _u(gen, n, p, hi=2 * math.pi)
    dx, dy = _disk(gen, n, p)
    x = torch.where(lateral, t * torch.cos(theta), dx)
    y = torch.where(lateral, t * torch.sin(theta), dy)
    z = torch.where(lateral, h * (1.0 - t), torch.zeros(n, p))
    return torch.stack([x, y, z], dim=-1)


def _torus(gen: torch.Generator, n: int, p: int, k: int = 16) -> Tensor:
    r = _u(gen, n, 1, 1, lo=0.2, hi=0.5)  # tube radius / ring radius
    theta = _u(gen, n, p, k, hi=2 * math.pi)
    phi = _u(gen, n, p, k, hi=2 * math.pi)
    ring = 1.0 + r * torch.cos(phi)
    cand = torch.stack([ring * torch.cos(theta), ring * torch.sin(theta), r * torch.sin(phi)], dim=-1)
    return _first_accepted(cand, ring / (1.0 + r), gen)  # area element ∝ 1 + r cos φ


def _pyramid(gen: torch.Generator, n: int, p: int) -> Tensor:
    h = _u(gen, n, 1, lo=0.8, hi=2.0)  # height over a [-1, 1]² base
    slant = torch.sqrt(1.0 + h * h)
    on_side = _u(gen, n, p) < 4 * slant / (4 * slant + 4.0)  # 4 triangles of area s : base area 4
    side = torch.randint(4, (n, p), generator=gen)
    # uniform point in the triangle (a, b, apex) by the square-root trick
    s1, s2 = torch.sqrt(_u(gen, n, p)), _u(gen, n, p)
    corners = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    a, b = corners[side], corners[(side + 1) % 4]  # (n, p, 2)
    w_a, w_b = (1 - s1).unsqueeze(-1), (s1 * (1 - s2)).unsqueeze(-1)
    xy_side = w_a * a + w_b * b
    z_side = (s1 * s2) * h
    base = _u(gen, n, p, 2, lo=-1.0, hi=1.0)
    xy = torch.where(on_side.unsqueeze(-1), xy_side, base)
    z = torch.where(on_side, z_side, torch.zeros(n, p))
    return torch.cat([xy, z.unsqueeze(-1)], dim=-1)


def _ellipsoid(gen: torch.Generator, n: int, p: int, k: int = 8) -> Tensor:
    axes = torch.cat([torch.ones(n, 1), _u(gen, n, 2, lo=0.35, hi=0.75)], dim=1).view(n, 1, 1, 3)  # (1, b, c)
    u = _sphere_points(gen, n, p * k).view(n, p, k, 3)
    a, b, c = axes.unbind(-1)
    # area element of the map u ↦ axes·u is ∝ ‖(bc·u₁, ac·u₂, ab·u₃)‖
    g = torch.stack([b * c * u[..., 0], a * c * u[..., 1], a * b * u[..., 2]], dim=-1).norm(dim=-1)
    g_max = torch.stack([b * c, a * c, a * b], dim=-1).amax(dim=-1)
    return _first_accepted(u * axes, g / g_max, gen)


def _capsule(gen: torch.Generator, n: int, p: int) -> Tensor:
    half = _u(gen, n, 1, lo=0.5, hi=1.5)  # half length of the cylinder / radius
    side = _u(gen, n, p) < half / (half + 1.0)  # side area 4π·half : two hemispheres 4π
    theta = _u(gen, n, p, hi=2 * math.pi)
    cyl = torch.stack([torch.cos(theta), torch.sin(theta), _u(gen, n, p, lo=-1.0, hi=1.0) * half], dim=-1)
    s = _sphere_points(gen, n, p)
    caps = s + torch.stack([torch.zeros(n, p), torch.zeros(n, p), torch.sign(s[..., 2]) * half], dim=-1)
    return torch.where(side.unsqueeze(-1), cyl, caps)


def _plane(gen: torch.Generator, n: int, p: int) -> Tensor:
    aspect = _u(gen, n, 1, lo=0.3, hi=1.0)
    x = _u(gen, n, p, lo=-1.0, hi=1.0)
    y = _u(gen, n, p, lo=-1.0, hi=1.0) * aspect
    return torch.stack([x, y, torch.zeros(n, p)], dim=-1)


def _helix(gen: torch.Generator, n: int, p: int) -> Tensor:
    turns = _u(gen, n, 1, lo=1.5, hi=4.0)
    pitch = _u(gen, n, 1, lo=0.3, hi=0.8)  # rise per turn / radius
    t = _u(gen, n, p)  # arc length is linear in t for a circular helix
    angle = 2 * math.pi * turns * t
    return torch.stack([torch.cos(angle), torch.sin(angle), pitch * turns * (t - 0.5)], dim=-1)


SHAPES: dict[str, Callable[[torch.Generator, int, int], Tensor]] = {
    "sphere": _sphere,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "pyramid": _pyramid,
    "ellipsoid": _ellipsoid,
    "capsule": _capsule,
    "plane": _plane,
    "helix": _helix,
}


def _random_rotations(gen: torch.Generator, n: int) -> Tensor:
    """(n, 3, 3) rotations uniform on SO(3), from normalized Gaussian quaternions."""
    q = torch.randn(n, 4, generator=gen)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], dim=-1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], dim=-1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1),
        ],
        dim=-2,
    )


def procedural_shapes(
    *,
    n_per_class: int = 100,
    num_points: int = 256,
    seed: int = 0,
    noise: float = 0.01,
    classes: list[str] | None = None,
) -> Dataset:
    """A procedural shape data set: x (K·n_per_class, num_points, 3) in the unit ball, y in 0..K-1.

    ``classes`` picks and orders a subset of :data:`SHAPES` (default: all ten). A class's samples depend
    only on ``seed`` and the class name, not on which other classes are asked for. Samples are grouped by
    class. ``noise`` is the standard deviation of the Gaussian jitter, relative to a shape of size ~1.
    """
    names = list(SHAPES) if classes is None else list(classes)
    unknown = [c for c in names if c not in SHAPES]
    if unknown or not names or len(set(names)) != len(names):
        raise DataError(f"classes must be distinct names among {list(SHAPES)}, got {classes!r}")
    if int(n_per_class) < 1 or int(num_points) < 1:
        raise DataError(f"n_per_class and num_points must be >= 1, got {n_per_class} and {num_points}")
    if not float(noise) >= 0.0:
        raise DataError(f"noise must be >= 0, got {noise}")
    xs = []
    for name in names:
        class_id = list(SHAPES).index(name)
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + class_id)
        pts = SHAPES[name](gen, n_per_class, num_points)  # (n, P, 3)
        pts = normalize_unit_sphere(pts) * _u(gen, n_per_class, 1, 1, lo=0.7, hi=1.3)
        pts = pts @ _random_rotations(gen, n_per_class).transpose(1, 2)
        pts = pts + float(noise) * torch.randn(pts.shape, generator=gen)
        xs.append(normalize_unit_sphere(pts))
    y = torch.arange(len(names)).repeat_interleave(n_per_class)
    return Dataset(x=torch.cat(xs), y=y, num_classes=len(names), class_names=names, name="shapes")


def load_shapes(
    *, test_fraction: float = 0.25, seed: int = 0, num_points: int = 256, n_per_class: int = 100
) -> tuple[Dataset, Dataset]:
    """(train, test) of :func:`procedural_shapes`, split stratified by class under ``seed``."""
    full = procedural_shapes(n_per_class=n_per_class, num_points=num_points, seed=seed)
    return stratified_split(full, test_fraction=test_fraction, seed=seed)


# ------------------------------------------------------------------------------------------------ HDF5 files

MODELNET40_FOLDER = "modelnet40_ply_hdf5_2048"

SCANOBJECTNN_CLASSES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
]  # fmt: skip

# variant -> (sub-folder of h5_files/, train file, test file)
SCANOBJECTNN_VARIANTS = {
    "PB_T50_RS": (
        "main_split",
        "training_objectdataset_augmentedrot_scale75.h5",
        "test_objectdataset_augmentedrot_scale75.h5",
    ),
    "OBJ_BG": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
}


def _read_h5(path: Path, *, num_points: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """x (n, num_points, 3) float32 and y (n,) int64 from the ``data`` / ``label`` datasets of one file."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("data", "label") if k not in f]
            if missing:
                raise DataError(f"{path} lacks HDF5 dataset(s) {missing}; found {sorted(f.keys())}")
            data: Any = np.asarray(f["data"])
            label: Any = np.asarray(f["label"])
    except OSError as e:
        raise DataError(f"cannot read {path}: not a readable HDF5 file ({e})") from None
    if data.ndim != 3 or data.shape[2] != 3:
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected (n, points, 3)")
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or label.shape[0] != data.shape[0]:
        raise DataError(f"{path}: 'label' has shape {label.shape} for {data.shape[0]} clouds; expected (n,) or (n, 1)")
    if data.shape[1] < num_points:
        raise DataError(f"{path} has {data.shape[1]} points per cloud but num_points={num_points} was asked")
    if not np.issubdtype(data.dtype, np.number) or not np.issubdtype(label.dtype, np.number):
        raise DataError(f"{path}: 'data' and 'label' must be numeric, got {data.dtype} and {label.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(data[:, :num_points], dtype=np.float32))
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(f"{path}: 'data' contains {bad} NaN or infinite coordinates")
    label = label.astype(np.float64)
    if label.size and not (label == np.round(label)).all():
        raise DataError(f"{path}: 'label' holds non-integer values")
    y = torch.from_numpy(label.astype(np.int64))
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{path}: labels span [{int(y.min())}, {int(y.max())}] but must be in [0, {num_classes})")
    return x, y


def _check_num_points(num_points: int) -> int:
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise DataError(f"num_points must be a positive integer, got {num_points!r}")
    return num_points


def _root(root: str | Path | None, what: str) -> Path:
    if root is None:
        raise DataError(f"{what} needs root= pointing to its folder")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{what} root {str(path)!r} is not a folder")
    return path


def _ply_index(name: str) -> int:
    match = re.search(r"(\d+)\.h5$", name)
    return int(match.group(1)) if match else 0


def load_modelnet40(root: str | Path, *, num_points: int = 1024) -> tuple[Dataset, Dataset]:
    """(train, test) from ModelNet40's HDF5 release: x (N, num_points, 3), y (N,) in 0..39.

    ``root`` is the ``modelnet40_ply_hdf5_2048`` folder or its parent.
    """
    num_points = _check_num_points(num_points)
    path = _root(root, "ModelNet40")
    if not any(path.glob("ply_data_*.h5")) and (path / MODELNET40_FOLDER).is_dir():
        path = path / MODELNET40_FOLDER
    train_files = sorted(path.glob("ply_data_train*.h5"), key=lambda p: _ply_index(p.name))
    test_files = sorted(path.glob("ply_data_test*.h5"), key=lambda p: _ply_index(p.name))
    if not train_files or not test_files:
        raise DataError(
            f"no ModelNet40 files in {str(path)!r}: expected 'ply_data_train*.h5' and 'ply_data_test*.h5' "
            f"in it or in its '{MODELNET40_FOLDER}' folder"
        )
    num_classes, class_names = 40, [str(i) for i in range(40)]
    names_file = path / "shape_names.txt"
    if names_file.is_file():
        lines = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
        if len(lines) != num_classes:
            raise DataError(f"{names_file} lists {len(lines)} class names; expected {num_classes}")
        class_names = lines
    parts = []
    for files in (train_files, test_files):
        read = [_read_h5(f, num_points=num_points, num_classes=num_classes) for f in files]
        parts.append(
            Dataset(
                x=torch.cat([x for x, _ in read]),
                y=torch.cat([y for _, y in read]),
                num_classes=num_classes,
                class_names=list(class_names),
                name="modelnet40",
            )
        )
    return parts[0], parts[1]


def load_scanobjectnn(
    root: str | Path, *, variant: str = "PB_T50_RS", num_points: int = 1024
) -> tuple[Dataset, Dataset]:
    """(train, test) from ScanObjectNN's h5 files: x (N, num_points, 3), y (N,) in 0..14.

    ``variant`` is ``"PB_T50_RS"`` (default), ``"OBJ_BG"`` or ``"OBJ_ONLY"``. ``root`` is the folder holding
    the variant's two files or its parent holding ``main_split/`` (``main_split_nobg/`` for OBJ_ONLY).
    """
    if variant not in SCANOBJECTNN_VARIANTS:
        raise DataError(f"unknown ScanObjectNN variant {variant!r}; choose one of {list(SCANOBJECTNN_VARIANTS)}")
    num_points = _check_num_points(num_points)
    sub, train_name, test_name = SCANOBJECTNN_VARIANTS[variant]
    path = _root(root, "ScanObjectNN")
    if not (path / train_name).is_file() and (path / sub).is_dir():
        path = path / sub
    missing = [n for n in (train_name, test_name) if not (path / n).is_file()]
    if missing:
        raise DataError(
            f"ScanObjectNN {variant} files missing in {str(path)!r}: expected {missing} in it or in its '{sub}' folder"
        )
    k = len(SCANOBJECTNN_CLASSES)
    out = []
    for name in (train_name, test_name):
        x, y = _read_h5(path / name, num_points=num_points, num_classes=k)
        out.append(Dataset(x=x, y=y, num_classes=k, class_names=list(SCANOBJECTNN_CLASSES), name="scanobjectnn"))
    return out[0], out[1]


@DATA_SOURCES.register("shapes")
def _shapes_source(*, root: str | None, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    train, test = load_shapes(test_fraction=test_fraction, seed=seed)
    # The procedural set comes grouped by class: shuffle the test split so that max_samples and the report's
    # examples see every class (training shuffles its own batches).
    return train, test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(seed)))


@DATA_SOURCES.register("modelnet40")
def _modelnet40_source(*, root: str | None, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    return load_modelnet40(root)  # type: ignore[arg-type]  (load_modelnet40 names a missing root itself)


@DATA_SOURCES.register("scanobjectnn")
def _scanobjectnn_source(*, root: str | None, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    return load_scanobjectnn(root)  # type: ignore[arg-type]
