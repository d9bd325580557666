"""Full-ranking top-K metrics of a recommender: Recall, NDCG, Precision and MAP at K (MMRec's protocol).

For each user u with at least one interaction in the evaluated split, every item is scored; the user's training
items (and, when evaluating ``test``, their validation items, as MMRec does) are set to −∞; the top K items R_u
(ranks r = 1..K) are compared with the split's items T_u, rel_r = [R_u(r) ∈ T_u]::

    Recall@K    = Σ_r rel_r / |T_u|
    Precision@K = Σ_r rel_r / K
    NDCG@K      = Σ_r rel_r / log₂(r + 1)  /  Σ_{r ≤ min(|T_u|, K)} 1 / log₂(r + 1)
    MAP@K       = Σ_r P@r · rel_r / min(|T_u|, K),   P@r = Σ_{r' ≤ r} rel_{r'} / r

each averaged over the evaluated users (the UAT-MC code's K ∈ {5, 10, 20, 50}; validation metric Recall@20).
Ties among scores are broken by ``torch.topk``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparring.context import device_of, frozen_model
from sparring.errors import ConfigError
from sparring.recsys.data import RecData
from sparring.recsys.models import Recommender

NAMES = ("recall", "ndcg", "precision", "map")


def ranking_metrics(
    model: Recommender,
    data: RecData,
    split: str = "test",
    ks: Sequence[int] = (5, 10, 20, 50),
    batch_users: int = 1024,
) -> dict[str, float]:
    """``{"recall@K", "ndcg@K", "precision@K", "map@K" for K in ks, "users": n}`` on ``split`` ("valid"/"test").

    Users are scored ``batch_users`` at a time from representations computed once; the model runs in eval mode
    without gradients and its state is restored afterwards. A K larger than the catalogue ranks every item.
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"ranking_metrics evaluates split 'valid' or 'test', got {split!r}")
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"ks must be positive integers, got {ks!r}")
    if isinstance(batch_users, bool) or not isinstance(batch_users, int) or batch_users < 1:
        raise ConfigError(f"batch_users must be a positive integer, got {batch_users!r}")
    if (model.n_users, model.n_items) != (data.n_users, data.n_items):
        raise ConfigError(f"the model was built for {model.n_users} users x {model.n_items} items but the data has "
                          f"{data.n_users} x {data.n_items}")
    device = device_of(model)
    target = data.mask(split)
    exclude = data.mask("train") | data.mask("valid") if split == "test" else data.mask("train")
    users = target.any(dim=1).nonzero().squeeze(1)
    target, exclude = target.to(device), exclude.to(device)
    k_max = max(ks)
    depth = min(k_max, data.n_items)
    totals = torch.zeros(len(NAMES), len(ks), dtype=torch.float64, device=device)
    with frozen_model(model), torch.no_grad():
        user_all, item_all = model.embed()  # once: MMGCN propagates over the whole graph
        for lo in range(0, len(users), batch_users):
            u = users[lo:lo + batch_users].to(device)
            scores = (user_all[u] @ item_all.T).float().masked_fill_(exclude[u], float("-inf"))
            top = scores.topk(depth, dim=1).indices  # (U, depth)
            hits = target[u].gather(1, top).double()
            if depth < k_max:  # ranks past the catalogue are never hits
                hits = torch.cat([hits, hits.new_zeros(len(u), k_max - depth)], dim=1)
            totals += _per_user(hits, target[u].sum(1).double(), ks).sum(dim=-1)
    n = len(users)
    out: dict[str, float] = {"users": float(n)}
    values = (totals / max(n, 1)).tolist()
    for row, name in enumerate(NAMES):
        for col, k in enumerate(ks):
            out[f"{name}@{k}"] = values[row][col]
    return out


def _per_user(hits: Tensor, n_pos: Tensor, ks: Sequence[int]) -> Tensor:
    """(4, len(ks), U) per-user recall, ndcg, precision, map from hits (U, K_max) and |T_u| (U,)."""
    k_max = hits.shape[1]
    ranks = torch.arange(1, k_max + 1, dtype=hits.dtype, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1)
    ideal = discount.cumsum(0)  # ideal[m-1] = best DCG with m relevant items
    precision_at = hits.cumsum(1) / ranks  # P@r
    rows = []
    for k in ks:
        h = hits[:, :k]
        found = h.sum(1)
        capped = n_pos.clamp(max=k)
        rows.append(torch.stack([
            found / n_pos,
            (h * discount[:k]).sum(1) / ideal[(capped - 1).long()],
            found / k,
            (precision_at[:, :k] * h).sum(1) / capped,
        ]))
    return torch.stack(rows, dim=1)


__all__ = ["ranking_metrics"]
