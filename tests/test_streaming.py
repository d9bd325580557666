"""WB-Softmax (surrogate and gradient source), the replay-free defences and the streaming protocol on tiny data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sparring.attacks import APGD, FGSM, PGD
from sparring.data import Dataset
from sparring.errors import ConfigError
from sparring.models.mlp import MLP
from sparring.streaming import (
    EvalSettings,
    FuzzyARTMAP,
    NoDefence,
    PGDATStage,
    ProgressiveSelective,
    WBSoftmax,
    WBSoftmaxSurrogate,
    class_incremental,
    domain_shift,
    probes,
    run_stream,
    smooth_min,
)
from sparring.threat import LinfBall


def blobs(n: int = 120, classes: int = 4, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent blobs in [0, 1]^d: class k is bright on feature block k."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.full((classes, d), 0.3)
    for k in range(classes):
        centers[k, (k * d) // classes: ((k + 1) * d) // classes] = 0.7
    x = (centers[y] + 0.08 * torch.randn(n, d, generator=gen)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def fitted() -> tuple[FuzzyARTMAP, torch.Tensor, torch.Tensor]:
    x, y = blobs()
    model = FuzzyARTMAP(input_shape=(6,), num_classes=4, rho=0.75).partial_fit(x[:80], y[:80])
    return model, x[80:], y[80:]


def test_surrogate_agrees_with_the_artmap_at_small_tau(fitted) -> None:
    model, x, y = fitted
    scores = WBSoftmaxSurrogate(model, tau=1e-3)(x)
    assert scores.shape == (len(x), 4)
    assert torch.equal(scores.argmax(1), model.predict(x))
    assert torch.allclose(scores.exp().sum(1), torch.ones(len(x)), atol=1e-4)  # log-probabilities over classes
    assert torch.isfinite(WBSoftmaxSurrogate(model, smooth=0.01)(x)).all()


def test_smooth_min_is_a_close_lower_bound() -> None:
    u, v = torch.rand(100), torch.rand(100)
    low = smooth_min(u, v, 0.01)
    assert (low <= torch.minimum(u, v) + 1e-7).all() and (torch.minimum(u, v) - low <= 0.01 * math.log(2) + 1e-6).all()


def test_a_class_without_categories_keeps_gradients_finite() -> None:
    x, y = blobs(classes=2)
    model = FuzzyARTMAP(input_shape=(6,), num_classes=5, rho=0.5).partial_fit(x, y)  # classes 2..4 are empty
    step = WBSoftmax()(model, x, _ce, y)
    assert torch.isfinite(step.grad).all() and step.grad.abs().sum() > 0


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def test_wb_softmax_source_gives_surrogate_gradient_and_real_logits(fitted) -> None:
    model, x, y = fitted
    step = WBSoftmax()(model, x, _ce, y)
    assert torch.equal(step.logits, model(x))  # success is judged on the real decision
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_ce(WBSoftmaxSurrogate(model)(xg), y).sum(), xg)
    assert torch.allclose(step.grad, expected) and step.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="FuzzyARTMAP"):
        WBSoftmax()(MLP(input_shape=(6,), num_classes=4), x, _ce, y)
    with pytest.raises(ConfigError, match="tau"):
        WBSoftmax(tau=0.0)


@pytest.mark.parametrize("attack", [PGD(steps=10), APGD(steps=10), FGSM()], ids=["pgd", "apgd", "fgsm"])
def test_core_attacks_run_with_the_wb_softmax_source(fitted, attack) -> None:
    model, x, y = fitted
    weights = model.weights.clone()
    attack = dataclasses.replace(attack, gradients=WBSoftmax())
    threat = LinfBall(eps=0.15)
    result = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert (result.x_adv - x).abs().max() <= 0.15 + 1e-6 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(result.success, model.predict(result.x_adv) != y)  # a break is a real ARTMAP break
    assert torch.equal(model.weights, weights)  # the attack left the model as it was


def test_wb_softmax_pgd_breaks_more_than_random_noise(fitted) -> None:
    model, x, y = fitted
    eps = 0.15
    correct = model.predict(x) == y
    x, y = x[correct], y[correct]
    result = PGD(steps=20, gradients=WBSoftmax())(model, x, y, LinfBall(eps=eps),
                                                  generator=torch.Generator().manual_seed(0))
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise_broken = (model.predict((x + eps * signs).clamp(0, 1)) != y).float().mean()
    assert result.success.float().mean() >= noise_broken + 0.2  # 35% against 7.5% for random signs
    autograd = PGD(steps=20)(model, x, y, LinfBall(eps=eps), generator=torch.Generator().manual_seed(0))
    assert result.success.float().mean() > autograd.success.float().mean()  # zero gradients: random start only


def tiny(seed: int = 0) -> tuple[Dataset, Dataset]:
    x, y = blobs(n=96, seed=seed)
    return (Dataset(x=x[:64], y=y[:64], num_classes=4, name="blobs"),
            Dataset(x=x[64:], y=y[64:], num_classes=4, name="blobs"))


def test_streams_split_classes_and_domains() -> None:
    train, test = tiny()
    stream = class_incremental(train, test, classes_per_stage=2, seed=0)
    assert len(stream.stages) == 2
    seen = [set(s.y.tolist()) for s in stream.stages]
    assert len(seen[0]) == 2 and not seen[0] & seen[1] and seen[0] | seen[1] == {0, 1, 2, 3}
    assert set(stream.stages[0].test_y.tolist()) == seen[0]
    shifted = domain_shift(train, test, stages=3, seed=0)
    assert sum(len(s.y) for s in shifted.stages) == 64 and sum(len(s.test_y) for s in shifted.stages) == 32
    assert all(0 <= s.x.min() and s.x.max() <= 1 for s in shifted.stages)
    with pytest.raises(ConfigError, match="classes_per_stage"):
        class_incremental(train, test, classes_per_stage=3)


def test_streaming_protocol_runs_every_defence_on_a_tiny_stream() -> None:
    train, test = tiny()
    stream = class_incremental(train, test, classes_per_stage=2, seed=0)
    threat = LinfBall(eps=0.1)
    settings = EvalSettings(threat=threat, attack=PGD(steps=5, gradients=WBSoftmax()), points=8, transfer_epochs=2)
    probe_list = probes(stream, settings, seed=0)
    assert [len(p.y) for p in probe_list] == [8, 32] and probe_list[0].x_transfer is not None
    for defence in (NoDefence(), PGDATStage(threat=threat, chunk=16), ProgressiveSelective(threat=threat)):
        result = run_stream(stream, defence, settings, probes_=probe_list, artmap={"rho": 0.5}, seed=0)
        assert len(result["stages"]) == 2 and result["final"] is result["stages"][-1]
        final = result["final"]
        assert 0 <= final["robust_accuracy_wb_softmax"] <= final["clean_accuracy"] <= 1
        assert final["robust_accuracy_transfer"] <= final["clean_accuracy"]
        assert 0 <= final["wb_softmax_success"] <= 1 and 0 <= final["transfer_success"] <= 1
        learned = sum(r["learned"] for r in result["stages"])
        if defence.name == "progressive":  # clean, then half of the stage's adversarial examples
            assert learned == 64 + sum(math.ceil(0.5 * len(s.y)) for s in stream.stages)
        else:
            assert learned == 64
