r"""Intrinsic point-cloud geometry for MAPR: kNN, local PCA, surface variation, normals, graph diffusion, and
geometry-preserving perturbations. Point clouds are (B, N, 3); everything is batched, stays on the input's
device and dtype, and is differentiable with respect to the coordinates (``methods.md`` §6.3: attacks must
back-propagate through the feature extraction, or the evaluation is gradient-masked).

Local PCA (Pauly, Gross & Kobbelt, "Efficient simplification of point-sampled surfaces", VIS 2002). For the
k nearest points N_k(i) of p_i (p_i itself included) with mean p̄_i:

    C_i = (1/k) Σ_{j∈N_k(i)} (p_j − p̄_i)(p_j − p̄_i)ᵀ,   eigenvalues λ0 ≤ λ1 ≤ λ2, eigenvectors v0, v1, v2

    surface variation  σ_i = λ0 / (λ0 + λ1 + λ2)      (0 on a plane, 1/3 for isotropic noise)
    linearity          (λ2 − λ1) / λ2,   planarity (λ1 − λ0) / λ2     (Demantké et al. 2011 dimensionality)
    normal             v0, oriented away from the cloud's centroid; tangent plane span(v1, v2)

Diffusion (the "cheaper multi-scale diffusion" of ``methods.md`` §6.2; Coifman & Lafon, "Diffusion maps",
2006). On the kNN graph (self excluded) with Gaussian weights w_ij = exp(−‖p_i − p_j‖²/s²), s² the mean kNN
squared distance of the cloud, the random-walk operator is P = D⁻¹W (rows sum to 1) and the normalised
random-walk Laplacian L = I − P. The lazy diffusion operator is A = I − αL = (1 − α) I + α P, and the feature
at scale s is the displacement ‖p_i − (Aˢ p)_i‖ (α = 1 gives Pˢ p). A is applied by gathering the k
neighbours, never as a dense N×N matrix, so memory is O(B·N·k) beyond the kNN search.

kNN search builds one (B, N, N) squared-distance matrix without autograd (indices are discrete); the
distances returned are recomputed from the gathered neighbours, so they are exact and carry gradients
(``torch.cdist`` would give NaN gradients at the zero self-distance).

Eigen-decomposition gradients. ``torch.linalg.eigh``'s backward divides by λ_j − λ_i, which is 0/0 or huge
for (near-)degenerate spectra: the two tangent eigenvalues of an evenly sampled plane, all three on a
symmetric neighbourhood. :func:`sym_eig` runs ``eigh`` forward and uses the same analytic backward with a
Lorentzian-broadened gap, 1/(λ_j − λ_i) → (λ_j − λ_i)/((λ_j − λ_i)² + ε²), ε = ``eig_eps``·trace(C_i). The
eigenvalue part of the gradient, dλ_m = v_mᵀ dC v_m, is exact and never divides, so σ (and everything built
from eigenvalues only) has exact gradients; eigenvector gradients (normals) are exact up to O((ε/gap)²)
where the gap is resolved and bounded where it is not (there the eigenvectors are not defined anyway).

Geometry-preserving perturbations (``methods.md`` §6.2, as in ITA / SI-Adv): tangent-plane jitter
p_i += a_i v1_i + b_i v2_i with a, b ~ N(0, (c·r_i)²) and r_i the mean kNN distance (no normal-direction
noise), a small SO(3) rotation, isotropic scaling, and random resampling. Randomness flows through an
explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "diffusion_features",
    "gather_neighbors",
    "intrinsic_features",
    "knn",
    "linearity",
    "local_pca",
    "normals",
    "planarity",
    "random_rotation",
    "random_scale",
    "resample",
    "rotation_matrix",
    "surface_variation",
    "sym_eig",
    "tangent_jitter",
    "with_features",
]


def _check_points(points: Tensor, *, name: str = "points") -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be a (B, N, 3) tensor of xyz coordinates, got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {points.dtype}; call .float() first")


def _check_k(k: int, n: int, *, include_self: bool) -> None:
    limit = n if include_self else n - 1
    if not 1 <= k <= limit:
        who = "including" if include_self else "excluding"
        raise ValueError(f"k={k} neighbours ({who} the point itself) need 1 <= k <= {limit} for N={n} points")


def gather_neighbors(x: Tensor, idx: Tensor) -> Tensor:
    """Per-point rows of ``x`` (B, N, C) at neighbour indices ``idx`` (B, M, k) -> (B, M, k, C); differentiable."""
    b, m, k = idx.shape
    flat = idx.reshape(b, m * k, 1).expand(b, m * k, x.shape[-1])
    return x.gather(1, flat).reshape(b, m, k, x.shape[-1])


def knn(points: Tensor, k: int, *, include_self: bool = True) -> tuple[Tensor, Tensor]:
    """The k nearest neighbours of every point, nearest first.

    Returns ``idx`` (B, N, k) long and ``dist2`` (B, N, k) squared distances. With ``include_self`` (the
    default, as local PCA uses it) the point itself is among its neighbours, normally first; without it the
    point is masked out (the diffusion graph has no self-loops). ``dist2`` is differentiable in ``points``.
    """
    _check_points(points)
    _check_k(k, points.shape[1], include_self=include_self)
    with torch.no_grad():
        sq = points.square().sum(-1)  # (B, N)
        d2 = torch.baddbmm(sq.unsqueeze(2) + sq.unsqueeze(1), points, points.transpose(1, 2), alpha=-2.0)
        if not include_self:
            d2.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        idx = d2.topk(k, dim=-1, largest=False, sorted=True).indices  # (B, N, k)
    # Exact, differentiable distances from the gathered neighbours (the expanded form above cancels badly).
    dist2 = (gather_neighbors(points, idx) - points.unsqueeze(2)).square().sum(-1)
    return idx, dist2


class _SymEig(torch.autograd.Function):
    """``eigh`` with a broadened backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, mat: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        values, vectors = torch.linalg.eigh(mat)
        ctx.save_for_backward(values, vectors, eps)
        return values, vectors

    @staticmethod
    def backward(ctx, grad_values: Tensor | None, grad_vectors: Tensor | None) -> tuple[Tensor | None, None]:  # type: ignore[override]
        values, vectors, eps = ctx.saved_tensors
        inner = torch.zeros_like(vectors)
        if grad_values is not None:
            inner = inner + torch.diag_embed(grad_values)
        if grad_vectors is not None:
            gap = values.unsqueeze(-2) - values.unsqueeze(-1)  # [i, j] = λ_j − λ_i, 0 on the diagonal
            inv_gap = gap / (gap.square() + eps[..., None, None].square())
            inner = inner + inv_gap * (vectors.transpose(-1, -2) @ grad_vectors)
        grad = vectors @ inner @ vectors.transpose(-1, -2)
        # The input is symmetric, so only the symmetric part of the gradient is meaningful.
        return 0.5 * (grad + grad.transpose(-1, -2)), None


