"""Fuzzy ARTMAP (sparring.streaming.artmap): the equations on hand-checkable 1-D inputs, match tracking, fast and slow
learning, incremental fitting, the decision logits and save / load."""

from __future__ import annotations

import pytest
import torch

from sparring.errors import ConfigError, DataError, SparringError
from sparring.streaming import FuzzyARTMAP


def art(**settings) -> FuzzyARTMAP:
    return FuzzyARTMAP(input_shape=(1,), num_classes=2, **settings)


def fit(model: FuzzyARTMAP, values: list[float], labels: list[int]) -> FuzzyARTMAP:
    return model.partial_fit(torch.tensor(values).unsqueeze(1), torch.tensor(labels))


def test_complement_coding_choice_and_match_by_hand() -> None:
    model = FuzzyARTMAP.from_weights(torch.tensor([[0.2, 0.5]]), torch.tensor([0]), num_classes=2, alpha=0.1)
    coded = model.code(torch.tensor([[0.3]]))
    assert torch.allclose(coded, torch.tensor([[0.3, 0.7]]))
    # |I ∧ w| = min(0.3, 0.2) + min(0.7, 0.5) = 0.7; |w| = 0.7; T = 0.7 / (0.1 + 0.7)
    assert model.choice(coded).item() == pytest.approx(0.7 / 0.8)
    scaled = FuzzyARTMAP(input_shape=(1,), num_classes=2, bounds=(-1.0, 1.0))
    assert torch.allclose(scaled.code(torch.tensor([[0.0], [3.0]])), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))


def test_fast_commit_then_fast_learning_shrinks_to_the_fuzzy_min() -> None:
    model = fit(art(), [0.2], [0])
    assert torch.allclose(model.weights, torch.tensor([[0.2, 0.8]]))  # w = I
    fit(model, [0.4], [0])  # same class, vigilance 0: resonance, w ← I ∧ w
    assert torch.allclose(model.weights, torch.tensor([[0.2, 0.6]]))  # the box [0.2, 0.4]
    assert model.category_class.tolist() == [0]


def test_slow_learning_moves_a_fraction_beta() -> None:
    model = fit(art(beta=0.5), [0.2, 0.4], [0, 0])
    # w ← 0.5 (I ∧ w) + 0.5 w = 0.5 [0.2, 0.6] + 0.5 [0.2, 0.8]
    assert torch.allclose(model.weights, torch.tensor([[0.2, 0.7]]))


def test_match_tracking_skips_the_wrong_class_and_commits() -> None:
    model = fit(art(), [0.2, 0.25], [0, 1])
    # 0.25 wins category 0 (class 0, wrong): match 0.2 + 0.75 = 0.95 → ρ = 0.951, nothing passes → new category
    assert model.category_class.tolist() == [0, 1]
    assert torch.allclose(model.weights, torch.tensor([[0.2, 0.8], [0.25, 0.75]]))
    # 0.9 (class 0): category 1 wins (T = 0.35 > 0.3, class 1, wrong) → ρ = 0.351 > category 0's match 0.3, so
    # class 0's category is not stretched to 0.9: a third category is committed
    fit(model, [0.9], [0])
    assert model.category_class.tolist() == [0, 1, 0]
    assert torch.allclose(model.weights[0], torch.tensor([0.2, 0.8]))
    without_tracking = fit(art(), [0.2, 0.9], [0, 0])  # the same class: learned into the one category
    assert without_tracking.num_categories == 1


def test_vigilance_limits_the_box_size() -> None:
    assert fit(art(rho=0.0), [0.1, 0.9], [0, 0]).num_categories == 1
    assert fit(art(rho=0.5), [0.1, 0.9], [0, 0]).num_categories == 2  # match 0.2 < 0.5
    tight = fit(art(), [0.1], [0]).partial_fit(torch.tensor([[0.9]]), torch.tensor([0]), rho=0.5)
    assert tight.num_categories == 2  # the per-call vigilance override


def test_partial_fit_in_pieces_equals_one_pass() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 5, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    whole = FuzzyARTMAP(input_shape=(5,), num_classes=3, rho=0.6).partial_fit(x, y)
    pieces = FuzzyARTMAP(input_shape=(5,), num_classes=3, rho=0.6)
    for xs, ys in zip(x.split(7), y.split(7), strict=True):
        pieces.partial_fit(xs, ys)
    assert torch.equal(whole.weights, pieces.weights) and torch.equal(whole.category_class, pieces.category_class)
    # fast learning with a training sample inside its own category: it is classified right afterwards
    assert (whole.predict(x) == y).float().mean() > 0.9


def test_forward_is_the_decision_with_zero_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 6, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    model = FuzzyARTMAP(input_shape=(6,), num_classes=4, rho=0.3).partial_fit(x[:30], y[:30])
    logits = model(x)
    assert logits.shape == (40, 4)
    assert torch.equal(logits.argmax(1), model.predict(x))
    j, t = model.winner(x)
    assert torch.equal(model.predict(x), model.category_class[j]) and t.shape == (40, model.num_categories)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
    assert torch.count_nonzero(grad) == 0


def test_save_load_round_trip(tmp_path) -> None:
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(30, 1, 2, 2, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    model = FuzzyARTMAP(input_shape=(1, 2, 2), num_classes=3, rho=0.5, alpha=0.01, beta=0.7).partial_fit(x, y)
    loaded = FuzzyARTMAP.load(model.save(tmp_path / "art"))
    assert loaded.config == model.config
    assert torch.equal(loaded.weights, model.weights) and torch.equal(loaded.category_class, model.category_class)
    assert torch.equal(loaded.predict(x), model.predict(x))
    loaded.partial_fit(x, y)  # learning goes on after a load
    with pytest.raises(DataError, match="no saved ARTMAP"):
        FuzzyARTMAP.load(tmp_path / "nothing")


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="rho"):
        art(rho=1.5)
    with pytest.raises(ConfigError, match="beta"):
        art(beta=0.0)
    with pytest.raises(SparringError, match="no categories"):
        art().predict(torch.zeros(2, 1))
    with pytest.raises(DataError, match="bounds"):
        fit(art(), [1.5], [0])
    with pytest.raises(DataError, match="labels"):
        fit(art(), [0.5], [2])
    with pytest.raises(DataError, match="shape"):
        fit(art(), [0.5], [0]).predict(torch.zeros(2, 3))
