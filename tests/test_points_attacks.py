"""Point-cloud attacks and the point-budget threat: what is special about each (the contract tests cover the rest)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparring.attacks as attacks
from sparring.errors import DataError, ThreatModelError
from sparring.losses import cross_entropy
from sparring.points.attacks import KNNAttack, PointAdd, PointDrop, knn_penalty
from sparring.points.data import fill_removed, procedural_shapes
from sparring.points.models import PointNet
from sparring.points.threat import PointSet, descending_rank
from sparring.threat import THREATS, L2Ball, LinfBall, make_threat

N_POINTS = 64


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny PointNet briefly trained on four procedural shapes (64 points); eval mode; clouds and labels."""
    data = procedural_shapes(n_per_class=16, num_points=N_POINTS, seed=0, classes=["sphere", "cube", "plane", "helix"])
    torch.manual_seed(0)
    model = PointNet(input_shape=(N_POINTS, 3), num_classes=4, width=16, batch_norm=False, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        cross_entropy(model(data.x), data.y).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(data.x).argmax(1) == data.y).float().mean() > 0.6  # learned something
    return model, data.x, data.y


def clean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return cross_entropy(model(x), y)


def clean_errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(1) != y).sum())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ PointSet


def cloud(b: int = 2, n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=seeded(seed))


def test_point_set_is_registered_and_describes_its_radius() -> None:
    assert THREATS.get("points") is PointSet
    threat = make_threat("points", 3, None)
    assert isinstance(threat, PointSet) and threat.norm == "points" and threat.bounds is None
    assert PointSet(eps=2, radius=0.1).describe() == {"norm": "points", "eps": 2.0, "bounds": None, "radius": 0.1}
    assert PointSet(eps=2, radius=0.1).with_eps(5).radius == 0.1
    sub = PointSet(eps=torch.tensor([1.0, 2.0, 3.0]), radius=0.1).subset(torch.tensor([2, 0]))
    assert torch.equal(sub.eps, torch.tensor([3.0, 1.0])) and sub.radius == 0.1  # type: ignore[arg-type]


@pytest.mark.parametrize("radius", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_radius_raises(radius: object) -> None:
    with pytest.raises(ThreatModelError, match="radius"):
        PointSet(eps=2, radius=radius)  # type: ignore[arg-type]


def test_distance_counts_changed_rows_and_contains_checks_hausdorff() -> None:
    x = cloud()
    x_adv = x.clone()
    x_adv[0, 1] = x[0, 4]  # a duplicate: changed, Hausdorff 0
    x_adv[0, 2] += torch.tensor([0.0, 0.0, 0.05])  # off the cloud by at most 0.05
    x_adv[1, 0] += 1e-7  # below atol
    threat = PointSet(eps=2, radius=0.05)
    torch.testing.assert_close(threat.distance(x_adv, x), torch.tensor([2.0, 1.0]))
    assert threat.contains(x_adv, x).tolist() == [True, True]
    assert threat.hausdorff(x_adv, x)[0] <= 0.05 + 1e-6
    assert PointSet(eps=1, radius=0.05).contains(x_adv, x).tolist() == [False, True]  # too many rows
    assert PointSet(eps=2, radius=0.01).contains(x_adv, x).tolist() == [False, True]  # too far from the cloud
    x_far = x.clone()
    x_far[1, 3] += 10.0
    assert PointSet(eps=6, radius=1.0).contains(x_far, x).tolist() == [True, False]


def test_eps_is_floored_per_sample() -> None:
    x = cloud(b=3)
    assert PointSet(eps=2.9).budget(x).tolist() == [2, 2, 2]
    assert PointSet(eps=torch.tensor([0.5, 1.0, 99.0])).budget(x).tolist() == [0, 1, 6]  # at most N


def test_project_keeps_the_most_displaced_rows_within_the_radius() -> None:
    x = torch.zeros(1, 5, 3)
    x[0, :, 0] = torch.arange(5.0)  # points on a line, 1 apart
    x_adv = x.clone()
    x_adv[0, 0, 1] = 0.3  # displacements 0.3, 0.1, 0.5, 0.2 on rows 0-3
    x_adv[0, 1, 1] = 0.1
    x_adv[0, 2, 1] = 0.5
    x_adv[0, 3, 1] = 0.2
    out = PointSet(eps=2.7, radius=0.25).project(x_adv, x)
    changed = PointSet(eps=2).changed(out, x)[0]
    assert changed.tolist() == [True, False, True, False, False]  # the two largest displacements
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 0.25, 0.0]))  # pulled back to the radius
    torch.testing.assert_close(out[0, 2], torch.tensor([2.0, 0.25, 0.0]))
    assert PointSet(eps=2, radius=0.25).contains(out, x).all()
    # radius 0: a moved row snaps onto its nearest clean point.
    x_adv[0, 2] = torch.tensor([3.9, 0.1, 0.0])
    snapped = PointSet(eps=1).project(x_adv, x)
    torch.testing.assert_close(snapped[0, 2], x[0, 4])
    assert PointSet(eps=1).contains(snapped, x).all()


