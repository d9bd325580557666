"""Point-cloud classifiers: PointNet and a compact DGCNN, registered as ``"pointnet"`` and ``"dgcnn"``.

Both map a batch of clouds (B, N, C) to logits (B, K). C = 3 is xyz; C = 3 + F appends F per-point features
after the coordinates. ``input_shape`` is (N, C); N is nominal, since both models pool over the points and so
accept any number of them (DGCNN needs at least ``k`` at build time). Both are invariant to the order of the
points and differentiable in the coordinates, which is what point-cloud attacks perturb.

Both take two input-side settings (:mod:`sparring.points.defences`): ``intrinsic=True`` appends MAPR's
intrinsic features (curvature at three scales, graph diffusion), recomputed from xyz in every forward pass so
that attacks differentiate through them; ``defence="sor"`` / ``"srs"`` puts statistical outlier removal or
random resampling in front of the network.

PointNet (Qi, Su, Mo & Guibas, "PointNet: Deep Learning on Point Sets for 3D Classification and
Segmentation", CVPR 2017): a shared per-point MLP 64-64-128-1024 with BatchNorm and ReLU, a global max pool
(the symmetric function that makes it order-invariant), then FC 512-256 with dropout (keep ratio 0.7, i.e.
``dropout=0.3``) and a linear head. The paper's input and feature transform nets (T-Nets) add ~0.3-0.7 points
on ModelNet40, so the input T-Net is an option (``input_transform=True``) and the feature T-Net is left out.
With the default ``width=64`` the channels are the paper's and the model has ~0.8M parameters.

DGCNN (Wang, Sun, Liu, Sarma, Bronstein & Solomon, "Dynamic Graph CNN for Learning on Point Clouds",
ACM TOG 2019): EdgeConv layers; each builds a kNN graph in the current feature space (the graph is
*dynamic*, recomputed per layer), applies a shared MLP to the edge features [x_i, x_j − x_i] and takes the max
over the k neighbours. The outputs of all EdgeConv layers are concatenated, lifted per point to ``embed``
channels, and pooled by global max and mean. The paper uses k = 20, four EdgeConv layers (64, 64, 128, 256),
embed 1024 and FC 512-256; the default here is a compact CPU-friendly variant: k = 16, three EdgeConv layers
(64, 64, 128) at ``width=64``, embed 512, FC 256, dropout 0.5 (the paper's), LeakyReLU(0.2) as in the
authors' code; ~0.4M parameters. The kNN indices are not differentiable, but the gathered features are, so
gradients reach every coordinate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.models.base import MODELS, check_num_classes
from sparring.points.defences import PointInput


def _point_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int]:
    """(N, C) of a point-cloud ``input_shape``; a ConfigError unless C ≥ 3 (xyz first)."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 3:
        raise ConfigError(f"{model} needs a point-cloud input_shape (N, C) with C >= 3 (xyz first), got {shape}")
    return shape[0], shape[1]


