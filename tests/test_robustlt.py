"""RobustLT: the CPB budget rule, the AIW warm-up, per-sample balls and the wrapper's plumbing (methods.md §3.6)."""

from __future__ import annotations

import json

import pytest
import torch

from sparring.attacks import PGD
from sparring.config import parse_config
from sparring.data import long_tail_counts
from sparring.errors import ConfigError
from sparring.objectives import DRO, PGDAT, TRADES, RobustLT
from sparring.objectives.robustlt import class_budgets, warmup_factor
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

CIFAR10_LT50 = [int(5000 * 50 ** (-c / 9)) for c in range(10)]


def test_sample_weighted_mean_budget_is_eps() -> None:
    for counts in (CIFAR10_LT50, [500, 120, 33, 9, 2], [7, 7, 3]):
        for alpha in (0.1, 0.3, 0.6):
            b = class_budgets(counts, alpha).double()
            n = torch.tensor(counts, dtype=torch.float64)
            assert float((n * b).sum() / n.sum()) == pytest.approx(1.0, abs=1e-6)


def test_worked_example_cifar10_lt_ir50() -> None:
    b = class_budgets(CIFAR10_LT50, 0.3)
    assert float(b[0]) == pytest.approx(0.70, abs=1e-6)  # head: (1 − α)ε
    assert float(b[-1]) == pytest.approx(1.61, abs=0.01)  # methods.md §3.2 table
    tau = (float(b[-1]) - 0.7) / (torch.log(torch.tensor(CIFAR10_LT50[0] / CIFAR10_LT50[-1])).sqrt())
    assert float(tau) == pytest.approx(0.46, abs=0.01)


def test_budget_uniform_at_alpha_zero_and_on_balanced_data() -> None:
    assert torch.equal(class_budgets(CIFAR10_LT50, 0.0), torch.ones(10))
    assert torch.equal(class_budgets([50] * 4, 0.3), torch.ones(4))


def test_budgets_monotone_in_rarity() -> None:
    counts = [300, 40, 120, 7, 60]
    b = class_budgets(counts, 0.3)
    order = sorted(range(5), key=lambda c: counts[c], reverse=True)
    assert all(b[order[i]] < b[order[i + 1]] for i in range(4))


def test_warmup_schedule() -> None:
    epochs, beta = 20, 0.8
    assert warmup_factor(0, epochs, beta) == 0.0  # s(1) = 0: epoch 1 is clean
    assert warmup_factor(8, epochs, beta) == pytest.approx(8 / 16)
    assert warmup_factor(16, epochs, beta) == 1.0  # t ≥ βT + 1
    assert warmup_factor(19, epochs, beta) == 1.0
    assert warmup_factor(0, epochs, 0.0) == 1.0


def _robustlt(**kwargs) -> RobustLT:
    base = PGDAT(threat=LinfBall(eps=0.1), attack=PGD(steps=5, keep_best=False, score=False))
    return RobustLT(base=base, class_counts=[40, 20, 10, 5], **kwargs)


def test_pgd_respects_per_sample_class_balls(tiny_mlp) -> None:
    model = tiny_mlp(hidden=(16,))
    seen = {}
    objective = _robustlt()
    objective.base.attack = _Spy(objective.base.attack, seen)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 4
    objective(model, x, y, generator=torch.Generator().manual_seed(0))
    budgets = 0.1 * class_budgets([40, 20, 10, 5], 0.3)[y]
    dist = (seen["x_adv"] - x).flatten(1).abs().amax(1)
    assert (dist <= budgets + 1e-6).all()
    assert (dist >= 0.5 * budgets).all()  # the attack uses the bigger tail ball
    assert objective.base.threat.eps == 0.1  # the base's threat is restored after the call


class _Spy:
    """Wraps an attack and records the adversarial batch it returned."""

    def __init__(self, attack, box) -> None:
        self.attack, self.box = attack, box

    def __call__(self, *args, **kwargs):
        result = self.attack(*args, **kwargs)
        self.box["x_adv"] = result.x_adv
        self.box["threat"] = args[3]
        return result


