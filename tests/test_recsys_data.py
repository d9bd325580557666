"""Recommendation data: the synthetic planted set and the MMRec layout (files the tests write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparring.errors import DataError
from sparring.recsys.data import RecData, load_mmrec, synthetic


def test_synthetic_layout_and_determinism():
    data = synthetic(n_users=60, n_items=40, dim=8, interactions_per_user=10, seed=3)
    assert (data.n_users, data.n_items) == (60, 40) and data.image.shape == (40, 8) == data.text.shape
    assert len(data.train) + len(data.valid) + len(data.test) == 600
    every = torch.cat([data.train, data.valid, data.test])
    assert len({tuple(p) for p in every.tolist()}) == 600  # distinct (user, item) pairs
    assert torch.bincount(data.train[:, 0], minlength=60).min() >= 8  # 80% of each user's items train
    again = synthetic(n_users=60, n_items=40, dim=8, interactions_per_user=10, seed=3)
    assert torch.equal(again.train, data.train) and torch.equal(again.image, data.image)
    assert not torch.equal(synthetic(n_users=60, n_items=40, dim=8, interactions_per_user=10, seed=4).train,
                           data.train)
    assert set(data.groups.tolist()) == {0, 1} and data.mask("train").sum() == len(data.train)


def test_synthetic_groups_follow_their_modality():
    """Group 0 picks items by their visual features, group 1 by their text features: the planted mismatch."""
    data = synthetic(seed=0)
    users, items = data.train[:, 0], data.train[:, 1]
    # A user's chosen items add up along their taste direction in the modality that drives them (and like a random
    # walk in the other): the summed feature vector is longer there. Popularity bias shrinks the gap; 1.0 is chance.
    explained = {}
    for group in (0, 1):
        rows = data.groups[users] == group
        for name, feats in (("visual", data.image), ("text", data.text)):
            mean_feat = torch.zeros(data.n_users, feats.shape[1]).index_add_(0, users[rows], feats[items[rows]])
            explained[group, name] = mean_feat[data.groups == group].norm(dim=1).mean().item()
    assert explained[0, "visual"] > 1.15 * explained[0, "text"]
    assert explained[1, "text"] > 1.15 * explained[1, "visual"]


def test_synthetic_has_hot_and_cold_items():
    counts = synthetic(seed=0).item_counts()
    assert (counts >= 50).sum() >= 10 and (counts <= 5).sum() >= 1


HEADER = "userID\titemID\trating\ttimestamp\tx_label"


def _write(folder: Path, rows: list[str], *, n_items: int = 4, header: str = HEADER) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "baby.inter").write_text("\n".join([header, *rows]) + "\n")
    np.save(folder / "image_feat.npy", np.arange(n_items * 5, dtype=np.float32).reshape(n_items, 5))
    np.save(folder / "text_feat.npy", np.ones((n_items, 3), dtype=np.float32))


def test_load_mmrec_reads_the_layout(tmp_path):
    _write(tmp_path, ["0\t1\t5\t100\t0", "0\t2\t4\t101\t0", "1\t3\t5\t102\t1", "2\t0\t3\t103\t2"])
    for data in (load_mmrec(tmp_path), load_mmrec(tmp_path, "baby")):
        assert isinstance(data, RecData) and data.name == "baby"
        assert (data.n_users, data.n_items) == (3, 4)
        assert data.train.tolist() == [[0, 1], [0, 2]] and data.valid.tolist() == [[1, 3]]
        assert data.test.tolist() == [[2, 0]]
        assert data.image.shape == (4, 5) and data.text.shape == (4, 3) and data.image.dtype == torch.float32


@pytest.mark.parametrize(
    ("rows", "header", "words"),
    [
        (["0\t1\t5\t1\t7"], None, "x_label one of"),
        (["0\tx\t5\t1\t0"], None, "integer userID"),
        ([], None, "no interactions"),
        (["0\t1\t0"], "userID\titemID\trating", "lacks x_label"),
        (["0\t9\t5\t1\t0"], None, "names item 9"),
    ],
)
def test_load_mmrec_bad_files(tmp_path, rows, header, words):
    _write(tmp_path, rows, **({"header": header} if header else {}))
    with pytest.raises(DataError, match=words):
        load_mmrec(tmp_path)


def test_load_mmrec_missing_pieces(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_mmrec(tmp_path / "nowhere")
    with pytest.raises(DataError, match="one \\*.inter"):
        load_mmrec(tmp_path)
    _write(tmp_path, ["0\t1\t5\t1\t0"])
    (tmp_path / "text_feat.npy").unlink()
    with pytest.raises(DataError, match="text_feat.npy"):
        load_mmrec(tmp_path)


def test_recdata_checks_its_contents():
    image = torch.zeros(3, 2)
    with pytest.raises(DataError, match="outside"):
        RecData(n_users=2, n_items=3, train=torch.tensor([[0, 5]]), valid=torch.zeros(0, 2, dtype=torch.long),
                test=torch.zeros(0, 2, dtype=torch.long), image=image, text=image)
    with pytest.raises(DataError, match="NaN"):
        RecData(n_users=2, n_items=3, train=torch.tensor([[0, 1]]), valid=torch.zeros(0, 2, dtype=torch.long),
                test=torch.zeros(0, 2, dtype=torch.long), image=torch.full((3, 2), float("nan")), text=image)
