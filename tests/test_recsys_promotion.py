"""Promotion attacks (UAT-MC §7.3): the max_hit_50 loss through the core FGSM / PGD, and the target HR@K evaluator."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError, DataError
from sparring.recsys.data import RecData, synthetic
from sparring.recsys.promotion import (
    PromotionAttack,
    TargetScorer,
    anchor_users,
    cross_modal_cosine,
    pick_targets,
    promotion_attack,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class LinearRec(nn.Module):
    """``s(u, i) = a_u·v̂_i + b_u·t̂_i``: the recommender protocol (aligned / score_all) in its simplest form."""

    def __init__(self, v_hat: Tensor, t_hat: Tensor, a: Tensor, b: Tensor) -> None:
        super().__init__()
        self.n_users, self.n_items = a.shape[0], v_hat.shape[0]
        self.register_buffer("v_hat", v_hat)
        self.register_buffer("t_hat", t_hat)
        self.a, self.b = nn.Parameter(a), nn.Parameter(b)

    def aligned(self) -> tuple[Tensor, Tensor]:
        return self.v_hat, self.t_hat

    def score_all(self, users: Tensor, v_hat: Tensor | None = None, t_hat: Tensor | None = None) -> Tensor:
        v = self.v_hat if v_hat is None else v_hat
        t = self.t_hat if t_hat is None else t_hat
        return self.a[users] @ v.transpose(-1, -2) + self.b[users] @ t.transpose(-1, -2)


@pytest.fixture(scope="module")
def data() -> RecData:
    return synthetic(n_users=200, n_items=120, dim=64, interactions_per_user=10, seed=0)


def _profiles(data: RecData, feats: Tensor) -> Tensor:
    """(n_users, D) mean feature of each user's training items."""
    m = data.mask("train").float()
    return (m @ feats) / m.sum(1, keepdim=True).clamp_min(1)


def grouped_model(data: RecData) -> LinearRec:
    """Group 0 users score by the visual features, group 1 by the text ones (the planted mismatch)."""
    v, t = F.normalize(data.image, dim=1), F.normalize(data.text, dim=1)
    visual = (data.groups == 0).float()[:, None]
    return LinearRec(v, t, 5 * _profiles(data, v) * visual, 5 * _profiles(data, t) * (1 - visual))


def coordinated_model(data: RecData) -> LinearRec:
    """Every user scores both modalities with one taste vector: the two gradients coincide."""
    v, t = F.normalize(data.image, dim=1), F.normalize(data.text, dim=1)
    taste = 5 * _profiles(data, (v + t) / 2)
    return LinearRec(v, t, taste, taste.clone())


@pytest.fixture(scope="module")
def model(data: RecData) -> LinearRec:
    return grouped_model(data)


@pytest.fixture(scope="module")
def setup(data: RecData) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return pick_targets(data, n=6, generator=gen).items, anchor_users(data.n_users, generator=gen)


def brute_hr(model: LinearRec, data: RecData, target: int, anchors: Tensor, k: int) -> float:
    """HR@k of one target by the textbook definition: full ranking, training items masked, then top-k."""
    scores = model.score_all(anchors).masked_fill(data.mask("train")[anchors], float("-inf"))
    return (scores.topk(k, dim=1).indices == target).any(1).float().mean().item()


