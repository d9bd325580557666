"""Multimodal recommenders with modality projectors: VBPR and MMGCN, as in the UAT-MC code (``methods.md`` §7.2).

Both recommenders score a user u and an item i by a dot product ``s(u, i) = ⟨e_u, e_i⟩`` of representations built
from free ID embeddings and the item's *aligned* modality features::

    v̂_i = normalise(P_v(v_i)),   P_v: d_v → 1024 → 256 → 64   (Linear, ReLU, LayerNorm between layers)
    t̂_i = normalise(P_t(t_i)),   P_t: d_t → 256 → 64

where v_i and t_i are frozen pre-extracted features (buffers ``image`` and ``text``) and ``normalise`` makes rows
unit-L2. Promotion attacks and UAT-MC perturb v̂ and t̂ (the projector's outputs), so every scoring method takes
optional replacements ``v_hat`` / ``t_hat``: (n_items, 64), or batched (T, n_items, 64) for T perturbed copies of
the item features scored separately, which adds a leading T to the output.

Training is BPR (Rendle et al., UAI 2009) on triples (u, i⁺, i⁻): ``L = −log σ(s(u, i⁺) − s(u, i⁻))``.
``forward(x)`` maps triples (B, 3) to logits (B, 2) = [s(u, i⁺), s(u, i⁻)], so BPR is the cross-entropy of
those logits against label 0 and the core's ``standard`` objective trains these models unchanged.

* **VBPR** (He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback", AAAI 2016), in
  the MMRec form the UAT-MC code uses: user embedding (2·64) = [γ_u ; θ_u], item embedding
  [γ_i ; E·concat(t̂_i, v̂_i)], ``s(u, i) = γ_u·γ_i + θ_u·E[t̂_i ; v̂_i]``. The paper's item bias β_i and visual
  bias β'·f_i are left out, as in MMRec. Defaults: Adam lr 1e-3, batch 2048, 50 epochs, 1 negative, dim 64.
* **MMGCN** (Wei, Wang, Nie, He, Hong & Chua, "MMGCN: Multi-modal Graph Convolution Network for Personalized
  Recommendation of Micro-video", ACM MM 2019): per modality m, a 2-layer GCN over the bipartite user–item
  training graph with mean aggregation (row-normalised adjacency D⁻¹A), starting from x⁰ = normalise([P_m ;
  MLP_m(f̂_m)]) with P_m per-modality user preference embeddings::

      h^l   = LeakyReLU(D⁻¹A · x^{l−1} W^l)                          (aggregation)
      x̂^l   = LeakyReLU(L^l x^{l−1}) + e_id                           (ID-enhanced self transform)
      x^l   = LeakyReLU(G^l h^l + x̂^l)                                 (combination, "concate=False")

  The final representation sums the modalities, ``e = Σ_m x²_m`` (the paper's Eq.; ``combine="mean"`` divides
  by the number of modalities as MMRec does). Defaults (MMRec): latent 256, dim 64, Adam lr 5e-4, batch 2048,
  50 epochs, 1 negative. MMRec creates ``id_embedding`` and ``preference`` as plain tensors, so they are never
  trained there; here they are parameters, as in the paper.

``build_recommender(name, data, **settings)`` builds one by registered name ("vbpr", "mmgcn").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError, DataError
from sparring.recsys.data import RecData
from sparring.registry import Registry

RECOMMENDERS: Registry[type[Recommender]] = Registry("recommender")


def _mlp(d_in: int, hidden: Sequence[int], d_out: int) -> nn.Sequential:
    """Linear → ReLU → LayerNorm per hidden layer, then a final Linear (the UAT-MC projector layout)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d_in, width), nn.ReLU(), nn.LayerNorm(width)]
        d_in = width
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def _widths(value: object, name: str) -> tuple[int, ...]:
    if isinstance(value, int | str) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a sequence of positive layer widths, got {value!r}")
    out = tuple(value)
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in out):
        raise ConfigError(f"{name} must be a sequence of positive layer widths, got {value!r}")
    return out


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


