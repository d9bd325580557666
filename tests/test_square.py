"""What is special about the Square attack: black-box random search, both norms, per-sample randomness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from sparring.attacks import PGD, Square
from sparring.errors import ConfigError, ThreatModelError
from sparring.threat import L2Ball, LinfBall, ThreatModel

pytestmark = pytest.mark.usefixtures("single_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cnn(digits) -> nn.Module:
    """A small CNN on (1, 8, 8) digits, standard training for a fraction of a second (~95% clean accuracy)."""
    train, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(train), (128,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def points(digits, cnn) -> tuple[Tensor, Tensor]:
    """40 test digits the CNN classifies correctly."""
    _, test = digits
    x, y = test.x[:80], test.y[:80]
    with torch.no_grad():
        correct = cnn(x).argmax(1) == y
    return x[correct][:40], y[correct][:40]


class Quantized(nn.Module):
    """``round(16 x) / 16`` in front of a network: piecewise constant, so its input gradient is zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 16) / 16)


THREATS = [LinfBall(eps=0.15), L2Ball(eps=1.5)]


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_breaks_a_standard_model_inside_the_threat_set(cnn, points, threat: ThreatModel) -> None:
    x, y = points
    result = Square(queries=300)(cnn, x, y, threat, generator=seeded())
    assert threat.contains(result.x_adv, x).all()
    assert result.robust.float().mean() < 0.5
    with torch.no_grad():
        logits = cnn(result.x_adv)
    torch.testing.assert_close(result.logits, logits)
    assert torch.equal(result.success, logits.argmax(1) != y)


@pytest.mark.parametrize("threat_cls,scale", [(LinfBall, 0.2), (L2Ball, 2.0)], ids=["linf", "l2"])
def test_per_sample_eps(cnn, points, threat_cls: type[ThreatModel], scale: float) -> None:
    x, y = points
    eps = torch.linspace(0, 1, x.shape[0]) * scale
    threat = threat_cls(eps=eps)
    result = Square(queries=100)(cnn, x, y, threat, generator=seeded())
    assert threat.contains(result.x_adv, x).all()
    assert torch.equal(result.x_adv[0], x[0]) and not result.success[0]
    # Search steps keep the perturbation at the vertices (L∞) or on the sphere (L2), before the box clamp.
    assert (threat.distance(result.x_adv, x)[1:] > 0).all()


@pytest.mark.parametrize("threat", [LinfBall(eps=0.0), L2Ball(eps=0.0)], ids=["linf", "l2"])
def test_eps_zero_returns_the_input_with_one_query(cnn, points, threat: ThreatModel) -> None:
    x, y = points
    result = Square(queries=50)(cnn, x, y, threat, generator=seeded())
    assert torch.equal(result.x_adv, x)
    assert not result.success.any()
    assert result.queries == 1  # nothing to search: the initial point is x


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_deterministic_under_seed(cnn, points, threat: ThreatModel) -> None:
    x, y = points
    attack = Square(queries=60)
    a = attack(cnn, x, y, threat, generator=seeded(1))
    b = attack(cnn, x, y, threat, generator=seeded(1))
    c = attack(cnn, x, y, threat, generator=seeded(2))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("threat", [LinfBall(eps=0.1), L2Ball(eps=0.8)], ids=["linf", "l2"])
def test_batch_independence(cnn, points, threat: ThreatModel) -> None:
    """A sample's result is the same alone, among other samples, and whenever its batch mates stop."""
    x, y = points
    attack = Square(queries=150)
    full = attack(cnn, x, y, threat, generator=seeded(4))
    alone = attack(cnn, x[:1], y[:1], threat, generator=seeded(4))
    mixed_x, mixed_y = x.flip(0).clone(), y.flip(0).clone()
    mixed_x[0], mixed_y[0] = x[0], y[0]
    mixed = attack(cnn, mixed_x[:10], mixed_y[:10], threat, generator=seeded(4))
    for other in (alone, mixed):
        torch.testing.assert_close(other.x_adv[0], full.x_adv[0])
        assert other.success[0] == full.success[0]


def test_breaks_a_gradient_masked_model_where_pgd_fails(cnn, points) -> None:
    x, y = points
    masked = Quantized(cnn).eval()
    threat = LinfBall(eps=0.15)
    x_req = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(masked(x_req), y).backward()
    assert torch.count_nonzero(x_req.grad) == 0  # the gradient is masked
    pgd = PGD(steps=20, random_start=False)(masked, x, y, threat, generator=seeded())
    square = Square(queries=300)(masked, x, y, threat, generator=seeded())
    assert pgd.robust.float().mean() == 1.0
    assert square.robust.float().mean() < 0.6
    assert threat.contains(square.x_adv, x).all()


