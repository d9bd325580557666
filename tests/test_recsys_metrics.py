"""Full-ranking Recall / NDCG / Precision / MAP against hand computations and a per-user brute force."""

from __future__ import annotations

import math

import pytest
import torch

from sparring.errors import ConfigError
from sparring.recsys.data import RecData, synthetic
from sparring.recsys.metrics import ranking_metrics
from sparring.recsys.models import Recommender, build_recommender


class FixedScores(Recommender):
    """A recommender whose score matrix is given: users are one-hot, items are the score columns."""

    def __init__(self, *, data: RecData, scores: torch.Tensor) -> None:
        super().__init__(data=data, dim=4, visual_hidden=(), text_hidden=())
        self.scores = torch.nn.Parameter(scores.clone())

    def embed(self, v_hat=None, t_hat=None):
        return torch.eye(self.n_users), self.scores.T

    def regularization(self, x):
        return torch.zeros(len(x))


def pairs(*rows: tuple[int, int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 2)


def make_data(n_users: int, n_items: int, train, valid, test) -> RecData:
    return RecData(n_users=n_users, n_items=n_items, train=pairs(*train), valid=pairs(*valid), test=pairs(*test),
                   image=torch.randn(n_items, 3), text=torch.randn(n_items, 5))


def brute_force(scores: torch.Tensor, data: RecData, split: str, k: int) -> dict[str, float]:
    """One user at a time, from sorted Python lists."""
    excluded = set(map(tuple, data.train.tolist()))
    if split == "test":
        excluded |= set(map(tuple, data.valid.tolist()))
    targets: dict[int, set[int]] = {}
    for u, i in getattr(data, split).tolist():
        targets.setdefault(u, set()).add(i)
    sums = dict.fromkeys(("recall", "ndcg", "precision", "map"), 0.0)
    for u, relevant in targets.items():
        ranked = sorted((i for i in range(data.n_items) if (u, i) not in excluded), key=lambda i: -scores[u, i])[:k]
        rel = [1.0 if i in relevant else 0.0 for i in ranked]
        sums["recall"] += sum(rel) / len(relevant)
        sums["precision"] += sum(rel) / k
        dcg = sum(r / math.log2(n + 2) for n, r in enumerate(rel))
        idcg = sum(1 / math.log2(n + 2) for n in range(min(len(relevant), k)))
        sums["ndcg"] += dcg / idcg
        ap = sum(sum(rel[: n + 1]) / (n + 1) * r for n, r in enumerate(rel))
        sums["map"] += ap / min(len(relevant), k)
    return {f"{name}@{k}": value / len(targets) for name, value in sums.items()}


def test_hand_computed_example():
    """User 0: train {0}, test {1, 3}; scores rank items 0 > 2 > 1 > 4 > 3, so with 0 masked: 2, 1, 4, 3."""
    data = make_data(2, 5, train=[(0, 0), (1, 1)], valid=[], test=[(0, 1), (0, 3)])
    scores = torch.tensor([[9.0, 7.0, 8.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    out = ranking_metrics(FixedScores(data=data, scores=scores), data, ks=(1, 2, 4))
    assert out["users"] == 1  # user 1 has no test item
    # Top 1 = [2]: no hit.
    assert out["recall@1"] == out["ndcg@1"] == out["precision@1"] == out["map@1"] == 0
    # Top 2 = [2, 1]: one hit at rank 2.
    assert out["recall@2"] == pytest.approx(1 / 2)
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert out["map@2"] == pytest.approx((1 / 2) / 2)
    # Top 4 = [2, 1, 4, 3]: hits at ranks 2 and 4.
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["precision@4"] == pytest.approx(2 / 4)
    assert out["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert out["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 2)


@pytest.mark.parametrize("split", ["test", "valid"])
def test_against_brute_force(split):
    gen = torch.Generator().manual_seed(0)
    data = synthetic(n_users=30, n_items=25, dim=4, interactions_per_user=10, seed=3)
    scores = torch.randn(30, 25, generator=gen)
    model = FixedScores(data=data, scores=scores)
    ks = (1, 3, 5, 10, 30)
    out = ranking_metrics(model, data, split=split, ks=ks, batch_users=7)
    assert out["users"] == 30
    for k in ks:
        for key, value in brute_force(scores, data, split, k).items():
            assert out[key] == pytest.approx(value, abs=1e-9), key


def test_training_and_valid_items_masked():
    """Training items scored highest never enter the top K; valid items are masked on test but ranked on valid."""
    data = make_data(1, 6, train=[(0, 0), (0, 1)], valid=[(0, 2)], test=[(0, 3)])
    scores = torch.tensor([[10.0, 9.0, 8.0, 7.0, 0.0, 0.0]])
    model = FixedScores(data=data, scores=scores)
    test = ranking_metrics(model, data, split="test", ks=(1,))
    assert test["recall@1"] == 1.0 and test["ndcg@1"] == 1.0  # 0, 1 (train) and 2 (valid) masked: 3 is first
    valid = ranking_metrics(model, data, split="valid", ks=(1,))
    assert valid["recall@1"] == 1.0  # 2 is first once only training items are masked
    # Without masking, the test item would be fourth: recall@3 would be 0.
    assert ranking_metrics(model, data, split="test", ks=(3,))["precision@3"] == pytest.approx(1 / 3)


def test_k_beyond_catalogue_and_batching():
    data = synthetic(n_users=20, n_items=12, dim=4, interactions_per_user=5, seed=4)
    scores = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    model = FixedScores(data=data, scores=scores)
    out = ranking_metrics(model, data, ks=(50,))
    assert out["recall@50"] == pytest.approx(1.0)
    assert out == pytest.approx(brute_force(scores, data, "test", 50) | {"users": 20.0})
    assert ranking_metrics(model, data, batch_users=1) == pytest.approx(ranking_metrics(model, data, batch_users=1000))


@pytest.mark.parametrize("name", ["vbpr", "mmgcn"])
def test_real_models_and_state_restored(name):
    data = synthetic(n_users=40, n_items=30, dim=8, interactions_per_user=6, seed=1)
    torch.manual_seed(0)
    model = build_recommender(name, data, dim=8, visual_hidden=(16,), text_hidden=(8,), **(
        {"latent": 16} if name == "mmgcn" else {}))
    model.train()
    out = ranking_metrics(model, data, ks=(5, 10))
    assert set(out) == {"users"} | {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 10)}
    assert all(0.0 <= v <= 1.0 for key, v in out.items() if key != "users")
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad():
        scores = model.score_all(torch.arange(40))
    assert out == pytest.approx(brute_force(scores, data, "test", 10) | {
        key: value for key, value in out.items() if not key.endswith("@10")})


def test_bad_arguments():
    data = make_data(1, 3, train=[(0, 0)], valid=[], test=[(0, 1)])
    model = FixedScores(data=data, scores=torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="split"):
        ranking_metrics(model, data, split="train")
    with pytest.raises(ConfigError, match="ks"):
        ranking_metrics(model, data, ks=(0,))
    with pytest.raises(ConfigError, match="ks"):
        ranking_metrics(model, data, ks=())
    with pytest.raises(ConfigError, match="batch_users"):
        ranking_metrics(model, data, batch_users=0)
    other = make_data(2, 3, train=[(0, 0)], valid=[], test=[(1, 1)])
    with pytest.raises(ConfigError, match="2 x 3"):
        ranking_metrics(model, other)
