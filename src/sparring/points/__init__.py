"""Point clouds: procedural shapes and ModelNet40 / ScanObjectNN loaders, PointNet and DGCNN, intrinsic
geometric features (kNN PCA curvature, normals, graph diffusion) and geometry-preserving perturbations.

Point clouds are tensors (B, N, 3) of xyz coordinates, or (B, N, 3 + F) with per-point features after the
coordinates. Attacks move the coordinates through the same core as images.
"""
