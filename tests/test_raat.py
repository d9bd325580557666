"""RAAT / DICAR (methods.md §5.5) and the batched augmentations it draws its two views from."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sparring.attacks import PGD
from sparring.data import Dataset
from sparring.data.augment import SPECS, gaussian_noise, make_augment, random_crop, random_flip, random_shift
from sparring.errors import ConfigError
from sparring.losses import js_divergence
from sparring.objectives.pgd_at import PGDAT
from sparring.objectives.raat import RAAT, sample_beta
from sparring.threat import LinfBall

pytestmark = pytest.mark.usefixtures("single_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fit(model: nn.Module, data: Dataset, steps: int = 150) -> nn.Module:
    """A few Adam steps of clean CE, so partitions and the set I are not trivially empty."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = seeded(1)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def fitted(digits: tuple[Dataset, Dataset]) -> nn.Module:
    torch.manual_seed(0)
    return fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), digits[0])


QUICK = PGD(steps=3, keep_best=False, score=False)


# ------------------------------------------------------------------ augmentations
def images(seed: int = 0, n: int = 6) -> torch.Tensor:
    return torch.rand(n, 2, 8, 8, generator=seeded(seed))


@pytest.mark.parametrize("spec", SPECS)
def test_augment_keeps_shape_bounds_and_is_seeded(spec: str) -> None:
    shape = {"shift": (1, 40), "shift_zero": (1, 40), "noise": (10,)}.get(spec, (2, 8, 8))
    x = torch.rand(6, *shape, generator=seeded(0))
    augment = make_augment(spec, shape)
    a, b = augment(x, seeded(3)), augment(x, seeded(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    if spec != "none":
        assert not torch.equal(a, augment(x, seeded(4)))


@pytest.mark.parametrize(("spec", "shape"), [("crop_flip", (2, 8, 8)), ("crop_reflect", (2, 8, 8)),
                                             ("shift", (40,)), ("shift_zero", (3, 40)), ("noise", (10,))])
def test_augment_is_batch_independent(spec: str, shape: tuple[int, ...]) -> None:
    x, mates = torch.rand(6, *shape, generator=seeded(0)), torch.rand(6, *shape, generator=seeded(1))
    mates[2] = x[2]
    augment = make_augment(spec, shape)
    assert torch.equal(augment(x, seeded(5))[2], augment(mates, seeded(5))[2])


def test_crop_is_a_per_sample_translation() -> None:
    x = images(n=32)
    out = random_crop(x, 1, seeded(0))
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    offsets = set()
    for i in range(len(x)):  # each output is one of the 9 windows of its own padded image
        windows = [(dy, dx) for dy in range(3) for dx in range(3)]
        hits = [(dy, dx) for dy, dx in windows if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets are drawn per sample


def test_shift_and_flip_move_values_without_changing_them() -> None:
    x = torch.rand(16, 3, 20, generator=seeded(0))
    out = random_shift(x, 4, seeded(0))
    for i in range(len(x)):
        assert any(torch.equal(out[i], x[i].roll(s, -1)) for s in range(-4, 5))
    zero = random_shift(x, 4, seeded(0), circular=False)
    assert ((zero == 0) | torch.isin(zero, x)).all()
    flipped = random_flip(images(), seeded(0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images(), strict=True))
    noisy = gaussian_noise(torch.full((4, 5), 0.99), 0.5, seeded(0), bounds=(0.0, 1.0))
    assert noisy.max() <= 1 and noisy.min() >= 0


def test_auto_picks_by_shape_and_rejects_bad_specs() -> None:
    x = images()
    assert torch.equal(make_augment("auto", (2, 8, 8))(x, seeded(2)), random_crop(x, 1, seeded(2)))
    s = torch.rand(4, 1, 40, generator=seeded(0))
    assert torch.equal(make_augment("auto", (1, 40))(s, seeded(2)), random_shift(s, 4, seeded(2)))
    v = torch.rand(4, 10, generator=seeded(0))
    assert torch.equal(make_augment("auto", (10,))(v, seeded(2)), gaussian_noise(v, 0.03, seeded(2)))
    with pytest.raises(ConfigError):
        make_augment("mixup", (2, 8, 8))
    with pytest.raises(ConfigError):
        make_augment("crop", (10,))


# ----------------------------------------------------------------------------- JS, Beta
def test_js_symmetric_zero_on_identical_and_at_most_log2() -> None:
    p, q = torch.randn(64, 10, generator=seeded(0)) * 5, torch.randn(64, 10, generator=seeded(1)) * 5
    torch.testing.assert_close(js_divergence(p, q, 0.5), js_divergence(q, p, 0.5))
    torch.testing.assert_close(js_divergence(p, p, 0.5), torch.zeros(64), atol=1e-6, rtol=0)
    assert (js_divergence(p, q, 0.5) <= math.log(2) + 1e-6).all()
    far = torch.tensor([[100.0, -100.0]])  # disjoint supports: the bound is reached
    torch.testing.assert_close(js_divergence(far, -far, 1.0), torch.tensor([math.log(2)]))


def test_beta_sampler_is_seeded_and_has_the_right_moments() -> None:
    assert torch.equal(sample_beta(0.75, 0.75, 3, generator=seeded(0)), sample_beta(0.75, 0.75, 3, generator=seeded(0)))
    for a, b in ((0.75, 0.75), (2.0, 5.0)):
        draws = sample_beta(a, b, 20_000, generator=seeded(1))
        mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
        assert ((draws >= 0) & (draws <= 1)).all()
        assert abs(draws.mean() - mean) < 0.01 and abs(draws.var() - var) < 0.01


# ------------------------------------------------------------------------------ RAAT
def test_bad_settings_raise() -> None:
    for settings in ({"kappa": 1.5}, {"kappa": -0.1}, {"temperature": 0.0}, {"augment": "mixup"},
                     {"lam": -1.0}, {"mix_alpha": 0.0}, {"base_loss": "awp"}):
        with pytest.raises(ConfigError):
            RAAT(**settings)  # type: ignore[arg-type]


def test_partition_is_disjoint_and_covers(fitted: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    x, y = digits[1].x[:200], digits[1].y[:200]
    raat = RAAT(threat=LinfBall(eps=0.15), attack=QUICK, augment="none")
    x_adv = raat.attack(fitted, x, y, raat.threat, generator=seeded(0)).x_adv
    x_red = torch.lerp(x, x_adv, raat.kappa)
    mis, boundary, other, adv_ok = raat.partition(fitted, x, x_adv, x_red, y)
    assert torch.equal(mis.int() + boundary.int() + other.int(), torch.ones(200, dtype=torch.int))
    assert mis.any() and boundary.any() and other.any()  # all three groups occur here
    pred = lambda v: fitted(v).argmax(1)  # noqa: E731
    with torch.no_grad():
        assert torch.equal(boundary, (pred(x) == y) & (pred(x_adv) != y) & (pred(x_red) != y))
        assert torch.equal(adv_ok, pred(x_adv) == y)
    out = raat(fitted, x, y, generator=seeded(0))
    total = out.metrics["misclassified"] + out.metrics["boundary"] + out.metrics["other"]
    torch.testing.assert_close(total, torch.tensor(1.0))


def test_kappa_one_without_dicar_is_pgd_at_on_two_views(tiny_mlp: Callable[..., nn.Module]) -> None:
    model = tiny_mlp(seed=3).train()
    x, y = torch.rand(12, 1, 8, 8, generator=seeded(0)), torch.randint(0, 10, (12,), generator=seeded(1))
    raat = RAAT(kappa=1.0, lam=0.0, augment="none", attack=QUICK, threat=LinfBall(eps=0.1))
    pgd_at = PGDAT(attack=QUICK, threat=LinfBall(eps=0.1))
    reference = pgd_at(model, torch.cat([x, x]), torch.cat([y, y]), generator=seeded(4)).loss.view(2, 12).mean(0)
    torch.testing.assert_close(raat(model, x, y, generator=seeded(4)).loss, reference)
    # With DICAR on, κ = 1 gives PGD-AT plus DICAR: the base part is unchanged.
    with_dicar = RAAT(kappa=1.0, augment="none", attack=QUICK, threat=LinfBall(eps=0.1))
    out = with_dicar(model, x, y, generator=seeded(4))
    torch.testing.assert_close(out.metrics["base"], reference.mean())
    torch.testing.assert_close(out.loss.mean(), reference.mean() + out.metrics["dicar"])


def test_dicar_vanishes_for_an_affine_model_with_a_consistent_target(digits: tuple[Dataset, Dataset]) -> None:
    # f affine and ε = 0 (x_adv = x): f(m·x¹ + (1 − m)·x²) = m·f(x¹) + (1 − m)·f(x²), so JS = 0.
    torch.manual_seed(0)
    linear = fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits[0])
    x, y = digits[1].x[:128], digits[1].y[:128]
    raat = RAAT(threat=LinfBall(eps=0.0), attack=QUICK, augment="crop", temperature=1.0)
    out = raat(linear, x, y, generator=seeded(0))
    assert out.metrics["dicar_fraction"] > 0.1  # I is not empty (1-pixel crops of 8×8 digits fool a linear model)
    assert abs(out.metrics["dicar"]) < 1e-6  # float round-off only (about 1e-8 here)
    torch.testing.assert_close(out.loss.mean(), out.metrics["base"])
    torch.manual_seed(0)  # a nonlinear model on the same views does not interpolate linearly
    mlp = fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), digits[0])
    assert raat(mlp, x, y, generator=seeded(0)).metrics["dicar"] > 1e-5  # about 9e-5: ReLU is piecewise linear


def test_loss_mean_is_the_codes_loss_and_batch_norm_is_batch_independent(fitted: nn.Module) -> None:
    x, y = torch.rand(10, 1, 8, 8, generator=seeded(0)), torch.randint(0, 10, (10,), generator=seeded(1))
    with torch.no_grad():
        y[:7] = fitted(x[:7]).argmax(1)  # some examples clean-correct, some not: 0 < |I| < B
    out = RAAT(attack=QUICK, augment="none")(fitted, x, y, generator=seeded(2))
    assert 0 < out.metrics["dicar_fraction"] < 1
    torch.testing.assert_close(out.loss.mean(), out.metrics["base"] + out.metrics["dicar"])
    per_batch = RAAT(attack=QUICK, dicar_norm="batch")
    mates, mate_y = torch.rand(10, 1, 8, 8, generator=seeded(5)), torch.randint(0, 10, (10,), generator=seeded(6))
    mates[0], mate_y[0] = x[0], y[0]
    torch.testing.assert_close(per_batch(fitted, x, y, generator=seeded(3)).loss[0],
                               per_batch(fitted, mates, mate_y, generator=seeded(3)).loss[0])


@pytest.mark.parametrize("base_loss", ["ce", "mart", "trades"])
def test_raat_trains_a_digits_mlp(base_loss: str, tiny_mlp: Callable[..., nn.Module],
                                  digits: tuple[Dataset, Dataset]) -> None:
    train = digits[0]
    model = tiny_mlp(seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    # Noise views: 1-pixel crops of 8 × 8 digits (the "auto" choice) make an MLP learn too slowly for a unit test.
    attack = PGD(steps=2, keep_best=False, score=False)
    raat = RAAT(threat=LinfBall(eps=0.05), attack=attack, base_loss=base_loss, augment="noise")
    g, losses = seeded(0), []
    for _ in range(30):
        idx = torch.randint(0, len(train), (64,), generator=g)
        out = raat(model, train.x[idx], train.y[idx], generator=g)
        assert out.loss.shape == (64,) and torch.isfinite(out.loss).all()
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
        losses.append(out.loss.mean().item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert model.training