class ModalityProjector(nn.Module):
    """MLP projectors of frozen modality features to unit-norm ("aligned") rows (UAT-MC, ``methods.md`` §7.2).

    ``v̂ = normalise(P_v(v))`` with P_v: d_v → 1024 → 256 → 64 and ``t̂ = normalise(P_t(t))`` with
    P_t: d_t → 256 → 64, each hidden layer Linear → ReLU → LayerNorm. The hidden widths are settings (small for
    CPU tests); ``out_dim`` is the aligned dimension (64).
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        text_dim: int,
        out_dim: int = 64,
        visual_hidden: Sequence[int] = (1024, 256),
        text_hidden: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        self.out_dim = _positive_int(out_dim, "out_dim")
        self.visual = _mlp(_positive_int(visual_dim, "visual_dim"), _widths(visual_hidden, "visual_hidden"), out_dim)
        self.text = _mlp(_positive_int(text_dim, "text_dim"), _widths(text_hidden, "text_hidden"), out_dim)

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """(n, d_v), (n, d_t) raw features → (v̂, t̂), each (n, out_dim) with unit-L2 rows."""
        return F.normalize(self.visual(image), dim=-1), F.normalize(self.text(text), dim=-1)


class Recommender(nn.Module, ABC):
    """A multimodal recommender ``s(u, i) = ⟨e_u, e_i⟩`` on aligned item features; subclasses define :meth:`embed`.

    Attributes: ``n_users``, ``n_items``, ``dim`` (aligned feature size, 64), ``projector``, buffers ``image``
    (n_items, d_v) and ``text`` (n_items, d_t). Class attributes ``lr`` and ``reg_weight`` are the defaults
    :func:`sparring.recsys.train.fit` uses when not given.

    Shapes: users (U,), items (B,) int64. Feature replacements ``v_hat`` / ``t_hat`` are (n_items, dim) or
    (T, n_items, dim); a batched one adds a leading T to every output (a missing or unbatched partner is
    broadcast). They replace the *aligned* features, so gradients w.r.t. them are what promotion attacks need.
    """

    lr: ClassVar[float] = 1e-3
    reg_weight: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        data: RecData,
        dim: int = 64,
        visual_hidden: Sequence[int] = (1024, 256),
        text_hidden: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        if not isinstance(data, RecData):
            raise ConfigError(f"a recommender needs a RecData, got {type(data).__name__}")
        self.n_users, self.n_items = int(data.n_users), int(data.n_items)
        self.dim = _positive_int(dim, "dim")
        self.register_buffer("image", data.image.detach().float().clone())
        self.register_buffer("text", data.text.detach().float().clone())
        self.projector = ModalityProjector(visual_dim=data.image.shape[1], text_dim=data.text.shape[1], out_dim=dim,
                                           visual_hidden=visual_hidden, text_hidden=text_hidden)

    # ---- features -------------------------------------------------------------------------------------------
    def aligned(self, items: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(v̂, t̂), each (n_items, dim) (or (len(items), dim) for a subset), differentiable in the projector."""
        if items is None:
            return self.projector(self.image, self.text)
        return self.projector(self.image[items], self.text[items])

    def features(self, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The aligned features to score with: the replacements where given (checked), else :meth:`aligned`.

        Returns two tensors of the same shape, (n_items, dim) or (T, n_items, dim)."""
        if v_hat is None or t_hat is None:
            clean_v, clean_t = self.aligned()
            v_hat = clean_v if v_hat is None else v_hat
            t_hat = clean_t if t_hat is None else t_hat
        for name, feats in (("v_hat", v_hat), ("t_hat", t_hat)):
            if feats.dim() not in (2, 3) or tuple(feats.shape[-2:]) != (self.n_items, self.dim):
                raise DataError(f"{name} must be ({self.n_items}, {self.dim}) or (T, {self.n_items}, {self.dim}) "
                                f"aligned item features, got {tuple(feats.shape)}")
        if v_hat.dim() == 3 and t_hat.dim() == 3 and v_hat.shape[0] != t_hat.shape[0]:
            raise DataError(f"v_hat and t_hat batch different numbers of copies: {v_hat.shape[0]} vs {t_hat.shape[0]}")
        shape = torch.broadcast_shapes(v_hat.shape, t_hat.shape)
        return v_hat.expand(shape), t_hat.expand(shape)

    # ---- the protocol ---------------------------------------------------------------------------------------
    @abstractmethod
    def embed(self, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All representations: users (n_users, D) or (T, n_users, D), items (n_items, D) or (T, n_items, D)."""

    def pair_embeddings(
        self, users: Tensor, items: Tensor, v_hat: Tensor | None = None, t_hat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Representations of ``users`` (B,) → ([T,] B, D) and ``items`` (B, ...) → ([T,] B, ..., D).

        Default: :meth:`embed` then index; a model whose users do not depend on the graph may do less work."""
        user_all, item_all = self.embed(v_hat, t_hat)
        return user_all[..., users, :], item_all[..., items, :]

    def score_all(self, users: Tensor, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> Tensor:
        """Scores of ``users`` (U,) against every item: (U, n_items), or (T, U, n_items) for batched features."""
        user_all, item_all = self.embed(v_hat, t_hat)
        return user_all[..., users, :] @ item_all.transpose(-1, -2)

    def score_pairs(
        self, users: Tensor, items: Tensor, v_hat: Tensor | None = None, t_hat: Tensor | None = None
    ) -> Tensor:
        """``s(users[b], items[b])``: (B,) for items (B,); items (B, k) give (B, k); batched features add T."""
        if users.dim() != 1 or items.dim() < 1 or items.shape[0] != users.shape[0]:
            raise DataError(f"score_pairs needs users (B,) and items (B, ...), got {tuple(users.shape)} and "
                            f"{tuple(items.shape)}")
        user_e, item_e = self.pair_embeddings(users, items, v_hat, t_hat)
        user_e = user_e.reshape(user_e.shape[:-1] + (1,) * (items.dim() - 1) + user_e.shape[-1:])
        return (user_e * item_e).sum(-1)

    def forward(self, x: Tensor, *, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> Tensor:
        """Triples x (B, 3) = [user, positive, negative] → logits (B, 2) = [s(u, i⁺), s(u, i⁻)] ((T, B, 2) batched).

        ``CE(logits, 0) = −log σ(s⁺ − s⁻)`` is the BPR loss."""
        check_triples(x)
        return self.score_pairs(x[:, 0], x[:, 1:], v_hat, t_hat)

    @abstractmethod
    def regularization(self, x: Tensor) -> Tensor:
        """(B,) L2 penalty of the embeddings the triples x (B, 3) use; the trainer adds ``reg_weight · mean``."""


def check_triples(x: Tensor) -> None:
    """A DataError unless x is a (B, 3) integer tensor of [user, positive item, negative item] triples."""
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"recommenders take (B, 3) [user, positive item, negative item] triples, got {shape}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise DataError(f"triples must hold integer indices (int64), got {x.dtype}")


@RECOMMENDERS.register("vbpr")
class VBPR(Recommender):
    """VBPR: ``s(u, i) = γ_u·γ_i + θ_u·E[t̂_i ; v̂_i]`` (He & McAuley, AAAI 2016; MMRec / UAT-MC form).

    User embedding (n_users, 2·dim) = [γ_u ; θ_u] and item ID embedding γ (n_items, dim), Xavier-uniform as in
    MMRec; E = Linear(2·dim → dim). Defaults: dim 64, Adam lr 1e-3, batch 2048, 50 epochs, 1 negative.

    Regularisation (per triple): ``½(‖e_u‖² + ‖e_{i⁺}‖² + ‖e_{i⁻}‖²)`` with e_i = [γ_i ; E[t̂_i ; v̂_i]], the
    squared (RecBole ``require_pow``) form of MMRec's ``EmbLoss``. MMRec's own form, ``Σ‖E_batch‖_F / B`` with
    reg_weight 1.0 (``methods.md`` §7.5), is not a sum over examples; its gradient on one row is about
    ``1/(√B·rms‖e‖)`` times this one's, i.e. reg_weight ≈ 1e-2 here at B = 2048. Default ``reg_weight`` 1e-3.
    """

    lr: ClassVar[float] = 1e-3
    reg_weight: ClassVar[float] = 1e-3

    def __init__(self, *, data: RecData, dim: int = 64, visual_hidden: Sequence[int] = (1024, 256),
                 text_hidden: Sequence[int] = (256,)) -> None:
        super().__init__(data=data, dim=dim, visual_hidden=visual_hidden, text_hidden=text_hidden)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.item_linear = nn.Linear(2 * dim, dim)

    def _items(self, v_hat: Tensor, t_hat: Tensor, ids: Tensor) -> Tensor:
        """[γ_i ; E[t̂_i ; v̂_i]]: ids (..., dim), features (..., dim) → (..., 2·dim)."""
        content = self.item_linear(torch.cat([t_hat, v_hat], dim=-1))  # MMRec concatenates (text, visual)
        return torch.cat([ids.expand(content.shape), content], dim=-1)

    def embed(self, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v_hat, t_hat = self.features(v_hat, t_hat)
        return self.user_embedding, self._items(v_hat, t_hat, self.item_embedding)

    def pair_embeddings(
        self, users: Tensor, items: Tensor, v_hat: Tensor | None = None, t_hat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if v_hat is None and t_hat is None and items.numel() < self.n_items:
            # Clean features, fewer rows than the catalogue: project only the batch's items (rows are independent).
            flat = items.reshape(-1)
            v, t = self.aligned(flat)
            item_e = self._items(v, t, self.item_embedding[flat]).reshape(*items.shape, -1)
            return self.user_embedding[users], item_e
        v_hat, t_hat = self.features(v_hat, t_hat)
        item_e = self._items(v_hat[..., items, :], t_hat[..., items, :], self.item_embedding[items])
        return self.user_embedding[users], item_e

    def regularization(self, x: Tensor) -> Tensor:
        check_triples(x)
        user_e, item_e = self.pair_embeddings(x[:, 0], x[:, 1:])
        return 0.5 * (user_e.square().sum(-1) + item_e.square().sum((-2, -1)))


class _ModalGCN(nn.Module):
    """One modality's 2-layer MMGCN branch: preferences P (n_users, latent), MLP(f̂) for items, as in MMRec."""

    def __init__(self, *, n_users: int, feat_dim: int, latent: int, dim: int) -> None:
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, latent)))
        self.mlp = nn.Linear(feat_dim, latent)
        self.conv1 = nn.Parameter(nn.init.xavier_normal_(torch.empty(latent, latent)))
        self.linear1, self.gate1 = nn.Linear(latent, dim), nn.Linear(latent, dim)
        self.conv2 = nn.Parameter(nn.init.xavier_normal_(torch.empty(dim, dim)))
        self.linear2, self.gate2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, feats: Tensor, id_embedding: Tensor, propagate: Any) -> Tensor:
        """feats ([T,] n_items, f), id_embedding (N, dim) → node representations ([T,] N, dim), users first."""
        items = self.mlp(feats)
        users = self.preference.expand(*items.shape[:-2], *self.preference.shape)
        x = F.normalize(torch.cat([users, items], dim=-2), dim=-1)
        for conv, linear, gate in ((self.conv1, self.linear1, self.gate1), (self.conv2, self.linear2, self.gate2)):
            h = F.leaky_relu(propagate(x @ conv))
            x = F.leaky_relu(gate(h) + F.leaky_relu(linear(x)) + id_embedding)
        return x


