"""The streaming ridge fitter of gradient prediction: closed form, streaming, standardization, λ choice."""

from __future__ import annotations

import pytest
import torch

from sparring.errors import ConfigError, DataError
from sparring.gradients import RidgeAccumulator, RidgeMap, choose_lambda, cosine, sign_agreement


def data(n: int = 300, p: int = 12, q: int = 5, noise: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, p, generator=g) * torch.linspace(0.1, 10, p) + 3.0  # uneven scales, non-zero means
    a = torch.randn(p, q, generator=g)
    y = h @ a + torch.randn(q, generator=g) + noise * torch.randn(n, q, generator=g)
    return h, y


def closed_form(h: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Predictions of ridge on standardized features with an unpenalized intercept, in float64."""
    h, y = h.double(), y.double()
    mu, sd = h.mean(0), h.std(0, unbiased=False)
    z, yc = (h - mu) / sd, y - y.mean(0)
    w = torch.linalg.solve(z.T @ z / len(h) + lam * torch.eye(h.shape[1], dtype=torch.float64), z.T @ yc / len(h))
    return y.mean(0) + z @ w


def test_solution_matches_the_closed_form() -> None:
    h, y = data(noise=0.5)
    fit = RidgeAccumulator(12, 5)
    fit.add(h, y)
    for lam in (1e-3, 0.1, 10.0):
        assert torch.allclose(fit.solve(lam)(h).double(), closed_form(h, y, lam), atol=1e-4, rtol=1e-4)


def test_streaming_batches_equal_one_pass_and_merge() -> None:
    h, y = data(noise=0.3)
    whole, streamed, left, right = (RidgeAccumulator(12, 5) for _ in range(4))
    whole.add(h, y)
    for hb, yb in zip(h.split(37), y.split(37), strict=True):
        streamed.add(hb, yb)
    left.add(h[:100], y[:100])
    right.add(h[100:], y[100:])
    left.merge(right)
    for other in (streamed, left):
        assert torch.allclose(other.solve(0.01).weight, whole.solve(0.01).weight, atol=1e-5)


def test_an_exact_affine_relation_is_recovered() -> None:
    h, y = data(noise=0.0)
    fit = RidgeAccumulator(12, 5)
    fit.add(h, y)
    ridge = fit.solve(1e-8)
    assert torch.allclose(ridge(h), y, atol=1e-2 * y.abs().max())
    assert float(cosine(ridge(h), y).min()) > 0.9999
    assert float(sign_agreement(ridge(h), y).mean()) > 0.99


def test_lambda_is_chosen_on_held_out_cosine() -> None:
    h, y = data(n=140, p=40, q=3, noise=30.0, seed=1)  # few rows, many features, noisy: shrinkage helps
    fit = RidgeAccumulator(40, 3)
    fit.add(h[:40], y[:40])
    best, scores = choose_lambda(fit, h[40:], y[40:], lambdas=(1e-6, 1e-2, 1.0, 100.0))
    assert set(scores) == {1e-6, 1e-2, 1.0, 100.0}
    assert best.lam == max(scores, key=scores.get)
    assert scores[best.lam] > scores[1e-6] + 0.01  # nearly unregularized overfits 40 rows in 40 features


def test_constant_features_are_harmless() -> None:
    h, y = data()
    h[:, 3] = 7.0  # a constant column: zero variance
    fit = RidgeAccumulator(12, 5)
    fit.add(h, y)
    pred = fit.solve(0.01)(h)
    assert torch.isfinite(pred).all()


def test_state_dict_round_trip() -> None:
    h, y = data()
    fit = RidgeAccumulator(12, 5)
    fit.add(h, y)
    ridge = fit.solve(0.1)
    again = RidgeMap.from_state_dict(ridge.state_dict())
    assert torch.equal(again(h), ridge(h)) and again.lam == 0.1


@pytest.mark.parametrize(
    ("h", "g", "match"),
    [
        (torch.zeros(4, 3), torch.zeros(4, 2), "p=12"),
        (torch.zeros(4, 12), torch.zeros(5, 5), "same N"),
        (torch.full((4, 12), float("nan")), torch.zeros(4, 5), "NaN"),
    ],
)
def test_bad_batches_are_named(h, g, match) -> None:
    with pytest.raises(DataError, match=match):
        RidgeAccumulator(12, 5).add(h, g)


def test_bad_solves_are_named() -> None:
    fit = RidgeAccumulator(12, 5)
    with pytest.raises(DataError, match="at least 2 rows"):
        fit.solve(0.1)
    fit.add(*data(n=10))
    with pytest.raises(ConfigError, match="lambda"):
        fit.solve(0.0)
    with pytest.raises(ConfigError, match="features and targets"):
        RidgeAccumulator(0, 5)
