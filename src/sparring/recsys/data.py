"""Multimodal recommendation data: the MMRec layout and a synthetic set with planted modality-driven user groups.

A :class:`RecData` holds implicit-feedback interactions split into train / valid / test (pairs of user and item
indices) and two frozen item-feature matrices, visual (n_items, d_v) and text (n_items, d_t).

* **MMRec layout** (Zhou et al., the framework the UAT-MC code builds on): a folder with ``<name>.inter``, a
  tab-separated file with a header naming at least ``userID``, ``itemID`` and ``x_label`` (0 train, 1 valid,
  2 test; ``rating`` and ``timestamp`` are read if present and ignored), plus ``image_feat.npy`` and
  ``text_feat.npy`` whose row i belongs to item i. User and item ids are 0-based indices.
* **Synthetic** (``methods.md`` §7.7, the embedded default): users split into two planted groups, one choosing
  items by their *visual* features, the other by their *text* features, so that the visual and text gradients of
  a target item's promotion loss are driven by different users: the cross-modal gradient mismatch exists by
  construction. Item popularity follows a Zipf-like bias, so there are hot and cold items.

Nothing is downloaded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparring.errors import DataError

SPLITS = {"train": 0, "valid": 1, "test": 2}


@dataclass
class RecData:
    """Interactions and item features of a recommendation data set.

    Attributes:
        n_users / n_items: sizes; users and items are indices 0..n-1.
        train / valid / test: (E, 2) int64 [user, item] interaction pairs.
        image / text: (n_items, d_v) / (n_items, d_t) float32 frozen modality features.
        groups: (n_users,) int64 planted group of each user (synthetic: 0 visual-driven, 1 text-driven), else None.
        name: for reports.
    """

    n_users: int
    n_items: int
    train: Tensor
    valid: Tensor
    test: Tensor
    image: Tensor
    text: Tensor
    name: str = "mmrec"
    groups: Tensor | None = None
    _masks: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for split in SPLITS:
            pairs = getattr(self, split)
            if pairs.dim() != 2 or pairs.shape[1] != 2:
                raise DataError(f"{split} interactions must be (E, 2) [user, item] pairs, got {tuple(pairs.shape)}")
            if pairs.numel() and (int(pairs[:, 0].min()) < 0 or int(pairs[:, 0].max()) >= self.n_users
                                  or int(pairs[:, 1].min()) < 0 or int(pairs[:, 1].max()) >= self.n_items):
                raise DataError(f"{split} interactions name users or items outside [0, n_users) x [0, n_items)")
        for name, feats in (("image", self.image), ("text", self.text)):
            if feats.dim() != 2 or feats.shape[0] != self.n_items:
                raise DataError(f"{name} features must be ({self.n_items}, d), got {tuple(feats.shape)}")
            if not torch.isfinite(feats).all():
                raise DataError(f"{name} features contain NaN or infinite values")

    def item_counts(self) -> Tensor:
        """(n_items,) training interactions per item (popularity: cold and hot targets)."""
        return torch.bincount(self.train[:, 1], minlength=self.n_items)

    def mask(self, split: str = "train") -> Tensor:
        """(n_users, n_items) bool: the user interacted with the item in ``split`` (full-ranking protocol)."""
        if split not in self._masks:
            pairs = getattr(self, split)
            m = torch.zeros(self.n_users, self.n_items, dtype=torch.bool)
            m[pairs[:, 0], pairs[:, 1]] = True
            self._masks[split] = m
        return self._masks[split]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "users": self.n_users, "items": self.n_items, "train": len(self.train),
                "valid": len(self.valid), "test": len(self.test), "d_visual": self.image.shape[1],
                "d_text": self.text.shape[1]}


def synthetic(
    *,
    n_users: int = 500,
    n_items: int = 300,
    dim: int = 64,
    interactions_per_user: int = 20,
    popularity: float = 1.0,
    temperature: float = 0.5,
    seed: int = 0,
) -> RecData:
    """A planted multimodal data set (defaults: ``methods.md`` §7.7's 500 users, 300 items, 64-d features).

    Item visual and text features are independent N(0, I) vectors. Half the users (group 0) have a taste vector
    in visual space and score items by ``v_i·p_u``; the other half (group 1) score by ``t_i·p_u``. Each user
    draws ``interactions_per_user`` distinct items from softmax(score/(temperature·√dim) + popularity·log-Zipf
    bias). Per user, 80% of the interactions go to train, 10% to valid, 10% to test (at least one to train).
    """
    if min(n_users, n_items, dim) < 2 or not 3 <= interactions_per_user < n_items:
        raise DataError("synthetic needs n_users, n_items, dim >= 2 and 3 <= interactions_per_user < n_items")
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(n_items, dim, generator=gen)
    text = torch.randn(n_items, dim, generator=gen)
    groups = (torch.arange(n_users) % 2)[torch.randperm(n_users, generator=gen)]
    taste = torch.randn(n_users, dim, generator=gen)
    affinity = torch.where(groups[:, None] == 0, taste @ image.T, taste @ text.T) / (temperature * dim**0.5)
    rank = torch.randperm(n_items, generator=gen).float() + 1.0  # a random popularity rank per item
    logits = affinity - popularity * rank.log()  # Zipf-like: p ∝ rank^-popularity
    # Distinct items per user without replacement: Gumbel top-k.
    gumbel = -torch.log(-torch.log(torch.rand(n_users, n_items, generator=gen).clamp(1e-12, 1 - 1e-12)))
    chosen = (logits + gumbel).topk(interactions_per_user, dim=1).indices  # (U, k)
    order = torch.rand(n_users, interactions_per_user, generator=gen).argsort(dim=1)
    chosen = chosen.gather(1, order)
    n_test = max(1, interactions_per_user // 10)
    users = torch.arange(n_users)[:, None].expand_as(chosen)
    parts = {
        "test": (users[:, :n_test], chosen[:, :n_test]),
        "valid": (users[:, n_test:2 * n_test], chosen[:, n_test:2 * n_test]),
        "train": (users[:, 2 * n_test:], chosen[:, 2 * n_test:]),
    }
    pairs = {k: torch.stack([u.reshape(-1), i.reshape(-1)], dim=1) for k, (u, i) in parts.items()}
    return RecData(n_users=n_users, n_items=n_items, image=image, text=text, name="synthetic", groups=groups,
                   **pairs)


def load_mmrec(root: str | Path, name: str | None = None) -> RecData:
    """A data set in the MMRec layout: ``root/<name>.inter`` (tab-separated), ``image_feat.npy``, ``text_feat.npy``.

    ``name`` defaults to the only ``*.inter`` file in ``root``.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"MMRec root {str(folder)!r} is not a folder")
    if name is None:
        found = sorted(folder.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"{folder}: expected one *.inter file (or pass name=), found {len(found)}")
        inter = found[0]
    else:
        inter = folder / f"{name}.inter"
    for path in (inter, folder / "image_feat.npy", folder / "text_feat.npy"):
        if not path.is_file():
            raise DataError(f"MMRec data lacks {path.name} in {folder}")
    users, items, labels = _read_inter(inter)
    try:
        image = torch.from_numpy(np.load(folder / "image_feat.npy", allow_pickle=False)).float()
        text = torch.from_numpy(np.load(folder / "text_feat.npy", allow_pickle=False)).float()
    except ValueError as err:
        raise DataError(f"{folder}: the feature files are not plain .npy arrays ({err})") from None
    n_items = image.shape[0] if image.dim() == 2 else -1
    if text.dim() != 2 or image.dim() != 2 or text.shape[0] != n_items:
        raise DataError(f"{folder}: image_feat {tuple(image.shape)} and text_feat {tuple(text.shape)} must be "
                        "(n_items, d) with the same number of rows")
    if int(items.max()) >= n_items:
        raise DataError(f"{inter.name} names item {int(items.max())} but the features have {n_items} rows")
    pairs = torch.stack([users, items], dim=1)
    splits = {split: pairs[labels == code] for split, code in SPLITS.items()}
    return RecData(n_users=int(users.max()) + 1, n_items=n_items, image=image, text=text,
                   name=inter.stem, **splits)


def _read_inter(path: Path) -> tuple[Tensor, Tensor, Tensor]:
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path.name} is empty")
        columns = {c.strip(): k for k, c in enumerate(header)}
        missing = [c for c in ("userID", "itemID", "x_label") if c not in columns]
        if missing:
            raise DataError(f"{path.name}: header lacks {', '.join(missing)} (found {', '.join(columns)})")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append([int(row[columns["userID"]]), int(row[columns["itemID"]]), int(row[columns["x_label"]])])
            except (ValueError, IndexError):
                raise DataError(f"{path.name} line {line}: expected integer userID, itemID, x_label") from None
    if not rows:
        raise DataError(f"{path.name} has no interactions")
    table = torch.tensor(rows, dtype=torch.int64)
    if (table[:, :2] < 0).any() or not set(table[:, 2].tolist()) <= set(SPLITS.values()):
        raise DataError(f"{path.name}: ids must be >= 0 and x_label one of 0 (train), 1 (valid), 2 (test)")
    return table[:, 0], table[:, 1], table[:, 2]


__all__ = ["RecData", "SPLITS", "load_mmrec", "synthetic"]