# ------------------------------------------------------------------------------------------------- setup helpers
def test_anchor_users_fraction_and_seed():
    a = anchor_users(1000, generator=torch.Generator().manual_seed(3))
    assert len(a) == 400 and a.unique().numel() == 400 and bool((a[1:] > a[:-1]).all())
    assert torch.equal(a, anchor_users(1000, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ConfigError, match="fraction"):
        anchor_users(10, fraction=0.0)


def test_pick_targets_pools_and_shortfall(data: RecData):
    counts = data.item_counts()
    cold = pick_targets(data, n=5, kind="cold", cold_max=5, generator=torch.Generator().manual_seed(0))
    hot = pick_targets(data, n=5, kind="hot", hot_min=30, generator=torch.Generator().manual_seed(0))
    assert bool((counts[cold.items] <= 5).all()) and bool((counts[hot.items] >= 30).all())
    pool = int((counts >= 30).sum())
    with pytest.warns(UserWarning, match="only"):
        short = pick_targets(data, n=pool + 10, kind="hot", hot_min=30)
    assert len(short.items) == pool == short.pool and short.note is not None
    with pytest.raises(DataError, match="no hot items"):
        pick_targets(data, kind="hot", hot_min=10**6)
    with pytest.raises(ConfigError, match="unknown target kind"):
        pick_targets(data, kind="lukewarm")


# ----------------------------------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_raises_loss_and_hr(method: str, data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = promotion_attack(model, data, method=method, eps=0.3, targets=targets, anchors=anchors)
    assert bool((result.loss_after > result.loss_before).all())
    assert result.hr(50).mean() > result.hr(50, after=False).mean() + 0.1
    assert bool((result.rank_change >= 0).all()) and result.rank_change.mean() > 0
    summary = result.summary()
    assert summary["hr_gain"] > 0 and summary["mean_rank_change"] > 0
    assert set(summary["hr_before"]) == {"10", "20", "50", "100"}


@pytest.mark.parametrize(("name", "methods"), [("vbpr", ("fgsm", "pgd")), ("mmgcn", ("fgsm",))])
def test_real_recommenders_are_promoted(name: str, methods: tuple[str, ...], data: RecData):
    from sparring.recsys.models import build_recommender

    torch.manual_seed(0)
    rec = build_recommender(name, data, visual_hidden=(32,), text_hidden=(32,))
    gen = torch.Generator().manual_seed(1)
    targets = pick_targets(data, n=4, generator=gen)
    anchors = anchor_users(data.n_users, generator=gen)
    params = {k: v.clone() for k, v in rec.state_dict().items()}
    for method in methods:
        result = promotion_attack(rec, data, method=method, eps=0.5, targets=targets, anchors=anchors)
        assert bool((result.loss_after > result.loss_before).all())
        assert result.hr(50).mean() > result.hr(50, after=False).mean()
    assert all(torch.equal(params[k], v) for k, v in rec.state_dict().items())


def test_pgd_stays_in_the_box(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    eps = 0.05
    result = promotion_attack(model, data, method="pgd", eps=eps, targets=targets, anchors=anchors)
    for adv, clean in ((result.v_adv, model.v_hat[targets]), (result.t_adv, model.t_hat[targets])):
        assert (adv - clean).abs().max() <= eps + 1e-6
    assert (result.v_adv - model.v_hat[targets]).abs().max() > eps / 2  # it moved


def test_fgsm_is_one_step_of_eps_times_norm(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    eps = 0.07
    # Scale the features so the relative budget ε‖v̂_t‖₂ differs from ε.
    scaled = LinearRec(2 * model.v_hat, 0.5 * model.t_hat, model.a.detach(), model.b.detach())
    result = promotion_attack(scaled, data, method="fgsm", eps=eps, targets=targets, anchors=anchors)
    for adv, clean in ((result.v_adv, scaled.v_hat[targets]), (result.t_adv, scaled.t_hat[targets])):
        size = eps * clean.norm(dim=1, keepdim=True)
        assert torch.allclose((adv - clean).abs(), size.expand_as(clean), atol=1e-6)
    # The step goes along the loss gradient's sign (linear model: sign(mean of active anchors' a_u)).
    assert result.loss_after.gt(result.loss_before).all()


def test_eps_zero_is_the_clean_evaluation(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    result = promotion_attack(model, data, method="pgd", eps=0.0, targets=targets, anchors=anchors)
    assert torch.equal(result.v_adv, model.v_hat[targets]) and torch.equal(result.t_adv, model.t_hat[targets])
    assert torch.equal(result.hr_after, result.hr_before) and bool((result.rank_change == 0).all())
    for row, target in enumerate(targets.tolist()):
        for col, k in enumerate(result.ks):
            assert result.hr_before[row, col].item() == pytest.approx(brute_hr(model, data, target, anchors, k))


def test_other_items_untouched(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    kth = torch.zeros(len(targets), len(anchors))
    scorer = TargetScorer(model, anchors, targets, kth, margin=1.0)
    x = torch.randn(len(targets), 2, 64)
    v_hat, t_hat = scorer.features(x)
    for copy, target in enumerate(targets.tolist()):
        others = torch.arange(data.n_items) != target
        assert torch.equal(v_hat[copy, others], model.v_hat[others])
        assert torch.equal(t_hat[copy, others], model.t_hat[others])
        assert torch.equal(v_hat[copy, target], x[copy, 0]) and torch.equal(t_hat[copy, target], x[copy, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    promotion_attack(model, data, method="fgsm", eps=0.1, targets=targets, anchors=anchors)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.a.requires_grad and model.a.grad is None


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_batched_targets_equal_separate_runs(method: str, data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    attack = PromotionAttack(method=method, eps=0.1)
    batched = attack(model, data, targets=targets, anchors=anchors)
    chunked = PromotionAttack(method=method, eps=0.1, max_elements=1)(model, data, targets=targets, anchors=anchors)
    for row in range(len(targets)):
        alone = attack(model, data, targets=targets[row:row + 1], anchors=anchors)
        assert torch.allclose(alone.v_adv[0], batched.v_adv[row], atol=1e-6)
        assert torch.allclose(alone.t_adv[0], batched.t_adv[row], atol=1e-6)
        assert torch.equal(alone.hr_after[0], batched.hr_after[row])
    assert torch.allclose(chunked.v_adv, batched.v_adv, atol=1e-6) and torch.equal(chunked.hr_after, batched.hr_after)


def test_deterministic_under_seed(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    attack = PromotionAttack(method="pgd", eps=0.1, random_start=True)
    one = attack(model, data, targets=targets, anchors=anchors, seed=4)
    two = attack(model, data, targets=targets, anchors=anchors, seed=4)
    other = attack(model, data, targets=targets, anchors=anchors, seed=5)
    assert torch.equal(one.v_adv, two.v_adv) and torch.equal(one.hr_after, two.hr_after)
    assert not torch.equal(one.v_adv, other.v_adv)


def test_relative_promotion_guards_zero(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    result = promotion_attack(model, data, method="fgsm", eps=0.3, targets=targets, anchors=anchors)
    before, after = result.hr(50, after=False), result.hr(50)
    for b, a, rel, gain in zip(before.tolist(), after.tolist(), result.relative_promotion, result.hr_gain.tolist(),
                               strict=True):
        assert gain == pytest.approx(a - b)
        assert rel is None if b == 0 else rel == pytest.approx((a / b - 1) * 100)


def test_cross_modal_cosine_shows_the_planted_mismatch(data: RecData, setup):
    targets, anchors = setup
    mismatch = cross_modal_cosine(grouped_model(data), data, targets=targets, anchors=anchors)
    coordinated = cross_modal_cosine(coordinated_model(data), data, targets=targets, anchors=anchors)
    assert mismatch.shape == (len(targets),)
    assert mismatch.abs().max() < 0.5 and coordinated.min() > 0.99
    result = promotion_attack(grouped_model(data), data, method="fgsm", eps=0.1, targets=targets, anchors=anchors)
    assert result.cosine is not None and torch.allclose(result.cosine, mismatch, atol=1e-5)


def test_bad_input_is_refused(data: RecData, model: LinearRec, setup):
    targets, anchors = setup
    with pytest.raises(ConfigError, match="eps must be"):
        promotion_attack(model, data, eps=-0.1, targets=targets, anchors=anchors)
    with pytest.raises(ConfigError, match="unknown promotion attack"):
        promotion_attack(model, data, method="cw", eps=0.1, targets=targets, anchors=anchors)
    with pytest.raises(DataError, match="targets is empty"):
        promotion_attack(model, data, eps=0.1, targets=torch.empty(0, dtype=torch.long), anchors=anchors)
    with pytest.raises(DataError, match="targets must lie"):
        promotion_attack(model, data, eps=0.1, targets=torch.tensor([data.n_items]), anchors=anchors)
    with pytest.raises(DataError, match="anchors is empty"):
        promotion_attack(model, data, eps=0.1, targets=targets, anchors=torch.empty(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="k must be"):
        promotion_attack(model, data, eps=0.1, targets=targets, anchors=anchors, k=data.n_items)
    other = synthetic(n_users=50, n_items=40, dim=8, interactions_per_user=5)
    with pytest.raises(DataError, match="train the model on this data set"):
        promotion_attack(model, other, eps=0.1, targets=targets[:1], anchors=anchors[:3])
