"""What is special about each attack: strength orderings, analytic optima, targeted mode, restarts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparring.attacks import FGSM, FGSMRS, PGD
from sparring.errors import ConfigError, DataError
from sparring.threat import L2Ball, LinfBall


@pytest.fixture(scope="module")
def trained(trained_mlp, digits) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    _, test = digits
    return trained_mlp, test.x[:200], test.y[:200]


def robust(result) -> float:
    return float(result.robust.float().mean())


def test_pgd_is_stronger_than_fgsm(trained) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.1)
    g = torch.Generator().manual_seed(0)
    clean = float((model(x).argmax(1) == y).float().mean())
    fgsm = robust(FGSM()(model, x, y, threat))
    pgd = robust(PGD(steps=20)(model, x, y, threat, generator=g))
    assert clean > 0.9
    assert pgd <= fgsm < clean


@pytest.mark.parametrize("threat", [LinfBall(eps=0.05), L2Ball(eps=0.6)], ids=["linf", "l2"])
def test_pgd_early_stop_breaks_the_same_points(trained, threat) -> None:
    """Early exit changes which breaking iterate is returned, never which points are broken."""
    model, x, y = trained
    runs = {}
    for early in (False, True):
        attack = PGD(steps=10, restarts=2, early_stop=early)
        runs[early] = attack(model, x, y, threat, generator=torch.Generator().manual_seed(3))
    assert torch.equal(runs[True].success, runs[False].success)
    assert 0 < int(runs[True].success.sum()) < len(x)  # some broken, some not: both branches ran
    assert bool((model(runs[True].x_adv).argmax(1) != y)[runs[True].success].all())  # the returned inputs break
    assert torch.equal(runs[True].x_adv[~runs[True].success], runs[False].x_adv[~runs[False].success])
    assert torch.all(threat.project(runs[True].x_adv, x) == runs[True].x_adv)
    with pytest.raises(ConfigError, match="keep_best"):
        PGD(early_stop=True, keep_best=False, score=False)


def test_fgsm_is_optimal_for_a_linear_binary_model() -> None:
    """For f(x) = w·x the L∞ worst case moves every coordinate by ε against the margin."""
    torch.manual_seed(0)
    w = torch.randn(1, 6)
    model = nn.Linear(6, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.cat([w, -w]))
    x = torch.randn(5, 6)
    y = torch.zeros(5, dtype=torch.long)
    result = FGSM()(model, x, y, LinfBall(eps=0.3, bounds=None))
    assert torch.allclose(result.x_adv, x - 0.3 * w.sign())


def test_l2_pgd_reaches_the_boundary_of_a_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 2, bias=False)
    x = torch.randn(5, 6)
    y = model(x).argmax(1)
    result = PGD(steps=30, random_start=False)(model, x, y, L2Ball(eps=0.5, bounds=None))
    w = model.weight
    direction = (w[1 - y] - w[y]) / (w[1 - y] - w[y]).norm(dim=1, keepdim=True)
    expected = x + 0.5 * direction
    torch.testing.assert_close(result.x_adv, expected, atol=1e-3, rtol=0)


def test_best_iterate_is_never_worse_than_last(trained) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.08)
    best = PGD(steps=10, rel_step=0.6)(model, x, y, threat, generator=torch.Generator().manual_seed(1))
    last = PGD(steps=10, rel_step=0.6, keep_best=False)(model, x, y, threat, generator=torch.Generator().manual_seed(1))
    assert (best.success | ~last.success).all()  # every point the last iterate breaks, the best iterate breaks
    assert robust(best) <= robust(last)


def test_restarts_only_help(trained) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.08)
    one = PGD(steps=5, restarts=1)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    three = PGD(steps=5, restarts=3)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert (three.success | ~one.success).all()
    assert threat.contains(three.x_adv, x).all()


def test_targeted_mode_reaches_targets(trained) -> None:
    model, x, y = trained
    target = (y + 1) % 10
    result = PGD(steps=40)(model, x, y, LinfBall(eps=0.3), target=target, generator=torch.Generator().manual_seed(0))
    reached = model(result.x_adv).argmax(1) == target
    assert torch.equal(reached, result.success)
    assert reached.float().mean() > 0.8


def test_fgsm_rs_uses_random_start_and_larger_step() -> None:
    assert FGSMRS().random_start and FGSMRS().rel_step == 1.25
    assert not FGSM().random_start and FGSM().rel_step == 1.0


@pytest.mark.parametrize("settings", [{"steps": 0}, {"restarts": 0}, {"rel_step": -1.0},
                                      {"rel_step": 0.1, "step_size": 0.1}])
def test_bad_settings(settings) -> None:
    with pytest.raises(ConfigError):
        PGD(**settings)


def test_bad_batches_are_rejected(trained) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.1)
    with pytest.raises(DataError, match="NaN"):
        PGD()(model, x.clone().fill_(float("nan")), y, threat)
    with pytest.raises(DataError, match="shape"):
        PGD()(model, x, y[:-1], threat)
    with pytest.raises(DataError, match="bounds"):
        PGD()(model, x * 3, y, threat)


@pytest.mark.parametrize("make", [lambda **kw: PGD(steps=5, keep_best=False, **kw), lambda **kw: FGSMRS(**kw)])
def test_unscored_attacks_return_the_same_input_without_scoring(trained, make) -> None:
    model, x, y = trained
    threat = LinfBall(eps=0.1)
    scored = make()(model, x, y, threat, generator=torch.Generator().manual_seed(4))
    unscored = make(score=False)(model, x, y, threat, generator=torch.Generator().manual_seed(4))
    assert torch.equal(scored.x_adv, unscored.x_adv)
    assert unscored.success is None and unscored.queries == scored.queries - 1
    with pytest.raises(ValueError, match="score=False"):
        _ = unscored.robust


@pytest.mark.parametrize("settings", [{}, {"keep_best": False, "restarts": 2}])
def test_unscored_pgd_cannot_rank_iterates(settings) -> None:
    with pytest.raises(ConfigError, match="score=False"):
        PGD(score=False, **settings)