def _positive_int(value: object, name: str, model: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{model} {name} must be a positive integer, got {value!r}")
    return value


def _probability(value: object, name: str, model: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{model} {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _flag(value: object, name: str, model: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{model} {name} must be true or false, got {value!r}")
    return value


class _LastDimNorm(nn.Module):
    """BatchNorm over the last (channel) dim of a tensor of any rank: (..., C) -> (..., C).

    The models keep points channel-last (B, N, C) so the per-point MLPs are plain Linear layers; the
    statistics are taken over every leading position, like BatchNorm1d/2d over (B, C, N[, k]).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _mlp(sizes: list[int], *, batch_norm: bool, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear → [BatchNorm] → activation for each consecutive pair of ``sizes``, on the last dim."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(sizes[:-1], sizes[1:], strict=False):
        layers.append(nn.Linear(c_in, c_out, bias=not batch_norm))  # BatchNorm's shift replaces the bias
        if batch_norm:
            layers.append(_LastDimNorm(c_out))
        layers.append(act(0.2) if act is nn.LeakyReLU else act())
    return nn.Sequential(*layers)


class _InputTransform(nn.Module):
    """PointNet's input T-Net: predicts a 3x3 matrix from the cloud and applies it to the xyz coordinates."""

    def __init__(self, *, channels: int, width: int, batch_norm: bool) -> None:
        super().__init__()
        self.points = _mlp([channels, width, 2 * width, 16 * width], batch_norm=batch_norm)
        self.fc = _mlp([16 * width, 512, 256], batch_norm=batch_norm)
        self.out = nn.Linear(256, 9)
        nn.init.zeros_(self.out.weight)  # starts as the identity transform, as in the authors' code
        with torch.no_grad():
            self.out.bias.copy_(torch.eye(3).flatten())

    def forward(self, x: Tensor) -> Tensor:
        g = self.points(x).amax(dim=1)  # (B, N, C) -> (B, 16w)
        t = self.out(self.fc(g)).view(-1, 3, 3)  # (B, 3, 3)
        return torch.cat([x[..., :3] @ t, x[..., 3:]], dim=-1)


@MODELS.register("pointnet")
class PointNet(nn.Module):
    """PointNet (Qi et al., CVPR 2017) for clouds (B, N, C), C = 3 + F; logits (B, K).

    Architecture: per-point MLP w-w-2w-16w (BatchNorm, ReLU) → global max over points → FC 512-256 (BatchNorm,
    ReLU, dropout) → ``head`` Linear(256, K). ``width`` w = 64 gives the paper's 64-64-128-1024 and ~0.8M
    parameters; ``input_transform=True`` adds the 3x3 input T-Net (another ~0.8M). The paper trains with Adam,
    lr 1e-3, batch 32, 250 epochs on 1024-point ModelNet40 clouds (~89% accuracy).
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 64,
        batch_norm: bool = True,
        dropout: float = 0.3,
        input_transform: bool = False,
        intrinsic: bool = False,
        defence: str = "none",
    ) -> None:
        super().__init__()
        _, channels = _point_shape(input_shape, "pointnet")
        check_num_classes(num_classes)
        w = _positive_int(width, "width", "pointnet")
        bn = _flag(batch_norm, "batch_norm", "pointnet")
        p = _probability(dropout, "dropout", "pointnet")
        _flag(input_transform, "input_transform", "pointnet")
        self.input = PointInput(
            channels=channels, intrinsic=_flag(intrinsic, "intrinsic", "pointnet"), defence=defence, model="pointnet"
        )
        channels = self.input.channels
        self.transform = _InputTransform(channels=channels, width=w, batch_norm=bn) if input_transform else None
        self.points = _mlp([channels, w, w, 2 * w, 16 * w], batch_norm=bn)
        self.fc = nn.Sequential(_mlp([16 * w, 512, 256], batch_norm=bn), nn.Dropout(p))
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input(x)  # defence, then [xyz, intrinsic features] when configured
        if self.transform is not None:
            x = self.transform(x)
        g = self.points(x).amax(dim=1)  # (B, N, C) -> (B, N, 16w) -> (B, 16w): max is order-invariant
        return self.head(self.fc(g))  # -> (B, K)


def knn(x: Tensor, k: int) -> Tensor:
    """Indices (B, N, k) of each point's k nearest points (itself included) in feature space x (B, N, D)."""
    with torch.no_grad():  # the indices carry no gradient; skipping the graph saves an (N, N) buffer per layer
        dist = torch.cdist(x, x)  # (B, N, N)
        return dist.topk(min(k, x.shape[1]), dim=-1, largest=False).indices


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of x (B, N, D) at idx (B, N, k) -> (B, N, k, D), batched by flat indexing (differentiable in x)."""
    b, n, d = x.shape
    offset = torch.arange(b, device=x.device).view(b, 1, 1) * n
    return x.reshape(b * n, d)[idx + offset]


class EdgeConv(nn.Module):
    """One EdgeConv layer: h_i = max_j σ(BN(Θ·[x_i, x_j − x_i])) over i's k nearest neighbours j in x.

    Θ·[x_i, x_j − x_i] = (Θ₁ − Θ₂)·x_i + Θ₂·x_j, so both terms are computed once per point and only the sum
    is formed per edge: k times fewer multiply-adds than applying Θ to every (B, N, k, 2D) edge feature, with
    the same function class and parameter count (2D·C_out). In eval mode BatchNorm is a fixed per-channel affine
    map and LeakyReLU is increasing, so the max over neighbours moves inside them (a min where the BatchNorm
    scale is negative): the output and its gradient are unchanged, and no (B, N, k, C_out) tensor is normalized.
    """

    def __init__(self, c_in: int, c_out: int, *, k: int, batch_norm: bool) -> None:
        super().__init__()
        self.k = k
        self.c_out = c_out
        self.proj = nn.Linear(c_in, 2 * c_out, bias=not batch_norm)  # [centre term, neighbour term]
        self.norm = _LastDimNorm(c_out) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, graph: Tensor | None = None) -> Tensor:
        idx = knn(x if graph is None else graph, self.k)  # (B, N, k), from the current features by default
        centre, neighbour = self.proj(x).split(self.c_out, dim=-1)  # (B, N, C_out) each
        if self.training:  # batch statistics are taken over every edge, so form them all
            edges = centre.unsqueeze(2) + _gather(neighbour, idx)  # (B, N, k, C_out)
            return self.act(self.norm(edges)).amax(dim=2)  # (B, N, C_out)
        sign = torch.ones_like(centre[0, 0])  # (C_out,)
        if isinstance(self.norm, _LastDimNorm):  # a negative BatchNorm scale turns the max into a min
            sign = torch.where(self.norm.bn.weight >= 0, 1.0, -1.0).to(centre.dtype)
        differentiable = torch.is_grad_enabled() and neighbour.requires_grad
        with torch.no_grad():
            neighbours = _gather(neighbour, idx) * sign  # (B, N, k, C_out)
            if not differentiable:  # values only: the max suffices
                return self.act(self.norm(centre + neighbours.amax(dim=2) * sign))
            best = neighbours.max(dim=2).indices  # (B, N, C_out); max(dim) is ~3x faster than argmax on CPU
            winner = idx.gather(2, best)  # the winning neighbour's point index, per point and channel
        pooled = neighbour.gather(1, winner)  # differentiable; its backward scatters (B, N, C_out), not k times that
        return self.act(self.norm(centre + pooled))  # (B, N, C_out)


@MODELS.register("dgcnn")
class DGCNN(nn.Module):
    """Compact DGCNN (Wang et al., ACM TOG 2019) for clouds (B, N, C), C = 3 + F; logits (B, K).

    Architecture: EdgeConv(w) → EdgeConv(w) → EdgeConv(2w), each on a kNN graph (``k`` = 16) of its own input
    (the first on xyz only, so appended features do not bend the geometric neighbourhoods) → concat (4w) →
    per-point Linear to ``embed`` = 512 → global max ‖ mean (2·embed) → FC 256 → dropout → ``head``
    Linear(256, K); BatchNorm and LeakyReLU(0.2) throughout. ``width`` w = 64 gives ~0.4M parameters. The
    paper (k = 20, EdgeConv 64-64-128-256, embed 1024, FC 512-256) reaches ~92.9% on ModelNet40 with SGD,
    lr 0.1 cosine-annealed, 250 epochs. Built for clouds of ≥ ``k`` points; a smaller cloud at run time
    takes all its points as each point's neighbours.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        k: int = 16,
        width: int = 64,
        embed: int = 512,
        batch_norm: bool = True,
        dropout: float = 0.5,
        intrinsic: bool = False,
        defence: str = "none",
    ) -> None:
        super().__init__()
        points, channels = _point_shape(input_shape, "dgcnn")
        check_num_classes(num_classes)
        self.input = PointInput(
            channels=channels, intrinsic=_flag(intrinsic, "intrinsic", "dgcnn"), defence=defence, model="dgcnn"
        )
        channels = self.input.channels
        self.k = _positive_int(k, "k", "dgcnn")
        if points < self.k:
            raise ConfigError(f"dgcnn with k={self.k} needs clouds of at least k points, input_shape has {points}")
        w = _positive_int(width, "width", "dgcnn")
        e = _positive_int(embed, "embed", "dgcnn")
        bn = _flag(batch_norm, "batch_norm", "dgcnn")
        p = _probability(dropout, "dropout", "dgcnn")
        self.edges = nn.ModuleList(
            [
                EdgeConv(channels, w, k=self.k, batch_norm=bn),
                EdgeConv(w, w, k=self.k, batch_norm=bn),
                EdgeConv(w, 2 * w, k=self.k, batch_norm=bn),
            ]
        )
        self.embed = _mlp([4 * w, e], batch_norm=bn, act=nn.LeakyReLU)
        self.fc = nn.Sequential(_mlp([2 * e, 256], batch_norm=bn, act=nn.LeakyReLU), nn.Dropout(p))
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input(x)  # defence, then [xyz, intrinsic features] when configured
        h = self.edges[0](x, graph=x[..., :3])  # (B, N, w), neighbours by position
        outs = [h]
        for layer in self.edges[1:]:
            h = layer(h)  # dynamic graph: neighbours in the previous layer's feature space
            outs.append(h)
        f = self.embed(torch.cat(outs, dim=-1))  # (B, N, 4w) -> (B, N, embed)
        g = torch.cat([f.amax(dim=1), f.mean(dim=1)], dim=-1)  # (B, 2·embed): both order-invariant
        return self.head(self.fc(g))  # -> (B, K)


__all__ = ["DGCNN", "EdgeConv", "PointNet", "knn"]