@RECOMMENDERS.register("mmgcn")
class MMGCN(Recommender):
    """MMGCN (Wei et al., ACM MM 2019): per-modality 2-layer GCNs on the user–item graph, summed; ``s = ⟨u, i⟩``.

    Settings: ``dim`` 64 (ID embedding and output), ``latent`` 256 (first GCN layer, MMRec's ``dim_latent``),
    ``combine`` "sum" (paper) or "mean" (MMRec code). The graph is the training interactions, both directions,
    mean-aggregated (D⁻¹A; a node without edges aggregates to 0); perturbed features v_hat / t_hat, batched or not,
    go through the whole graph, so they move user representations too.

    Regularisation (per triple), MMRec's mean-of-squares form so that its reg_weight (0.01, ``methods.md`` §7.5)
    carries over: ``(2‖id_u‖² + ‖id_{i⁺}‖² + ‖id_{i⁻}‖²)/(2·dim) + Σ_m ‖P_m[u]‖²/latent``. (MMRec averages the
    preference penalty over all users; here over the batch's users, so a mean over triples weighs active users.)
    Defaults: Adam lr 5e-4, reg_weight 0.01, batch 2048, 50 epochs, 1 negative.
    """

    lr: ClassVar[float] = 5e-4
    reg_weight: ClassVar[float] = 1e-2

    def __init__(self, *, data: RecData, dim: int = 64, latent: int = 256, combine: str = "sum",
                 visual_hidden: Sequence[int] = (1024, 256), text_hidden: Sequence[int] = (256,)) -> None:
        super().__init__(data=data, dim=dim, visual_hidden=visual_hidden, text_hidden=text_hidden)
        if combine not in ("sum", "mean"):
            raise ConfigError(f"MMGCN combine must be 'sum' (paper) or 'mean' (MMRec code), got {combine!r}")
        self.combine, self.latent = combine, _positive_int(latent, "latent")
        n_nodes = self.n_users + self.n_items
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, dim)))
        self.gcn = nn.ModuleDict({m: _ModalGCN(n_users=self.n_users, feat_dim=dim, latent=latent, dim=dim)
                                  for m in ("visual", "text")})
        # Edges src → dst of the undirected training graph, weight 1/deg(dst): mean aggregation, kept as dense
        # buffers (index_add works batched and on any device; sparse buffers do not round-trip state dicts).
        pairs = torch.unique(data.train, dim=0)
        users, items = pairs[:, 0], pairs[:, 1] + self.n_users
        src, dst = torch.cat([users, items]), torch.cat([items, users])
        degree = torch.bincount(dst, minlength=n_nodes).clamp(min=1).float()
        self.register_buffer("edge_src", src)
        self.register_buffer("edge_dst", dst)
        self.register_buffer("edge_weight", 1.0 / degree[dst])

    def propagate(self, x: Tensor) -> Tensor:
        """Mean over graph neighbours, ``D⁻¹A x``: x ([T,] N, d) → ([T,] N, d).

        One sparse (N, N) product with the T copies side by side as columns: gathering per-edge messages would
        materialise a (T, E, d) tensor, gigabytes for a promotion attack's hundred copies."""
        adjacency = torch.sparse_coo_tensor(
            torch.stack([self.edge_dst, self.edge_src]), self.edge_weight.to(x.dtype), (x.shape[-2], x.shape[-2]),
            check_invariants=False,  # built from our own buffers: valid by construction
        )
        if x.dim() == 2:
            return torch.sparse.mm(adjacency, x)
        t, n, d = x.shape
        out = torch.sparse.mm(adjacency, x.transpose(0, 1).reshape(n, t * d))  # (N, T·d)
        return out.reshape(n, t, d).transpose(0, 1)

    def embed(self, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v_hat, t_hat = self.features(v_hat, t_hat)
        nodes = (self.gcn["visual"](v_hat, self.id_embedding, self.propagate)
                 + self.gcn["text"](t_hat, self.id_embedding, self.propagate))
        if self.combine == "mean":
            nodes = nodes / 2
        return nodes[..., : self.n_users, :], nodes[..., self.n_users:, :]

    def regularization(self, x: Tensor) -> Tensor:
        check_triples(x)
        ids = self.id_embedding
        users, items = x[:, 0], x[:, 1:] + self.n_users
        reg = (2 * ids[users].square().sum(-1) + ids[items].square().sum((-2, -1))) / (2 * self.dim)
        for branch in self.gcn.values():
            reg = reg + branch.preference[users].square().sum(-1) / self.latent
        return reg


def available() -> list[str]:
    """Names of the registered recommenders."""
    return RECOMMENDERS.names()


def build_recommender(name: str, data: RecData, **settings: Any) -> Recommender:
    """A recommender by registered name ("vbpr", "mmgcn") for ``data``, e.g. ``build_recommender("vbpr", data)``."""
    cls = RECOMMENDERS.get(name)
    try:
        return cls(data=data, **settings)
    except TypeError as err:
        raise ConfigError(f"recommender {name!r}: {err}") from None


__all__ = ["MMGCN", "ModalityProjector", "RECOMMENDERS", "Recommender", "VBPR", "available", "build_recommender",
           "check_triples"]
