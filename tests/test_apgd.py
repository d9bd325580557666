"""APGD-CE / APGD-DLR / APGD-T: the schedule, strength against PGD, early stopping, restarts, per-sample ε."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from sparring.attacks import APGD, PGD, APGDTargeted, available, build
from sparring.attacks.apgd import apgd_start, checkpoints
from sparring.errors import ConfigError
from sparring.gradients import Autograd, GradientStep
from sparring.losses import LossFn, dlr_targeted
from sparring.threat import L2Ball, LinfBall

pytestmark = pytest.mark.usefixtures("single_thread")

N_POINTS = 200


@pytest.fixture(scope="module")
def points(digits) -> tuple[Tensor, Tensor]:
    _, test = digits
    return test.x[:N_POINTS], test.y[:N_POINTS]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclasses.dataclass
class CountingAutograd:
    """Autograd that counts the rows it was asked about (a gradient source like any other)."""

    rows: int = 0
    inner: Autograd = dataclasses.field(default_factory=Autograd)

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        self.rows += x.shape[0]
        return self.inner(model, x, loss_fn, ref)


# ------------------------------------------------------------------------------------------- schedule
def test_checkpoint_schedule() -> None:
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    for steps in (1, 5, 10, 37, 250):
        w = checkpoints(steps)
        assert w[0] == 0 and w[-1] <= steps and all(b > a for a, b in zip(w, w[1:], strict=False))


def test_registered_and_built_by_name() -> None:
    assert {"apgd", "apgd_t"} <= set(available())
    assert isinstance(build("apgd", loss="dlr"), APGD)
    assert isinstance(build("apgd_t", targets=3), APGDTargeted)
    assert build("apgd_t").describe()["targets"] == 9


@pytest.mark.parametrize(
    "make",
    [
        lambda: APGD(steps=0), lambda: APGD(restarts=0), lambda: APGD(rho=0.0), lambda: APGD(rho=1.5),
        lambda: APGD(momentum=0.0), lambda: APGD(score=False), lambda: APGD(loss="nope"),
        lambda: APGDTargeted(targets=0), lambda: APGDTargeted(steps=0), lambda: APGDTargeted(loss="ce"),
        lambda: APGDTargeted(score=False),
    ],
)
def test_bad_settings_raise(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_dlr_targeted_formula() -> None:
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, 2.0], [0.0, 5.0, 1.0, 2.0, -1.0]])
    ref = torch.tensor([[0, 2], [1, 3]])
    # row 0: −(4 − 3) / (4 − (2 + 1)/2); row 1: −(5 − 2) / (5 − (1 + 0)/2)
    torch.testing.assert_close(dlr_targeted(z, ref), torch.tensor([-1 / 2.5, -3 / 4.5]))
    with pytest.raises(ConfigError):
        dlr_targeted(z[:, :3], ref)


def test_random_start_inside_and_batch_independent() -> None:
    x = torch.rand(6, 1, 8, 8)
    for threat in (LinfBall(eps=0.1), L2Ball(eps=0.5), LinfBall(eps=0.1, bounds=None)):
        start = apgd_start(threat, x, seeded())
        assert threat.contains(start, x).all()
    linf = apgd_start(LinfBall(eps=0.1, bounds=None), x, seeded())
    torch.testing.assert_close((linf - x).flatten(1).abs().amax(1), torch.full((6,), 0.1))  # on the sphere


# ------------------------------------------------------------------------------------------- strength
def test_apgd_ce_at_least_as_strong_as_pgd100(trained_mlp, points) -> None:
    x, y = points
    threat = LinfBall(eps=0.1)
    apgd = APGD(loss="ce")(trained_mlp, x, y, threat, generator=seeded())
    pgd = PGD(steps=100)(trained_mlp, x, y, threat, generator=seeded())
    assert apgd.success.sum() >= pgd.success.sum()
    assert threat.contains(apgd.x_adv, x).all()
    # success, loss and logits describe x_adv
    logits = trained_mlp(apgd.x_adv)
    torch.testing.assert_close(apgd.logits, logits.detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(apgd.success, logits.argmax(1) != y)
    assert apgd.queries == 101


def test_dlr_and_targeted_work(trained_mlp, points) -> None:
    x, y = points
    threat = LinfBall(eps=0.1)
    clean = trained_mlp(x).argmax(1) == y
    robust = {}
    for label, attack in (("ce", APGD(loss="ce")), ("dlr", APGD(loss="dlr")), ("t", APGDTargeted(targets=9))):
        result = attack(trained_mlp, x, y, threat, generator=seeded())
        assert threat.contains(result.x_adv, x).all()
        assert torch.equal(result.success, trained_mlp(result.x_adv).argmax(1) != y)
        robust[label] = (clean & ~result.success).float().mean().item()
    assert robust["dlr"] < clean.float().mean().item() - 0.2  # DLR breaks a good share of the points
    assert robust["t"] <= robust["ce"] + 0.01
    assert APGDTargeted(targets=9, steps=10)(trained_mlp, x, y, threat).queries == 1 + 11 * 9


def test_restarts_only_add_breaks(trained_mlp, points) -> None:
    x, y = points
    threat = LinfBall(eps=0.08)
    one = APGD(steps=20)(trained_mlp, x, y, threat, generator=seeded(1))
    source = CountingAutograd()
    three = APGD(steps=20, restarts=3, gradients=source)(trained_mlp, x, y, threat, generator=seeded(1))
    assert (three.success | ~one.success).all()  # the first start is the same draw
    assert source.rows < 3 * 21 * len(x)  # later restarts ran on the unbroken rows only


# ------------------------------------------------------------------------------------------- early stop
@pytest.mark.parametrize(
    ("attack", "threat"),
    [(APGD(loss="ce"), LinfBall(eps=0.1)), (APGD(loss="dlr", steps=50), L2Ball(eps=0.6)),
     (APGDTargeted(targets=3, steps=30), LinfBall(eps=0.08))],
    ids=["ce-linf", "dlr-l2", "t-linf"],
)
def test_early_stop_same_result(trained_mlp, points, attack, threat) -> None:
    x, y = points
    stopped_source, full_source = CountingAutograd(), CountingAutograd()
    stopped = dataclasses.replace(attack, early_stop=True, gradients=stopped_source)
    full = dataclasses.replace(attack, early_stop=False, gradients=full_source)
    a = stopped(trained_mlp, x, y, threat, generator=seeded(4))
    b = full(trained_mlp, x, y, threat, generator=seeded(4))
    assert torch.equal(a.success, b.success)
    torch.testing.assert_close(a.x_adv, b.x_adv)
    assert 0 < a.success.sum() < len(x)
    assert stopped_source.rows < full_source.rows  # broken points stopped costing queries


# ------------------------------------------------------------------------------------------- threat sets
def test_per_sample_eps(trained_mlp, points) -> None:
    x, y = points[0][:40], points[1][:40]
    eps = torch.tensor([0.0, 0.05, 0.1, 0.2] * 10)
    for attack in (APGD(steps=20), APGDTargeted(targets=2, steps=10)):
        threat = LinfBall(eps=eps)
        result = attack(trained_mlp, x, y, threat, generator=seeded())
        assert threat.contains(result.x_adv, x).all()
        assert torch.equal(result.x_adv[eps == 0], x[eps == 0])
        assert torch.equal(result.success[eps == 0], trained_mlp(x[eps == 0]).argmax(1) != y[eps == 0])
        assert result.success[eps == 0.2].float().mean() > result.success[eps == 0].float().mean()


def test_l2_and_no_bounds(trained_mlp, points) -> None:
    x, y = points
    for threat in (L2Ball(eps=0.8), L2Ball(eps=0.8, bounds=None), LinfBall(eps=0.1, bounds=None)):
        result = APGD(steps=30)(trained_mlp, x, y, threat, generator=seeded())
        assert threat.contains(result.x_adv, x).all()
        assert result.success.float().mean() > 0.3


def test_deterministic_under_seed(trained_mlp, points) -> None:
    x, y = points[0][:50], points[1][:50]
    threat = L2Ball(eps=0.5)
    for attack in (APGD(steps=20), APGDTargeted(targets=2, steps=10)):
        a = attack(trained_mlp, x, y, threat, generator=seeded(7))
        b = attack(trained_mlp, x, y, threat, generator=seeded(7))
        c = attack(trained_mlp, x, y, threat, generator=seeded(8))
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
        assert not torch.equal(a.x_adv, c.x_adv)


def test_targeted_mode_reaches_target(trained_mlp, points) -> None:
    x, y = points[0][:60], points[1][:60]
    target = (y + 1) % 10
    result = APGD(loss="ce", steps=50)(trained_mlp, x, y, LinfBall(eps=0.3), target=target, generator=seeded())
    pred = trained_mlp(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == target)
    assert result.success.float().mean() > 0.8
    with pytest.raises(ConfigError):
        APGDTargeted(steps=5)(trained_mlp, x, y, LinfBall(eps=0.1), target=target)


def test_apgd_t_needs_four_classes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 4), torch.randint(0, 3, (5,))
    with pytest.raises(ConfigError, match="4 classes"):
        APGDTargeted(steps=5)(model, x, y, LinfBall(eps=0.1))


def test_caller_model_unchanged(points) -> None:
    """Train mode, BatchNorm, a frozen weight and a stale .grad survive every variant (train_mode too)."""
    x, y = points[0][:30], points[1][:30]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    model.train()
    model[1].weight.requires_grad_(False)
    model[4].weight.grad = torch.ones_like(model[4].weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for attack in (APGD(steps=10), APGDTargeted(targets=2, steps=5), APGD(steps=10, train_mode=True)):
        attack(model, x, y, LinfBall(eps=0.1), generator=seeded())
        assert model.training and all(m.training for m in model.modules())
        assert not model[1].weight.requires_grad and model[4].weight.requires_grad
        assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight))
        assert model[1].weight.grad is None
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
