"""Intrinsic point-cloud geometry (methods.md §6.4): PCA curvature on planes and spheres, normals, tangent jitter,
gradients through the features (finite, non-zero, equal to finite differences), batch independence, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from sparring.points.geometry import (
    diffusion_features,
    intrinsic_features,
    knn,
    linearity,
    local_pca,
    normals,
    planarity,
    random_rotation,
    random_scale,
    resample,
    rotation_matrix,
    surface_variation,
    sym_eig,
    tangent_jitter,
    with_features,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def fibonacci_sphere(n: int, radius: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n nearly uniform points on a sphere -> (1, n, 3)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    rho = (1.0 - z**2).sqrt()
    pts = torch.stack([rho * phi.cos(), rho * phi.sin(), z], dim=-1) * radius
    return pts.to(dtype).unsqueeze(0)


def random_rot(seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return rotation_matrix(torch.randn(1, 3, generator=g), torch.rand(1, generator=g) * math.pi).to(dtype)[0]


def tilted_plane(n: int = 400, *, grid: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on a plane through the origin with a generic normal -> ((1, n, 3), normal (3,))."""
    if grid:
        side = int(math.isqrt(n))
        u = torch.linspace(-1, 1, side)
        xy = torch.cartesian_prod(u, u)
    else:
        xy = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    flat = torch.cat([xy, torch.zeros(len(xy), 1)], dim=-1)
    rot = random_rot(seed + 1)
    return (flat @ rot.T).unsqueeze(0), rot[:, 2]