def test_project_with_per_sample_budget_and_box() -> None:
    x = cloud(b=2, n=8)
    x_adv = x + 0.3 * torch.randn(x.shape, generator=seeded(1))
    threat = PointSet(eps=torch.tensor([0.0, 3.0]), radius=0.1, bounds=(0.0, 1.0))
    out = threat.project(x_adv, x)
    assert torch.equal(out[0], x[0])
    assert threat.distance(out, x)[1] <= 3
    assert threat.contains(out, x).all()


def test_descending_rank_breaks_ties_by_index() -> None:
    assert descending_rank(torch.tensor([[1.0, 3.0, 3.0, 2.0]])).tolist() == [[3, 0, 1, 2]]


def test_random_start_is_x_and_step_refuses() -> None:
    x = cloud()
    assert torch.equal(PointSet(eps=3, radius=0.1).random_start(x, seeded()), x)
    with pytest.raises(ThreatModelError, match="point_drop or point_add"):
        PointSet(eps=3).step(torch.ones_like(x), 0.1)


def test_generic_attacks_refuse_a_point_set(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    with pytest.raises(ThreatModelError, match="point_drop or point_add"):
        attacks.build("pgd", steps=2)(model, x[:4], y[:4], PointSet(eps=3, radius=0.1), generator=seeded())


# ---------------------------------------------------------------------------------------- point_drop


def test_point_drop_raises_the_loss_and_drops_exactly_the_budget(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained
    threat = PointSet(eps=8.6)
    result = PointDrop()(model, x, y, threat)
    assert result.loss.mean() > clean_loss(model, x, y).mean() + 0.1
    assert result.success.sum() >= clean_errors(model, x, y)
    assert threat.distance(result.x_adv, x).tolist() == [8.0] * len(x)  # distinct changed rows
    assert threat.hausdorff(result.x_adv, x).max() == 0  # every row is a clean point
    assert result.queries == 11


def test_point_drop_per_sample_budget(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    eps = torch.tensor([0.0, 1.0, 5.0, 12.0, 3.5, 7.0])
    result = PointDrop(iterations=4)(model, x[:6], y[:6], PointSet(eps=eps))
    assert PointSet(eps=eps).distance(result.x_adv, x[:6]).tolist() == [0.0, 1.0, 5.0, 12.0, 3.0, 7.0]


def test_point_drop_more_budget_breaks_at_least_as_many(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    small = PointDrop()(model, x, y, PointSet(eps=4))
    large = PointDrop()(model, x, y, PointSet(eps=16))
    assert large.success.sum() >= small.success.sum()
    assert large.loss.mean() >= small.loss.mean()


def test_point_drop_beats_dropping_at_random(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    result = PointDrop()(model, x, y, PointSet(eps=8))
    keep = torch.rand(x.shape[:2], generator=seeded(0)).argsort(1).argsort(1) >= 8  # 8 random points dropped
    assert result.loss.mean() > clean_loss(model, fill_removed(x, keep), y).mean()


def test_point_drop_needs_a_point_set(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    with pytest.raises(ThreatModelError, match="point_drop needs a PointSet"):
        PointDrop()(model, x, y, LinfBall(eps=0.05, bounds=None))
    with pytest.raises(DataError, match=r"point clouds \(B, N, 3\)"):
        PointDrop()(nn.Flatten(), torch.rand(2, 12), torch.zeros(2, dtype=torch.long), PointSet(eps=2))


# ----------------------------------------------------------------------------------------- point_add


@pytest.mark.parametrize("radius", [0.0, 0.1])
def test_point_add_respects_budget_and_radius(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor], radius: float,
) -> None:
    model, x, y = trained
    threat = PointSet(eps=6, radius=radius)
    result = PointAdd(steps=10)(model, x, y, threat, generator=seeded())
    assert (threat.distance(result.x_adv, x) <= 6).all()
    assert (threat.hausdorff(result.x_adv, x) <= radius + 1e-6).all()
    assert threat.contains(result.x_adv, x).all()


def test_point_add_raises_the_loss(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    result = PointAdd(steps=10)(model, x, y, PointSet(eps=8, radius=0.15), generator=seeded())
    assert result.loss.mean() > clean_loss(model, x, y).mean() + 0.05
    assert result.success.sum() >= clean_errors(model, x, y)
    assert result.queries == 1 + 11


def test_point_add_restarts_only_help(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    threat = PointSet(eps=4, radius=0.1)
    one = PointAdd(steps=5)(model, x, y, threat, generator=seeded(1))
    three = PointAdd(steps=5, restarts=3)(model, x, y, threat, generator=seeded(1))
    assert (three.success | ~one.success).all()  # a broken sample stays broken
    assert threat.contains(three.x_adv, x).all()


def test_point_add_needs_a_point_set(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    with pytest.raises(ThreatModelError, match="point_add needs a PointSet"):
        PointAdd()(model, x, y, L2Ball(eps=0.5, bounds=None))


# ----------------------------------------------------------------------------------------------- knn


def test_knn_penalty_flags_outliers() -> None:
    x = cloud(b=1, n=40)
    assert knn_penalty(x).shape == (1,)
    x_out = x.clone()
    x_out[0, 0] += 3.0  # one point far off the cloud
    assert knn_penalty(x_out) > knn_penalty(x) + 0.01


def test_knn_is_smoother_than_pgd_with_the_same_budget(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.05, bounds=None)
    pgd = attacks.build("pgd", steps=10)(model, x, y, threat, generator=seeded())
    smooth = KNNAttack(steps=10, smoothness=1.0)(model, x, y, threat, generator=seeded())
    smoother = KNNAttack(steps=10, smoothness=100.0)(model, x, y, threat, generator=seeded())
    for result in (smooth, smoother):
        assert threat.contains(result.x_adv, x).all()
        assert result.success.sum() >= clean_errors(model, x, y)
    assert knn_penalty(smooth.x_adv).mean() < knn_penalty(pgd.x_adv).mean()
    assert knn_penalty(smoother.x_adv).mean() <= knn_penalty(smooth.x_adv).mean()
    torch.testing.assert_close(smooth.loss, clean_loss(model, smooth.x_adv, y))  # the model loss, not the objective


def test_knn_without_smoothness_is_pgd(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    threat = L2Ball(eps=0.3, bounds=None)
    pgd = attacks.build("pgd", steps=5)(model, x, y, threat, generator=seeded(2))
    knn = KNNAttack(steps=5, smoothness=0.0)(model, x, y, threat, generator=seeded(2))
    torch.testing.assert_close(knn.x_adv, pgd.x_adv)


def test_knn_refuses_a_point_set_and_non_clouds(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    with pytest.raises(ThreatModelError, match="point_drop or point_add"):
        KNNAttack(steps=2)(model, x, y, PointSet(eps=4, radius=0.1))
    with pytest.raises(DataError, match=r"point clouds \(B, N, 3\)"):
        KNNAttack(steps=2)(nn.Flatten(), torch.rand(2, 12), torch.zeros(2, dtype=torch.long), LinfBall(eps=0.1))


# ------------------------------------------------------------------------------------ the core's PGD


def test_pgd_attacks_clouds_in_an_unbounded_linf_ball(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.05, bounds=None)
    result = attacks.build("pgd", steps=10)(model, x, y, threat, generator=seeded())
    assert result.x_adv.shape == x.shape
    assert threat.contains(result.x_adv, x).all()
    assert result.loss.mean() > clean_loss(model, x, y).mean()
    assert result.success.sum() >= clean_errors(model, x, y)


def test_point_attacks_are_registered_with_their_inputs() -> None:
    assert {"point_drop", "point_add", "knn"} <= set(attacks.available())
    assert attacks.ATTACKS.get("point_drop").inputs == "point_set"
    assert attacks.ATTACKS.get("point_add").inputs == "point_set"
    assert attacks.ATTACKS.get("knn").inputs == "points"
    assert attacks.ATTACKS.get("pgd").inputs == "any"
