"""Point clouds: procedural shapes and ModelNet40 / ScanObjectNN loaders, PointNet and DGCNN, intrinsic
geometric features (kNN PCA curvature, normals, graph diffusion), geometry-preserving perturbations, the
point-set threat and point attacks (saliency dropping, adding, kNN-smooth PGD), input defences (SOR, SRS) and
the MAPR objective.

Point clouds are tensors (B, N, 3) of xyz coordinates, or (B, N, 3 + F) with per-point features after the
coordinates. Attacks move the coordinates through the same core as images.
"""

import sparring.points.attacks  # noqa: F401  (registers point_drop, point_add, knn)
import sparring.points.report  # noqa: F401  (registers the point-cloud example figure)
from sparring.points.data import (
    SHAPES,
    farthest_point_sample,
    fill_removed,
    gather_points,
    load_modelnet40,
    load_scanobjectnn,
    load_shapes,
    nearest_kept,
    normalize_unit_sphere,
    procedural_shapes,
    random_sample,
)
from sparring.points.defences import (
    IntrinsicFeatures,
    OutlierRemoval,
    RandomResampling,
    features_detached,
)
from sparring.points.geometry import (
    intrinsic_features,
    knn,
    local_pca,
    normals,
    surface_variation,
    tangent_jitter,
    with_features,
)
from sparring.points.mapr import MAPR
from sparring.points.models import DGCNN, PointNet
from sparring.points.task import PointsRunConfig, PointsTask
from sparring.points.threat import PointSet

__all__ = [
    "DGCNN", "IntrinsicFeatures", "MAPR", "PointsRunConfig", "PointsTask", "OutlierRemoval", "PointNet", "PointSet",
    "RandomResampling", "SHAPES",
    "farthest_point_sample", "features_detached", "fill_removed", "gather_points", "intrinsic_features", "knn",
    "load_modelnet40", "load_scanobjectnn", "load_shapes", "local_pca", "nearest_kept", "normalize_unit_sphere",
    "normals", "procedural_shapes", "random_sample", "surface_variation", "tangent_jitter", "with_features",
]
