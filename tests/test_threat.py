"""Threat models: projection, random start, normalized steps, validation."""

from __future__ import annotations

import pytest
import torch

from sparring.errors import ThreatModelError
from sparring.threat import L2Ball, LinfBall, TokenL2Ball, TokenLinfBall, make_threat


def test_linf_projection_is_clamp_and_box() -> None:
    x = torch.full((2, 3), 0.5)
    far = torch.tensor([[2.0, -1.0, 0.55], [0.5, 0.0, 0.9]])
    p = LinfBall(eps=0.1).project(far, x)
    assert torch.allclose(p, torch.tensor([[0.6, 0.4, 0.55], [0.5, 0.4, 0.6]]))


def test_l2_projection_scales_to_radius_and_keeps_inside_points() -> None:
    x = torch.zeros(2, 4)
    threat = L2Ball(eps=1.0, bounds=None)
    far = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.1, 0.1, 0.0, 0.0]])
    p = threat.project(far, x)
    assert torch.allclose(p[0], torch.tensor([0.6, 0.8, 0.0, 0.0]))
    assert torch.equal(p[1], far[1])


def test_l2_projection_with_box_stays_in_ball() -> None:
    x = torch.rand(16, 1, 8, 8)
    threat = L2Ball(eps=0.7)
    p = threat.project(x + torch.randn_like(x), x)
    assert threat.contains(p, x).all()


@pytest.mark.parametrize("threat", [LinfBall(eps=0.3), L2Ball(eps=2.0), LinfBall(eps=0.3, bounds=None)])
def test_random_start_inside(threat) -> None:
    x = torch.rand(32, 3, 4, 4)
    start = threat.random_start(x, torch.Generator().manual_seed(0))
    assert threat.contains(start, x).all()
    assert not torch.equal(start, x)


def test_steps_have_the_right_length() -> None:
    g = torch.randn(4, 10)
    assert torch.allclose(LinfBall(eps=1).step(g, 0.1).abs(), torch.full_like(g, 0.1))
    norms = L2Ball(eps=1).step(g, torch.tensor([0.1, 0.2, 0.3, 0.4])).norm(dim=1)
    assert torch.allclose(norms, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert torch.equal(L2Ball(eps=1).step(torch.zeros(2, 3), 0.5), torch.zeros(2, 3))  # no NaN on zero grads


def test_per_sample_eps_broadcast_and_subset() -> None:
    eps = torch.tensor([0.0, 0.1, 0.2])
    threat = LinfBall(eps=eps)
    x = torch.full((3, 2, 2), 0.5)
    p = threat.project(x + 1.0, x)
    assert torch.allclose(p[:, 0, 0], 0.5 + eps)
    assert torch.equal(threat.subset(torch.tensor([2])).eps, torch.tensor([0.2]))


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), torch.tensor([0.1, -0.2]), torch.zeros(2, 2)])
def test_bad_eps_is_rejected(eps) -> None:
    with pytest.raises(ThreatModelError):
        LinfBall(eps=eps)


def test_per_sample_eps_must_match_batch() -> None:
    with pytest.raises(ThreatModelError, match="3 entries"):
        LinfBall(eps=torch.ones(3)).eps_for(torch.zeros(4, 2))


def test_bad_bounds_and_norm() -> None:
    with pytest.raises(ThreatModelError):
        LinfBall(eps=0.1, bounds=(1.0, 0.0))
    with pytest.raises(Exception, match="unknown threat model"):
        make_threat("l3", 0.1)


@pytest.mark.parametrize("ball", [TokenL2Ball, TokenLinfBall])
def test_token_balls_bound_each_token_and_never_move_padding_or_masked_tokens(ball) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 8, generator=gen)
    x[0, 4:] = 0  # padding
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, :2] = False
    eps = torch.tensor([0.1, 0.5, 1.0])
    threat = ball(eps=eps, mask=mask)
    far = threat.project(x + 5 * torch.randn(x.shape, generator=gen), x)
    start = threat.random_start(x, gen)
    for x_adv in (far, start):
        assert threat.contains(x_adv, x).all()
        assert torch.equal(x_adv[0, 4:], x[0, 4:]) and torch.equal(x_adv[2, :2], x[2, :2])
    order = 2 if ball is TokenL2Ball else float("inf")
    per_token = torch.linalg.vector_norm(far - x, ord=order, dim=-1)
    assert torch.allclose(per_token[1, :], torch.full((6,), 0.5), atol=1e-5)  # every free token on its sphere
    assert torch.allclose(threat.project(far, x), far)  # idempotent
    assert torch.equal(threat.with_eps(0.0).project(far, x), x)
    sub = threat.subset(torch.tensor([2]))
    assert torch.equal(sub.project(far[2:], x[2:]), far[2:])
    with pytest.raises(ThreatModelError, match="token embeddings"):
        threat.project(x.flatten(1), x.flatten(1))