def sym_eig(mat: Tensor, *, eig_eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Eigenvalues (..., n) ascending and eigenvectors (..., n, n) as columns of symmetric ``mat`` (..., n, n).

    Forward is ``torch.linalg.eigh``; the backward broadens the eigen-gaps by ``eig_eps``·trace so that
    degenerate spectra give finite gradients (module docstring). Half-precision inputs are decomposed in fp32,
    which ``eigh`` needs, and cast back.
    """
    dtype = mat.dtype
    work = mat.float() if dtype in (torch.float16, torch.bfloat16) else mat
    scale = work.diagonal(dim1=-2, dim2=-1).sum(-1).abs().detach()
    eps = eig_eps * scale + torch.finfo(work.dtype).tiny
    values, vectors = _SymEig.apply(work, eps)
    return values.to(dtype), vectors.to(dtype)


def _covariance(points: Tensor, idx: Tensor) -> Tensor:
    """kNN covariance C_i (B, N, 3, 3) over the neighbourhoods ``idx`` (B, N, k)."""
    nbrs = gather_neighbors(points, idx)  # (B, N, k, 3)
    centred = nbrs - nbrs.mean(dim=2, keepdim=True)
    return centred.transpose(-1, -2) @ centred / idx.shape[-1]


def local_pca(points: Tensor, k: int, *, eig_eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """PCA of every point's k-neighbourhood (the point included): eigenvalues (B, N, 3) ascending and
    eigenvectors (B, N, 3, 3) as columns (``[..., :, 0]`` is the normal direction)."""
    idx, _ = knn(points, k)
    return sym_eig(_covariance(points, idx), eig_eps=eig_eps)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # Coincident neighbourhoods have a zero spectrum; keep the ratio (and its gradient) finite there.
    return num / den.clamp_min(torch.finfo(den.dtype).tiny ** 0.5)


def surface_variation(points: Tensor, ks: Sequence[int] = (8, 16, 32), *, eig_eps: float = 1e-6) -> Tensor:
    """σ = λ0/(λ0+λ1+λ2) at each neighbourhood size in ``ks`` -> (B, N, len(ks)); one kNN search serves all."""
    _check_points(points)
    if len(ks) == 0:
        raise ValueError("ks must name at least one neighbourhood size")
    idx, _ = knn(points, max(ks))  # sorted nearest first, so the first k columns are the k-neighbourhood
    out = []
    for k in ks:
        values, _ = sym_eig(_covariance(points, idx[..., :k]), eig_eps=eig_eps)
        out.append(_ratio(values[..., 0], values.sum(-1)))
    return torch.stack(out, dim=-1)


def linearity(points: Tensor, *, k: int = 16) -> Tensor:
    """(λ2 − λ1)/λ2 per point -> (B, N): 1 on a line, 0 on a plane or in isotropic noise."""
    values, _ = local_pca(points, k)
    return _ratio(values[..., 2] - values[..., 1], values[..., 2])


def planarity(points: Tensor, *, k: int = 16) -> Tensor:
    """(λ1 − λ0)/λ2 per point -> (B, N): 1 on an isotropically sampled plane, 0 on a line or in noise."""
    values, _ = local_pca(points, k)
    return _ratio(values[..., 1] - values[..., 0], values[..., 2])


def normals(points: Tensor, *, k: int = 16) -> Tensor:
    """Unit PCA normals (B, N, 3): the smallest-eigenvalue eigenvector, flipped to point away from the
    cloud's centroid (right for convex, star-shaped clouds; PCA alone cannot fix the sign)."""
    _, vectors = local_pca(points, k)
    n = vectors[..., 0]  # (B, N, 3)
    outward = points - points.mean(dim=1, keepdim=True)
    sign = torch.where((n * outward).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(n.dtype)
    return n * sign


def diffusion_features(points: Tensor, *, k: int = 16, steps: Sequence[int] = (1, 2, 4), alpha: float = 0.5) -> Tensor:
    """Displacements ‖p_i − (Aˢ p)_i‖ under lazy kNN-graph diffusion A = (1 − α)I + αP -> (B, N, len(steps))."""
    _check_points(points)
    if len(steps) == 0 or min(steps) < 1:
        raise ValueError(f"steps must be positive diffusion step counts, got {tuple(steps)}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1] (1 is the plain random walk P), got {alpha}")
    idx, dist2 = knn(points, k, include_self=False)
    scale2 = dist2.mean(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(points.dtype).tiny)  # s², per cloud
    # Row-normalised Gaussian weights; softmax avoids 0/0 when all weights of an isolated point underflow.
    walk = torch.softmax(-dist2 / scale2, dim=-1)  # (B, N, k), rows of P
    wanted = set(steps)
    x, out = points, {}
    for s in range(1, max(steps) + 1):
        x = (1.0 - alpha) * x + alpha * (walk.unsqueeze(-1) * gather_neighbors(x, idx)).sum(2)
        if s in wanted:
            sq = (points - x).square().sum(-1)
            # sqrt'(0) is infinite; the clamp keeps the gradient finite for a point that does not move.
            out[s] = sq.clamp_min(torch.finfo(points.dtype).tiny).sqrt()
    return torch.stack([out[s] for s in steps], dim=-1)


def intrinsic_features(
    points: Tensor,
    *,
    ks: Sequence[int] = (8, 16, 32),
    diffusion_steps: Sequence[int] = (1, 2, 4),
    k_diffusion: int = 16,
    alpha: float = 0.5,
) -> Tensor:
    """[σ at each k in ``ks``, diffusion displacement at each step] -> (B, N, len(ks) + len(diffusion_steps))."""
    sigma = surface_variation(points, ks)
    diffusion = diffusion_features(points, k=k_diffusion, steps=diffusion_steps, alpha=alpha)
    return torch.cat([sigma, diffusion], dim=-1)


def with_features(
    points: Tensor,
    *,
    ks: Sequence[int] = (8, 16, 32),
    diffusion_steps: Sequence[int] = (1, 2, 4),
    k_diffusion: int = 16,
    alpha: float = 0.5,
) -> Tensor:
    """The network input [xyz, intrinsic features] -> (B, N, 3 + F), recomputed from (and differentiable in) xyz."""
    feats = intrinsic_features(points, ks=ks, diffusion_steps=diffusion_steps, k_diffusion=k_diffusion, alpha=alpha)
    return torch.cat([points, feats], dim=-1)


# --- geometry-preserving perturbations -------------------------------------------------------------------


def _sample(kind: str, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal (``"normal"``) or uniform [0, 1) noise drawn on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    dtype = torch.promote_types(like.dtype, torch.float32)
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=generator, device=device, dtype=dtype).to(like.device, like.dtype)


def rotation_matrix(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: rotations (B, 3, 3) by ``angle`` (B,) radians about ``axis`` (B, 3) (normalised here)."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)  # [axis]×
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    sin, cos = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return eye + sin * cross + (1.0 - cos) * (cross @ cross)


def tangent_jitter(
    points: Tensor, *, k: int = 16, scale: float = 0.2, generator: torch.Generator | None = None
) -> Tensor:
    """Slide points along their PCA tangent planes: p_i + a_i v1_i + b_i v2_i, a, b ~ N(0, (scale·r_i)²).

    r_i is the mean distance to the k nearest other points. The frame and radii are computed without
    gradients (the noise is an augmentation, not a function to differentiate); the result is differentiable
    in ``points`` through the identity path.
    """
    _check_points(points)
    with torch.no_grad():
        _, vectors = local_pca(points, k + 1)  # k neighbours plus the point itself
        _, dist2 = knn(points, k, include_self=False)
        radius = dist2.sqrt().mean(-1, keepdim=True)  # (B, N, 1)
        coeff = _sample("normal", (*points.shape[:2], 2), points, generator) * (scale * radius)
        offset = coeff[..., :1] * vectors[..., 1] + coeff[..., 1:] * vectors[..., 2]
    return points + offset


def random_rotation(points: Tensor, *, max_angle: float, generator: torch.Generator | None = None) -> Tensor:
    """Rotate each cloud about the origin by a uniform angle in [−max_angle, max_angle] radians about a uniformly
    random axis (clouds are centred, so this is a small SO(3) move of the shape)."""
    _check_points(points)
    b = points.shape[0]
    axis = _sample("normal", (b, 3), points, generator)
    angle = (2.0 * _sample("uniform", (b,), points, generator) - 1.0) * max_angle
    rot = rotation_matrix(axis, angle)
    return points @ rot.transpose(1, 2)


def random_scale(
    points: Tensor, *, low: float = 0.8, high: float = 1.25, generator: torch.Generator | None = None
) -> Tensor:
    """Scale each cloud isotropically (about the origin) by a factor drawn uniformly from [low, high]."""
    _check_points(points)
    if not 0.0 < low <= high:
        raise ValueError(f"scale bounds must satisfy 0 < low <= high, got low={low}, high={high}")
    factor = low + (high - low) * _sample("uniform", (points.shape[0], 1, 1), points, generator)
    return points * factor


def resample(points: Tensor, m: int, *, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random subset of ``m`` distinct points of each cloud -> (B, m, 3) (argsort of uniform noise)."""
    _check_points(points)
    n = points.shape[1]
    if not 1 <= m <= n:
        raise ValueError(f"cannot resample m={m} distinct points from clouds of N={n} points; use 1 <= m <= N")
    idx = _sample("uniform", points.shape[:2], points, generator).argsort(dim=1)[:, :m]  # (B, m)
    return points.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))