def random_cloud(b: int = 2, n: int = 64, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- kNN and PCA -----------------------------------------------------------------------------------------


def test_knn_matches_brute_force_and_self_handling():
    pts = random_cloud(2, 50)
    idx, d2 = knn(pts, 5)
    ref = torch.cdist(pts, pts).square()
    assert idx.shape == d2.shape == (2, 50, 5)
    assert torch.equal(idx[..., 0], torch.arange(50).expand(2, 50))  # self first
    torch.testing.assert_close(d2, ref.gather(2, idx), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d2, ref.topk(5, dim=-1, largest=False).values, atol=1e-5, rtol=1e-5)
    idx2, d2b = knn(pts, 5, include_self=False)
    assert not (idx2 == torch.arange(50)[None, :, None]).any()
    torch.testing.assert_close(d2b, d2b.sort(-1).values)
    with pytest.raises(ValueError, match="k=50"):
        knn(pts, 50, include_self=False)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        knn(pts[0], 4)


def test_local_pca_reconstructs_covariance():
    pts = random_cloud(1, 40, dtype=torch.float64)
    values, vectors = local_pca(pts, 10)
    assert values.shape == (1, 40, 3) and vectors.shape == (1, 40, 3, 3)
    assert (values[..., 1:] >= values[..., :-1]).all()
    idx, _ = knn(pts, 10)
    nb = pts[0][idx[0, 7]]
    cov = (nb - nb.mean(0)).T @ (nb - nb.mean(0)) / 10
    torch.testing.assert_close(vectors[0, 7] @ torch.diag(values[0, 7]) @ vectors[0, 7].T, cov)


# --- §6.4 geometry checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [False, True])
def test_plane_has_zero_variation_and_the_plane_normal(grid):
    pts, normal = tilted_plane(400, grid=grid)
    sigma = surface_variation(pts)
    assert sigma.abs().max() < 1e-5
    n = normals(pts)
    assert (n @ normal).abs().min() > 0.999
    assert planarity(pts).mean() > 0.5 and linearity(pts).mean() < 0.5


def test_sphere_variation_grows_with_k_over_r():
    # Fixed sampling: a larger neighbourhood sees more of the curvature.
    sphere = fibonacci_sphere(1000)
    sigma = surface_variation(sphere, (8, 16, 32)).mean(1)[0]
    assert sigma[0] < sigma[1] < sigma[2]
    # Small caps: σ ≈ a²/(24 R²) with cap radius a² = 4kR²/N, i.e. k/(6N).
    torch.testing.assert_close(sigma[1], torch.tensor(16 / 6000), rtol=0.25, atol=0)
    # Fixed sampling density (points per area) and k: a smaller sphere is more curved at that scale.
    big = surface_variation(fibonacci_sphere(2000, radius=1.0), (16,)).mean()
    small = surface_variation(fibonacci_sphere(500, radius=0.5), (16,)).mean()
    assert small > 3 * big
    # σ is scale-invariant: the same sampling at another radius gives the same values.
    torch.testing.assert_close(surface_variation(sphere * 3.0, (16,)), surface_variation(sphere, (16,)))


def test_sphere_normals_match_analytic_outward_normals():
    sphere = fibonacci_sphere(800, radius=2.0)
    cos = (normals(sphere, k=16) * sphere / 2.0).sum(-1)
    assert cos.mean() > 0.99 and cos.min() > 0.95  # signed: outward everywhere


def test_tangent_jitter_stays_on_sphere_to_first_order():
    sphere = fibonacci_sphere(1000)
    moved = tangent_jitter(sphere, k=16, scale=0.2, generator=torch.Generator().manual_seed(0))
    tangential = (moved - sphere).norm(dim=-1)
    radial = (moved.norm(dim=-1) - 1.0).abs()
    assert tangential.mean() > 0.005  # it does move
    assert radial.mean() / tangential.mean() < 0.1
    # Isotropic noise of the same size leaves the sphere far more.
    iso = sphere + torch.randn(sphere.shape, generator=torch.Generator().manual_seed(1)) * tangential.mean() / 2**0.5
    assert (iso.norm(dim=-1) - 1.0).abs().mean() > 5 * radial.mean()


# --- gradients ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["sphere", "plane", "grid_plane", "random"])
def test_feature_gradients_are_finite_and_nonzero(shape):
    pts = {
        "sphere": lambda: fibonacci_sphere(256),
        "plane": lambda: tilted_plane(256)[0],
        "grid_plane": lambda: tilted_plane(256, grid=True)[0],  # exactly degenerate tangent eigenvalues
        "random": lambda: random_cloud(1, 256),
    }[shape]().requires_grad_(True)
    feats = intrinsic_features(pts)
    assert feats.shape == (1, 256, 6)
    weights = torch.rand(feats.shape, generator=torch.Generator().manual_seed(0))
    for f in range(feats.shape[-1]):  # every feature on its own, so no term can hide another's NaN
        (grad,) = torch.autograd.grad((feats[..., f] * weights[..., f]).sum(), pts, retain_graph=True)
        assert torch.isfinite(grad).all(), f"feature {f}"
        assert grad.abs().sum() > 0, f"feature {f}"
    (grad,) = torch.autograd.grad(normals(pts).sum(), pts)  # eigenvector gradients
    assert torch.isfinite(grad).all()


def test_eigen_gradients_finite_on_fully_degenerate_matrix():
    mat = torch.eye(3, dtype=torch.float64).expand(4, 3, 3).clone().requires_grad_(True)
    values, vectors = sym_eig(mat)
    (grad,) = torch.autograd.grad(values[:, 0].sum() + vectors.sum(), mat)
    assert torch.isfinite(grad).all()


def test_normal_gradients_finite_on_isotropic_lattice_where_plain_eigh_fails():
    # Interior points of a cubic lattice with k = 7 (self + 6 axis neighbours) have C ∝ I: all gaps are 0.
    u = torch.arange(5.0)
    pts = torch.cartesian_prod(u, u, u).unsqueeze(0).requires_grad_(True)
    (grad,) = torch.autograd.grad(normals(pts, k=7).sum(), pts)
    assert torch.isfinite(grad).all()
    # The same covariances through plain torch.linalg.eigh: its backward divides by the zero gaps.
    idx, _ = knn(pts, 7)
    nb = pts[0][idx[0]]
    cov = (nb - nb.mean(1, keepdim=True)).transpose(1, 2) @ (nb - nb.mean(1, keepdim=True)) / 7
    (plain,) = torch.autograd.grad(torch.linalg.eigh(cov)[1][..., 0].sum(), pts)
    assert not torch.isfinite(plain).all()


def test_gradients_match_finite_differences_float64():
    pts = random_cloud(1, 24, seed=3, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: surface_variation(p, (8,)), (pts,))
    assert torch.autograd.gradcheck(lambda p: diffusion_features(p, k=6, steps=(1, 3)), (pts,))
    assert torch.autograd.gradcheck(lambda p: normals(p, k=8), (pts,), atol=1e-5)


# --- batch independence, invariance, shapes -------------------------------------------------------------


def test_batch_independence():
    batch = random_cloud(3, 128, seed=4)
    alone = with_features(batch[1:2])
    torch.testing.assert_close(with_features(batch)[1:2], alone)
    mates = torch.cat([batch[:1] * 5.0, batch[1:2], batch[2:] + 3.0])
    torch.testing.assert_close(with_features(mates)[1:2], alone)


def test_features_are_rigid_motion_invariant():
    pts = random_cloud(2, 200, seed=5, dtype=torch.float64)
    moved = pts @ random_rot(7, torch.float64).T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(intrinsic_features(moved), intrinsic_features(pts), atol=1e-9, rtol=1e-7)
    sphere = fibonacci_sphere(500)
    rotated = sphere @ random_rot(8).T
    torch.testing.assert_close(intrinsic_features(rotated), intrinsic_features(sphere), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(dtype):
    pts = random_cloud(2, 100, dtype=dtype)
    feats = intrinsic_features(pts, ks=(8, 16), diffusion_steps=(1, 2, 4, 8), k_diffusion=10)
    assert feats.shape == (2, 100, 6) and feats.dtype == dtype
    assert with_features(pts).shape == (2, 100, 9)
    torch.testing.assert_close(with_features(pts)[..., :3], pts)
    assert surface_variation(pts).dtype == dtype and normals(pts).dtype == dtype
    sigma = surface_variation(pts)
    assert ((sigma >= -1e-6) & (sigma <= 1 / 3 + 1e-6)).all()
    n = normals(pts)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(2, 100, dtype=dtype))
    diff = diffusion_features(pts)
    assert diff.shape == (2, 100, 3) and (diff >= 0).all()
    with pytest.raises(ValueError, match="alpha"):
        diffusion_features(pts, alpha=0.0)


def test_bfloat16_runs():
    pts = random_cloud(1, 64).bfloat16()
    feats = with_features(pts)
    assert feats.dtype == torch.bfloat16 and torch.isfinite(feats.float()).all()


# --- perturbations --------------------------------------------------------------------------------------


def test_perturbations_are_seeded_and_shaped():
    pts = random_cloud(3, 100, seed=6)
    for fn in (
        lambda g: tangent_jitter(pts, generator=g),
        lambda g: random_rotation(pts, max_angle=0.2, generator=g),
        lambda g: random_scale(pts, low=0.8, high=1.2, generator=g),
        lambda g: resample(pts, 40, generator=g),
    ):
        a, b = fn(torch.Generator().manual_seed(1)), fn(torch.Generator().manual_seed(1))
        c = fn(torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.dtype == pts.dtype and a.shape[0] == 3 and a.shape[-1] == 3


def test_random_rotation_is_small_and_rigid():
    pts = random_cloud(8, 50, seed=7, dtype=torch.float64)
    out = random_rotation(pts, max_angle=0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.norm(dim=-1), pts.norm(dim=-1))
    torch.testing.assert_close(torch.cdist(out, out), torch.cdist(pts, pts))
    # A rotation by θ moves p by at most 2 sin(θ/2)|p|.
    assert ((out - pts).norm(dim=-1) <= 2 * math.sin(0.05) * pts.norm(dim=-1) + 1e-9).all()
    rot = rotation_matrix(torch.randn(5, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64))


def test_random_scale_is_isotropic_and_bounded():
    pts = random_cloud(16, 30, seed=8, dtype=torch.float64)
    out = random_scale(pts, low=0.9, high=1.1, generator=torch.Generator().manual_seed(0))
    ratio = out.norm(dim=-1) / pts.norm(dim=-1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert ((ratio >= 0.9) & (ratio <= 1.1)).all()


def test_resample_draws_distinct_points_of_each_cloud():
    pts = random_cloud(4, 60, seed=9)
    out = resample(pts, 25, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 25, 3)
    for b in range(4):  # test-side check only
        match = (out[b, :, None, :] == pts[b, None, :, :]).all(-1)  # (25, 60)
        assert (match.sum(1) == 1).all() and match.any(0).sum() == 25
    with pytest.raises(ValueError, match="m=61"):
        resample(pts, 61)