def test_warmup_epoch_one_is_clean_training(tiny_mlp) -> None:
    model = tiny_mlp(hidden=(16,))
    objective = _robustlt(epochs=10)
    logged = objective.on_epoch_begin(model, epoch=0)
    assert logged["robustlt_scale"] == 0.0 and logged["robustlt_eps"] == [0.0] * 4
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    out = objective(model, x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    later = objective.on_epoch_begin(model, epoch=9)
    assert later["robustlt_scale"] == 1.0
    assert later["robustlt_eps"][0] == pytest.approx(0.07) and later["robustlt_eps"][-1] > 0.1


def test_absolute_step_scales_with_class_budget(tiny_mlp) -> None:
    base = PGDAT(threat=LinfBall(eps=0.1), attack=PGD(steps=1, step_size=0.02, random_start=False,
                                                      keep_best=False, score=False))
    objective = RobustLT(base=base, class_counts=[40, 20, 10, 5])
    model = tiny_mlp(hidden=(16,))
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    x, y = torch.rand(8, 1, 8, 8) * 0.5 + 0.25, torch.arange(8) % 4
    objective(model, x, y)
    step = (inputs[-1] - x).flatten(1).abs().amax(1)  # the last forward is the training pass on x_adv
    expected = 0.02 * class_budgets([40, 20, 10, 5], 0.3)[y]
    torch.testing.assert_close(step, expected, atol=1e-6, rtol=1e-5)
    assert base.attack.step_size == 0.02 and base.attack.rel_step is None  # restored


def test_global_random_start_flag_starts_in_the_global_ball(tiny_mlp) -> None:
    from sparring.objectives.robustlt import _global_start

    class_threat = LinfBall(eps=torch.tensor([0.02, 0.3]))
    start_threat = _global_start(class_threat, LinfBall(eps=0.1))
    x = torch.full((2, 1, 8, 8), 0.5)
    start = start_threat.random_start(x, torch.Generator().manual_seed(0))
    dist = (start - x).flatten(1).abs().amax(1)
    on_boundary = ((start[0] - x[0]).abs() - 0.02).abs() < 1e-6
    assert dist[0] <= 0.02 + 1e-6 and on_boundary.float().mean() > 0.5  # the global start, clipped to the head ball
    assert 0.05 < dist[1] <= 0.1 + 1e-7  # tail: never beyond the global ε
    assert start_threat.subset(torch.tensor([1])).start_threat.eps == 0.1  # copies keep the start


def test_wraps_nested_objectives(tiny_mlp) -> None:
    model = tiny_mlp(hidden=(16,))
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    for base in (TRADES(threat=LinfBall(eps=0.1)), DRO(base=PGDAT(threat=LinfBall(eps=0.1)))):
        out = RobustLT(base=base, class_counts=[40, 20, 10, 5])(model, x, y, generator=torch.Generator())
        assert out.loss.shape == (8,) and torch.isfinite(out.loss).all()


def test_errors() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        RobustLT(alpha=1.5)
    with pytest.raises(ConfigError, match="class counts"):
        RobustLT()(torch.nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="each with training samples"):
        RobustLT(class_counts=[10, 0, 3])
    from sparring.objectives import Standard

    with pytest.raises(ConfigError, match="threat model"):
        RobustLT(base=Standard(), class_counts=[3, 2])(torch.nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1]))


def test_from_yaml_with_nested_base_name() -> None:
    config = parse_config({"objective": {"name": "robustlt", "base": "pgd_at", "alpha": 0.3, "beta": 0.8},
                           "eval": {"threat": {"eps": 0.1}}})
    objective = config.build_objective()
    assert isinstance(objective, RobustLT) and isinstance(objective.base, PGDAT)
    with pytest.raises(ConfigError, match="beta must be in"):
        parse_config({"objective": {"name": "robustlt", "beta": 2}})


def test_trainer_fills_counts_and_logs_per_class_eps(digits, tiny_mlp, tmp_path, single_thread) -> None:
    train, test = digits
    counts = long_tail_counts(train.class_counts().tolist(), 10)
    lt = torch.cat([torch.nonzero(train.y == c).flatten()[:n] for c, n in enumerate(counts)])
    base = PGDAT(threat=LinfBall(eps=0.1), attack=PGD(steps=2, keep_best=False, score=False))
    objective = RobustLT(base=base, alpha=0.3, beta=0.5)
    trainer = Trainer(
        model=tiny_mlp(), objective=objective, train=(train.x[lt], train.y[lt]), val=(test.x[:64], test.y[:64]),
        config=TrainConfig(epochs=3, batch_size=64, lr=0.05, val_size=64, val_attack_steps=2, progress=False),
        out_dir=tmp_path, num_classes=10,
    )
    trainer.fit()
    assert objective.class_counts == counts and objective.epochs == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["robustlt_scale"] for r in records] == [0.0, pytest.approx(1 / 1.5), 1.0]
    tail_eps = [r["robustlt_eps"][-1] for r in records]
    assert tail_eps[0] == 0.0 and tail_eps[2] > 0.1 > records[2]["robustlt_eps"][0]
    assert records[2]["train_robustlt_mean_eps"] > 0
