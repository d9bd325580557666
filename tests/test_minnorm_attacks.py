"""The L1 threat model, APGD-L1, the minimum-norm attacks FAB-T and FMN, and the ``minnorm`` ε-curve (issue 23).

On a linear binary model ``z_1 − z_0 = ⟨w, x⟩ + b`` the smallest perturbation that flips the class is known: the
margin over the dual norm of w (L∞: ``|m| / ‖w‖₁``, L2: ``|m| / ‖w‖₂``, L1: ``|m| / ‖w‖∞``) as long as the box does
not bind, which the points below (near 0.5, small margins) make sure of.
"""

from __future__ import annotations

import json

import pytest
import torch
from _eval_fixtures import mlp
from test_cli import one_error_line, run_main
from torch import nn

from sparring.attacks import APGDL1, FMN, PGD, FABTargeted, Square
from sparring.config import EvalSpec
from sparring.errors import ConfigError
from sparring.evaluate import evaluate
from sparring.threat import L1Ball, L2Ball, LinfBall, ThreatModel, make_threat, parse_norm

D = 32
DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}
BALLS = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}


def linear_problem(n: int = 24, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear binary classifier, points it classifies correctly, and w (the gradient of z_1 − z_0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g)
    x = 0.5 + 0.02 * torch.randn(n, D, generator=g)
    bias = -float((x @ w).median()) + 1e-3
    model = nn.Linear(D, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = w
        model.bias.copy_(torch.tensor([0.0, bias]))
    y = ((x @ w + bias) > 0).long()
    return model, x, y, w


def analytic_min_norm(x: torch.Tensor, w: torch.Tensor, model: nn.Module, norm: str) -> torch.Tensor:
    margin = (x @ w + model.bias[1]).detach().abs()
    return margin / torch.linalg.vector_norm(w, ord=DUAL[norm])


def slow_l1_box_projection(u: torch.Tensor, eps: float, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Bisection on the soft threshold λ of clip(soft(u, λ), lo, hi) until its L1 norm is ε (float64)."""

    def at(lam: float) -> torch.Tensor:
        return (u.sign() * (u.abs() - lam).clamp_min(0)).clamp(lo, hi)

    if at(0.0).abs().sum() <= eps:
        return at(0.0)
    a, b = 0.0, float(u.abs().max()) + 1.0
    for _ in range(60):
        mid = (a + b) / 2
        a, b = (mid, b) if at(mid).abs().sum() > eps else (a, mid)
    return at(b)


# ----------------------------------------------------------------------------------------- the L1 threat
def test_l1_projection_is_the_nearest_point_of_ball_and_box() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(24):
        d = 1 + trial % 6
        x = torch.rand(1, d, generator=g, dtype=torch.float64)
        x_adv = x + torch.randn(1, d, generator=g, dtype=torch.float64) * 1.5
        eps = float(torch.rand((), generator=g, dtype=torch.float64)) * 1.5
        threat = L1Ball(eps=eps, bounds=None if trial % 5 == 0 else (0.0, 1.0))
        projected = threat.project(x_adv, x)
        assert threat.contains(projected, x, atol=1e-9).all()
        lo, hi = (-x[0] - 1e9, 1e9 - x[0]) if threat.bounds is None else (-x[0], 1 - x[0])
        reference = x + slow_l1_box_projection((x_adv - x)[0], eps, lo, hi)
        torch.testing.assert_close(projected, reference, atol=1e-8, rtol=0)
        # No feasible point is nearer: random points of the set (projected noise) are never closer.
        others = threat.project(x + torch.randn(64, d, generator=g, dtype=torch.float64), x.expand(64, d))
        assert ((others - x_adv).norm(dim=1) >= (projected - x_adv).norm() - 1e-9).all()


def test_l1_projection_per_sample_eps_images() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g)
    eps = torch.tensor([0.0, 0.5, 1.0, 3.0, 10.0, 100.0])
    threat = L1Ball(eps=eps)
    projected = threat.project(x + torch.randn(6, 1, 8, 8, generator=g), x)
    assert threat.contains(projected, x).all()
    assert torch.equal(projected[0], x[0])
    assert (threat.distance(projected, x)[1:4] - eps[1:4]).abs().max() < 1e-4  # far points land on the sphere
    start = threat.random_start(x, torch.Generator().manual_seed(0))
    assert threat.contains(start, x).all() and torch.equal(start[0], x[0])


def test_l1_step_moves_the_top_coordinates_by_alpha() -> None:
    grad = torch.tensor([[0.1, -3.0, 2.0, 0.0, 0.5, -0.2, 0.0, 1.0]])
    step = L1Ball(eps=1.0, sparsity=0.25).step(grad, 0.6)  # k = 2 of 8
    torch.testing.assert_close(step, torch.tensor([[0.0, -0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    per_row = L1Ball(eps=1.0).step(grad.expand(2, 8), torch.tensor([1.0, 2.0]), sparsity=torch.tensor([1 / 8, 1.0]))
    assert (per_row[0] != 0).sum() == 1 and per_row[0, 1] == -1.0
    assert (per_row[1] != 0).sum() == 6 and torch.isclose(per_row[1].abs().sum(), torch.tensor(2.0))  # zeros stay


def test_l1_is_a_norm_name() -> None:
    assert parse_norm("L1") == "l1"
    threat = make_threat("L1", "2")
    assert isinstance(threat, L1Ball) and threat.eps == 2.0


# ----------------------------------------------------------------------------------------- APGD-L1
def test_apgd_l1_breaks_a_linear_model_exactly_past_its_l1_margin() -> None:
    model, x, y, w = linear_problem()
    margin = analytic_min_norm(x, w, model, "l1")
    assert (margin < 0.4).all()  # one coordinate moves by the margin: the box (room ≥ 0.4) never binds
    above = APGDL1(steps=50)(model, x, y, L1Ball(eps=margin * 1.05), generator=torch.Generator().manual_seed(0))
    assert above.success.all()
    assert L1Ball(eps=margin * 1.05).contains(above.x_adv, x).all()
    below = APGDL1(steps=50)(model, x, y, L1Ball(eps=margin * 0.95), generator=torch.Generator().manual_seed(0))
    assert not below.success.any()  # provably robust there


def test_apgd_l1_refuses_other_norms() -> None:
    model, x, y, _ = linear_problem(4)
    with pytest.raises(ConfigError, match="L1 threat"):
        APGDL1(steps=2)(model, x, y, LinfBall(eps=0.1))


# ----------------------------------------------------------------------------------------- FAB-T and FMN
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("attack", [FABTargeted(steps=30), FMN(steps=60)], ids=["fab_t", "fmn"])
def test_minimal_norm_matches_the_analytic_one_on_a_linear_model(norm: str, attack: FMN | FABTargeted) -> None:
    model, x, y, w = linear_problem()
    exact = analytic_min_norm(x, w, model, norm)
    threat: ThreatModel = BALLS[norm](eps=float(exact.median()))
    result = attack(model, x, y, threat)
    assert result.min_norm is not None
    # Never below the exact value (up to the float32 resolution of x near 0.5), and close to it.
    assert (result.min_norm >= exact * (1 - 1e-4) - 1e-6).all(), result.min_norm / exact
    assert (result.min_norm <= exact * 1.06 + 1e-6).all(), result.min_norm / exact
    assert threat.contains(result.x_adv, x).all()
    # The robust mask is at ε: a point found within ε is broken; a broken point has an adversarial point within ε.
    assert result.success[result.min_norm <= threat.eps].all()
    assert (exact[result.success] <= threat.eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("attack", [FABTargeted(steps=20), FMN(steps=40)], ids=["fab_t", "fmn"])
def test_robust_mask_counts_only_breaks_within_eps(attack: FMN | FABTargeted) -> None:
    model, x, y, w = linear_problem()
    exact = analytic_min_norm(x, w, model, "l2")
    eps = torch.where(torch.arange(len(x)) % 2 == 0, exact * 0.9, exact * 1.1)  # half inside, half outside
    y[0] = 1 - y[0]  # a point misclassified clean: broken at norm 0
    result = attack(model, x, y, L2Ball(eps=eps))
    assert result.min_norm is not None and result.min_norm[0] == 0 and torch.equal(result.x_adv[0], x[0])
    expected = torch.arange(len(x)) % 2 == 1
    expected[0] = True
    assert torch.equal(result.success, expected)
    assert L2Ball(eps=eps).contains(result.x_adv, x).all()
    # A point not broken within ε comes back projected onto the ball, still classified correctly.
    assert (L2Ball(eps=eps).distance(result.x_adv, x)[2::2] >= eps[2::2] * 0.99).all()
    assert (model(result.x_adv).argmax(1)[2::2] == y[2::2]).all()


def test_fab_t_runs_every_target_without_early_stop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 5))
    x = torch.rand(12, D)
    y = model(x).argmax(1).detach()
    threat = LinfBall(eps=0.01)
    quick = FABTargeted(steps=15, targets=4)(model, x, y, threat)
    thorough = FABTargeted(steps=15, targets=4, early_stop=False)(model, x, y, threat)
    assert thorough.min_norm is not None and quick.min_norm is not None
    assert (thorough.min_norm <= quick.min_norm + 1e-6).all()
    assert torch.equal(thorough.success, thorough.min_norm <= 0.01)


def test_fmn_targeted_reaches_the_target() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 5))
    x = torch.rand(8, D)
    y = model(x).argmax(1).detach()
    target = (y + 1) % 5
    result = FMN(steps=60)(model, x, y, L2Ball(eps=100.0), target=target)
    assert result.min_norm is not None and torch.isfinite(result.min_norm).all()
    assert (model(result.x_adv).argmax(1) == target).all()


# ----------------------------------------------------------------------------------------- the minnorm ε-curve
@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A digits-shaped MLP and 48 images it classifies as labelled, but for 6 (misclassified clean)."""
    torch.manual_seed(0)
    model = mlp().eval()
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:6] = (y[:6] + 1) % 10
    return model, x, y


def test_minnorm_curve_is_monotone_and_below_the_fmn_only_curve(digits) -> None:
    model, x, y = digits
    eps = 0.1
    fmn = FMN(steps=40)
    out = evaluate(model, (x, y), LinfBall(eps=eps), suite=[PGD(steps=5), Square(queries=50)], eps_curve="minnorm",
                   curve_attack=fmn, batch_size=24, progress=False)
    curve = [point["robust_accuracy"] for point in out.eps_curve]
    radii = [point["eps"] for point in out.eps_curve]
    assert radii == sorted(radii) and eps in radii and radii[0] == 0.0
    assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))  # monotone
    assert curve[0] == pytest.approx(out.clean_accuracy)
    # The FMN-only curve: mean(min_norm > r), misclassified points at 0.
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    alone = fmn(model, x, y, LinfBall(eps=max(radii)))
    assert alone.min_norm is not None
    only = [float(((alone.min_norm > r) & correct).float().mean()) for r in radii]
    assert all(c <= o + 1e-9 for c, o in zip(curve, only, strict=True))
    at = radii.index(eps)
    assert curve[at] == pytest.approx(out.robust_accuracy)  # the curve meets the headline (every break counts)
    assert curve[at] <= out.robust["pgd"].float().mean() + 1e-9
    assert any(row["name"] == "eps_curve" and row["settings"]["name"] == "fmn" for row in out.attacks)