def test_queries_respected(cnn, points) -> None:
    x, y = points
    threat = LinfBall(eps=0.02)  # too small to break most points: they use the whole budget
    one = Square(queries=40)(cnn, x, y, threat, generator=seeded())
    assert one.queries == 40 and one.robust.any()
    two = Square(queries=40, restarts=2)(cnn, x, y, threat, generator=seeded())
    assert two.queries == 80
    assert two.success.sum() >= one.success.sum()  # the first restart is the same run
    init_only = Square(queries=1)(cnn, x, y, threat, generator=seeded())
    assert init_only.queries == 1


def test_early_stop_counts_only_queries_used(cnn, points) -> None:
    x, y = points
    result = Square(queries=2000)(cnn, x, y, LinfBall(eps=0.3), generator=seeded())
    assert result.success.all()
    assert result.queries < 2000


def test_caller_model_unchanged(cnn, points) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = points
    Square(queries=20, train_mode=True)(model, x, y, LinfBall(eps=0.1), generator=seeded())
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_targeted(cnn, points) -> None:
    x, y = points
    target = (y + 1) % 10
    result = Square(queries=300)(cnn, x, y, LinfBall(eps=0.2), target=target, generator=seeded())
    assert result.success.float().mean() > 0.3
    assert torch.equal(result.success, result.logits.argmax(1) == target)
    assert (result.loss[result.success] > 0).all()  # −margin(z, t) = z_t − max_{i≠t} z_i > 0 once reached


@pytest.mark.parametrize("threat", [LinfBall(eps=0.3, bounds=None), L2Ball(eps=2.0, bounds=None)], ids=["linf", "l2"])
def test_tabular_inputs_without_bounds(trained_mlp, digits, threat: ThreatModel) -> None:
    """(B, D) inputs are searched as (B, 1, 1, D) with windows of consecutive features."""
    _, test = digits
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), trained_mlp).eval()
    x, y = test.x[:30].flatten(1), test.y[:30]
    result = Square(queries=200)(model, x, y, threat, generator=seeded())
    assert result.x_adv.shape == x.shape
    assert threat.contains(result.x_adv, x).all()
    assert result.success.float().mean() > 0.3


def test_non_square_images() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 10, 10))
    x = torch.rand(6, 3, 4, 10)
    y = torch.randint(0, 10, (6,))
    for threat in (LinfBall(eps=0.1), L2Ball(eps=0.5)):
        result = Square(queries=30)(model, x, y, threat, generator=seeded())
        assert threat.contains(result.x_adv, x).all()


def test_p_schedule_is_rescaled_to_the_budget() -> None:
    attack = Square(queries=1000, p_init=0.8)
    assert attack.p_at(0) == 0.8
    assert attack.p_at(2) == 0.4  # 2 / 1000 of the budget is iteration 20 of 10 000
    assert attack.p_at(999) == pytest.approx(0.8 / 512)


def test_settings_are_validated() -> None:
    for bad in ({"queries": 0}, {"p_init": 0.0}, {"p_init": 1.5}, {"restarts": 0}, {"score": False}):
        with pytest.raises(ConfigError):
            Square(**bad)


@dataclass(frozen=True, kw_only=True)
class _L1Ball(LinfBall):
    norm: ClassVar[str] = "l1"


def test_unsupported_norm_is_refused(cnn, points) -> None:
    x, y = points
    with pytest.raises(ThreatModelError, match="linf"):
        Square(queries=5)(cnn, x, y, _L1Ball(eps=0.1))


def test_autoattack_compat_shares_the_draws_across_the_batch(single_thread) -> None:
    """AutoAttack's port draws one window and sign per iteration for the whole batch; the paper per sample."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.rand(1, 1, 8, 8).repeat(6, 1, 1, 1)  # six copies of one image
    y = model(x).argmax(1)  # correctly classified, so every copy is searched
    threat = LinfBall(eps=0.05)
    shared = Square(queries=30, autoattack_compat=True)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    independent = Square(queries=30)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(shared.x_adv[0], row) for row in shared.x_adv)
    assert not all(torch.equal(independent.x_adv[0], row) for row in independent.x_adv)
