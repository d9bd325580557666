"""What is special about the baseline objectives MART, AT-BSL and Free-AT (contracts: test_contracts.py)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparring.attacks import PGD
from sparring.config import build_component
from sparring.data import Dataset
from sparring.errors import ConfigError
from sparring.objectives import ATBSL, MART, OBJECTIVES, PGDAT, FreeAT
from sparring.objectives.mart import boosted_cross_entropy
from sparring.threat import L2Ball, LinfBall

pytestmark = pytest.mark.usefixtures("single_thread")


def mlp(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, classes))


def data(n: int = 32, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 16, generator=g), torch.randint(0, classes, (n,), generator=g)


def seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ MART
def test_boosted_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]).log()
    y = torch.tensor([0, 2])
    expected = torch.tensor([-math.log(0.5) - math.log(1 - 0.3), -math.log(0.7) - math.log(1 - 0.2)])
    torch.testing.assert_close(boosted_cross_entropy(logits, y), expected)


def test_boosted_cross_entropy_stable_when_a_wrong_class_is_certain() -> None:
    logits = torch.tensor([[0.0, 200.0, -5.0]])  # p_1 = 1 − 1e-87: naive log(1 − p_1) is −inf
    out = boosted_cross_entropy(logits, torch.tensor([0]))
    assert torch.isfinite(out).all() and out.item() == pytest.approx(200.0 + 200.0, rel=1e-4)


def test_mart_loss_matches_its_formula() -> None:
    model, (x, y) = mlp(), data()
    threat = LinfBall(eps=0.1)
    out = MART(threat=threat, attack=PGD(steps=3), beta=6.0)(model, x, y, generator=seeded())
    assert out.loss.shape == (len(y),)
    x_adv = PGD(steps=3)(model, x, y, threat, generator=seeded()).x_adv  # the same attack, same seed
    p_clean, p_adv = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    wrong = p_adv.scatter(1, y[:, None], -1.0).amax(1)
    bce = -p_adv.gather(1, y[:, None]).squeeze(1).log() - (1 - wrong).log()
    kl = (p_clean * (p_clean.log() - p_adv.log())).sum(1)
    expected = bce + 6.0 * kl * (1 - p_clean.gather(1, y[:, None]).squeeze(1))
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, model(x_adv))


def test_mart_beta_zero_is_boosted_ce_on_the_adversarial_input() -> None:
    model, (x, y) = mlp(), data()
    out = MART(threat=LinfBall(eps=0.1), attack=PGD(steps=3), beta=0.0)(model, x, y, generator=seeded())
    torch.testing.assert_close(out.loss, boosted_cross_entropy(out.logits, y))
    mart6 = MART(threat=LinfBall(eps=0.1), attack=PGD(steps=3), beta=6.0)(model, x, y, generator=seeded())
    assert (mart6.loss >= out.loss - 1e-6).all() and mart6.loss.sum() > out.loss.sum()


def test_mart_at_eps_zero_is_boosted_ce_not_ce() -> None:
    model, (x, y) = mlp(), data()
    out = MART(threat=LinfBall(eps=0.0))(model, x, y, generator=seeded())
    torch.testing.assert_close(out.loss, boosted_cross_entropy(model(x), y))
    assert (out.loss > F.cross_entropy(model(x), y, reduction="none")).all()
    assert MART.reduces_to_clean_ce is False


def test_mart_rejects_negative_beta() -> None:
    with pytest.raises(ConfigError, match="beta"):
        MART(beta=-1.0)


# ---------------------------------------------------------------------------------------------- AT-BSL
@pytest.mark.parametrize("counts", [None, [7, 7, 7, 7, 7]])
def test_at_bsl_with_uniform_counts_is_pgd_at(counts: list[int] | None) -> None:
    model, (x, y) = mlp(), data()
    threat = LinfBall(eps=0.1)
    bsl = ATBSL(threat=threat, attack=PGD(steps=3), class_counts=counts)(model, x, y, generator=seeded())
    pgd = PGDAT(threat=threat, attack=PGD(steps=3))(model, x, y, generator=seeded())
    torch.testing.assert_close(bsl.loss, pgd.loss)
    torch.testing.assert_close(bsl.logits, pgd.logits)


def test_at_bsl_adds_tau_log_counts_to_the_logits() -> None:
    model, (x, y) = mlp(), data()
    counts, threat = [500, 100, 50, 10, 1], LinfBall(eps=0.1)
    pgd = PGDAT(threat=threat, attack=PGD(steps=3))(model, x, y, generator=seeded())
    for tau in (1.0, 1.5):
        out = ATBSL(threat=threat, attack=PGD(steps=3), class_counts=counts, tau=tau)(model, x, y, generator=seeded())
        shifted = pgd.logits + tau * torch.tensor(counts, dtype=torch.float32).log()
        torch.testing.assert_close(out.loss, F.cross_entropy(shifted, y, reduction="none"))
        torch.testing.assert_close(out.logits, pgd.logits)  # same adversarial inputs (inner loss: plain CE)
    head, tail = y == 0, y == 4
    assert (out.loss[head] < pgd.loss[head]).all() and (out.loss[tail] > pgd.loss[tail]).all()


def test_at_bsl_inner_balanced_attacks_the_balanced_loss() -> None:
    model, (x, y) = mlp(), data()
    counts, threat = [500, 100, 50, 10, 1], LinfBall(eps=0.1)
    plain = ATBSL(threat=threat, attack=PGD(steps=5), class_counts=counts)
    inner = ATBSL(threat=threat, attack=PGD(steps=5), class_counts=counts, inner_balanced=True)
    a, b = plain(model, x, y, generator=seeded()), inner(model, x, y, generator=seeded())
    assert not torch.equal(a.logits, b.logits)
    assert b.loss.mean() > a.loss.mean()  # the attack maximizes the very loss that is trained


def test_at_bsl_training_shifts_predictions_toward_tail_classes(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    counts = [100] * 5 + [1] * 5  # declare classes 0-4 as head, 5-9 as tail (the data itself is balanced)

    def fit(objective: ATBSL) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = seeded(0)
        for _ in range(60):
            idx = torch.randint(0, len(train), (64,), generator=g)
            opt.zero_grad()
            objective(model, train.x[idx], train.y[idx], generator=g).loss.mean().backward()
            opt.step()
        return model.eval()

    kwargs = {"threat": LinfBall(eps=0.02), "attack": PGD(steps=2)}
    plain = fit(ATBSL(**kwargs))(test.x).argmax(1)
    balanced = fit(ATBSL(class_counts=counts, **kwargs))(test.x).argmax(1)
    assert (balanced >= 5).float().mean() > (plain >= 5).float().mean() + 0.2


def test_at_bsl_config_and_errors() -> None:
    built = build_component(OBJECTIVES, {"name": "at_bsl", "class_counts": [3, 2, 1], "tau": 1.5}, where="objective")
    assert isinstance(built, ATBSL) and built.class_counts == [3, 2, 1] and built.tau == 1.5
    assert built.describe()["class_counts"] == [3, 2, 1]
    with pytest.raises(ConfigError, match="positive"):
        ATBSL(class_counts=[3, 0, 1])
    with pytest.raises(ConfigError, match="tau"):
        ATBSL(tau=-1.0)
    model, (x, y) = mlp(), data()
    with pytest.raises(ConfigError, match="3 entries but the model has 5 classes"):
        ATBSL(class_counts=[3, 2, 1], attack=PGD(steps=1))(model, x, y, generator=seeded())


# --------------------------------------------------------------------------------------------- Free-AT
def test_free_at_delta_persists_and_steps_by_eps_sign() -> None:
    model, (x, y) = mlp(), data()
    eps = 0.1
    free = FreeAT(threat=LinfBall(eps=eps), replays=1)
    first = free(model, x, y)
    torch.testing.assert_close(first.loss, F.cross_entropy(model(x), y, reduction="none"))  # δ starts at 0
    first.loss.mean().backward()  # the trainer's backward: weight gradients and δ's gradient at once
    grad = free._leaf.grad.clone()  # type: ignore[union-attr]
    second = free(model, x, y)
    expected_delta = eps * grad.sign()
    torch.testing.assert_close(free.delta, expected_delta)
    shifted = model((x + expected_delta).clamp(0, 1))
    torch.testing.assert_close(second.loss, F.cross_entropy(shifted, y, reduction="none"))
    free(model, x[:10], y[:10])  # no backward in between: δ is kept, a smaller batch uses its first rows
    torch.testing.assert_close(free.delta, expected_delta)


@pytest.mark.parametrize("threat", [LinfBall(eps=0.05), L2Ball(eps=0.3)], ids=["linf", "l2"])
def test_free_at_delta_stays_in_the_ball_and_the_optimizer_replays(threat) -> None:
    model, (x, y) = mlp(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    opt.register_step_post_hook(lambda *args: steps.append(1))
    free = FreeAT(threat=threat, replays=4)
    free.optimizer = opt
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        out = free(model, x, y)
        out.loss.mean().backward()
        opt.step()
        opt.zero_grad()
    assert len(steps) == 3 * 4  # m optimizer steps per batch, m − 1 of them inside the objective
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert free.delta is not None and free.delta.abs().sum() > 0
    assert threat.contains((x + free.delta).clamp(0, 1), x).all()
    assert threat.distance(x + free.delta, x).max() <= threat.max_eps() + 1e-5  # δ itself, before the box


def test_free_at_warns_once_without_optimizer() -> None:
    model, (x, y) = mlp(), data()
    free = FreeAT(threat=LinfBall(eps=0.1))
    with pytest.warns(UserWarning, match="no optimizer bound"):
        free(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        free(model, x, y)


def test_free_at_beats_standard_training_under_pgd(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    threat, replays, passes = LinfBall(eps=0.15), 8, 4

    def fit(free: bool) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        objective = FreeAT(threat=threat, replays=replays)
        objective.optimizer = opt
        g = seeded(0)
        for _ in range(passes):  # m replays per batch for Free-AT, m passes of standard training: equal steps
            for _ in range(1 if free else replays):
                for idx in torch.randperm(len(train), generator=g).split(64):
                    xb, yb = train.x[idx], train.y[idx]
                    loss = objective(model, xb, yb).loss if free else F.cross_entropy(model(xb), yb, reduction="none")
                    opt.zero_grad()  # (Free-AT's own replays left the gradients zeroed)
                    loss.mean().backward()
                    opt.step()
        return model.eval()

    def robust(model: nn.Module) -> float:
        return PGD(steps=10)(model, test.x, test.y, threat, generator=seeded(1)).robust.float().mean().item()

    standard, free = fit(False), fit(True)
    clean = (free(test.x).argmax(1) == test.y).float().mean().item()
    assert clean > 0.7
    assert robust(free) > robust(standard) + 0.15  # measured: 0.31 against 0.08


def test_the_trainer_binds_its_optimizer_to_free_at(digits: tuple[Dataset, Dataset]) -> None:
    from sparring import Trainer
    from sparring.models import build_model
    from sparring.train import TrainConfig

    train, _ = digits
    objective = FreeAT(threat=LinfBall(eps=0.1), replays=2)
    model = build_model("mlp", input_shape=train.input_shape, num_classes=train.num_classes)
    trainer = Trainer(model=model, objective=objective, train=(train.x[:64], train.y[:64]),
                      config=TrainConfig(epochs=1, batch_size=32, progress=False))
    assert objective.optimizer is trainer.optimizer
    from sparring.objectives import DRO

    wrapped = FreeAT(threat=LinfBall(eps=0.1), replays=2)
    trainer = Trainer(model=model, objective=DRO(base=wrapped), train=(train.x[:64], train.y[:64]),
                      config=TrainConfig(epochs=1, batch_size=32, progress=False))
    assert wrapped.optimizer is trainer.optimizer  # found through the wrapper