def test_minnorm_mode_is_checked(digits) -> None:
    model, x, y = digits
    with pytest.raises(ConfigError, match="minnorm"):
        evaluate(model, (x[:4], y[:4]), LinfBall(eps=0.1), suite=[PGD(steps=1)], eps_curve="minimum", progress=False)
    with pytest.raises(ConfigError, match="minimum-norm"):
        evaluate(model, (x[:4], y[:4]), LinfBall(eps=0.1), suite=[PGD(steps=1)], eps_curve="minnorm",
                 curve_attack=PGD(steps=1), progress=False)
    assert EvalSpec(eps_curve="minnorm").eps_curve == "minnorm"
    assert EvalSpec(eps_curve=[0, "1/10"]).eps_curve == [0.0, 0.1]
    with pytest.raises(ValueError):
        EvalSpec(eps_curve="smallest")


def test_cli_eps_curve_minnorm_and_l1(tmp_path, monkeypatch, capsys, single_thread) -> None:
    (tmp_path / "factory.py").write_text(
        "from sparring.models import build_model\n\n"
        "def make():\n    return build_model('mlp', input_shape=(1, 8, 8), num_classes=10, hidden=(16,))\n")
    args = ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--attacks", "fgsm",
            "--max-samples", "12", "--eps-curve", "minnorm", "--out", "ev", "-q"]
    code, _, err = run_main(args, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    curve = [p["robust_accuracy"] for p in report["eps_curve"]]
    assert len(curve) == 9 and all(a >= b for a, b in zip(curve, curve[1:], strict=False))
    assert curve[4] == pytest.approx(report["robust_accuracy"]["worst_case"])  # ε = 0.1 is the middle radius
    code, _, err = run_main([*args[:5], "--eps", "2", "--norm", "L1", "--suite", "fast", *args[9:]], tmp_path,
                            monkeypatch, capsys)
    assert code == 2 and "--attacks" in one_error_line(err)


def test_evaluate_under_l1(digits) -> None:
    model, x, y = digits
    out = evaluate(model, (x, y), L1Ball(eps=0.3), suite=[APGDL1(steps=10), FABTargeted(steps=10, targets=2)],
                   eps_curve=[0.0, 0.6], batch_size=24, progress=False)
    assert [p["eps"] for p in out.eps_curve] == [0.0, 0.3, 0.6]
    assert out.robust_accuracy < out.clean_accuracy and out.worst_case.any()  # broken points, and robust ones
    black_box = next(c for c in out.checks if c["name"] == "black_box_not_stronger")
    assert black_box["passed"] is None and "l1" in black_box["detail"]
