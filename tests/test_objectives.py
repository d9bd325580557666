"""What is special about each objective: TRADES' KL maximization, fast AT's overfitting detector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparring.attacks import PGD
from sparring.losses import kl_to_reference
from sparring.objectives import PGDAT, TRADES, CatastrophicOverfittingWarning, FastAT, Standard
from sparring.threat import LinfBall


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))


def data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_trades_inner_step_maximizes_kl_not_ce() -> None:
    model = mlp()
    x, y = data()
    trades = TRADES(threat=LinfBall(eps=0.1), steps=10)
    x_adv = trades.maximize_kl(model, x, torch.Generator().manual_seed(0))
    clean = F.softmax(model(x), 1)
    kl_adv = kl_to_reference(model(x_adv), clean)
    kl_rand = kl_to_reference(model(LinfBall(eps=0.1).random_start(x, torch.Generator().manual_seed(1))), clean)
    assert kl_adv.mean() > 3 * kl_rand.mean()
    assert LinfBall(eps=0.1).contains(x_adv, x).all()


def test_trades_loss_is_ce_plus_beta_kl() -> None:
    model = mlp()
    x, y = data()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    t0 = TRADES(threat=LinfBall(eps=0.1), beta=0.0)(model, x, y, generator=g()).loss
    t6 = TRADES(threat=LinfBall(eps=0.1), beta=6.0)(model, x, y, generator=g())
    torch.testing.assert_close(t0, F.cross_entropy(model(x), y, reduction="none"))
    torch.testing.assert_close(t6.loss, t0 + 6.0 * t6.metrics["kl_per_example"])


def test_pgd_at_trains_on_adversarial_inputs() -> None:
    model = mlp()
    x, y = data()
    clean = Standard()(model, x, y).loss
    adv = PGDAT(threat=LinfBall(eps=0.2), attack=PGD(steps=5))(model, x, y, generator=torch.Generator()).loss
    assert (adv >= clean - 1e-6).float().mean() > 0.9
    assert adv.mean() > clean.mean()


class _Switch(nn.Module):
    """Behaves like ``robust`` until ``broken`` is set; then like a fragile model."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.broken = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([-x.sum(1), x.sum(1)], 1) * self.scale
        if self.broken:  # predicts class 0 at the holdout point, but a tiny perturbation flips it
            return torch.stack([1 + 1e3 * (x.sum(1) - 3.6), torch.zeros(len(x))], 1) * self.scale
        return logits


def test_fast_at_detects_catastrophic_overfitting() -> None:
    x = torch.full((16, 4), 0.9)
    y = torch.ones(16, dtype=torch.long)
    model = _Switch()
    fast = FastAT(threat=LinfBall(eps=0.05))
    first = fast.on_epoch_end(model, epoch=0, holdout=(x, y))
    assert first["holdout_pgd_accuracy"] == 1.0 and not first["catastrophic_overfitting"]
    model.broken = True
    y_broken = torch.zeros(16, dtype=torch.long)  # clean prediction of the broken model is class 0
    with pytest.warns(CatastrophicOverfittingWarning, match="epoch 1"):
        second = fast.on_epoch_end(model, epoch=1, holdout=(x, y_broken))
    assert second["catastrophic_overfitting"] and second["holdout_pgd_accuracy"] < 0.8
    assert fast.events and fast.events[0]["epoch"] == 1
    restored = FastAT()
    restored.load_state_dict(fast.state_dict())
    assert restored.events == fast.events and restored.best_holdout_accuracy == 1.0


def test_fast_at_without_holdout_does_nothing() -> None:
    assert FastAT().on_epoch_end(mlp(), epoch=0, holdout=None) == {}
