"""Contract tests: every registered attack and objective keeps the invariants of DESIGN.md.

A new component that is registered is tested here without anyone writing a test for it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import sparring.attacks as attacks
import sparring.objectives as objectives
from sparring.attacks.rng import SampleStreams
from sparring.language.batch import ChatBatch, chat_batch
from sparring.language.toy import word_tokenizer
from sparring.losses import cross_entropy
from sparring.points.models import PointNet
from sparring.points.threat import PointSet
from sparring.recsys.data import synthetic
from sparring.recsys.models import VBPR
from sparring.threat import L1Ball, L2Ball, LinfBall, ThreatModel

B = 8


def small_model(seed: int = 0, *, batch_norm: bool = True, dropout: bool = True) -> nn.Module:
    """A CNN with BatchNorm and Dropout so that mode and buffer changes would show."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(8 * 8 * 8, 10))
    return nn.Sequential(*layers)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 10, (B,), generator=g)


def threats() -> list[ThreatModel]:
    per_sample = torch.linspace(0.0, 0.3, B)
    return [LinfBall(eps=0.1), L2Ball(eps=0.8), LinfBall(eps=per_sample), L2Ball(eps=per_sample * 4)]


THREAT_IDS = ["linf", "l2", "linf-per-sample", "l2-per-sample"]


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    for a, b in zip(before["grads"], after["grads"], strict=True):  # type: ignore[call-overload]
        assert (a is None and b is None) or torch.equal(a, b)
    for key, value in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(value, after["state"][key]), key  # type: ignore[index]


def prepared_model(make: Callable[..., nn.Module] = small_model) -> nn.Module:
    """Train mode, one frozen parameter, existing .grad on another: the state an attack must keep."""
    model = make()
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.5)
    return model


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Smaller budgets for slow attacks: the invariants do not depend on them, and the defaults would take seconds.
QUICK_SETTINGS: dict[str, dict[str, object]] = {
    "square": {"queries": 100}, "apgd": {"steps": 10}, "apgd_t": {"steps": 10, "targets": 2},
    "point_drop": {"iterations": 3}, "point_add": {"steps": 5}, "knn": {"steps": 5},
    "apgd_l1": {"steps": 10}, "fab_t": {"steps": 10, "targets": 2}, "fmn": {"steps": 10},
}


def build_attack(name: str, **settings: object) -> attacks.Attack:
    return attacks.build(name, **{**QUICK_SETTINGS.get(name, {}), **settings})


@dataclass(frozen=True)
class Domain:
    """What an attack's contract tests run on, chosen by the attack's ``inputs`` (see ``Attack``).

    ``threats`` fill the four ``THREAT_IDS`` slots (scalar ε, another norm or radius, then per-sample ε);
    ``zero`` are the two ε = 0 threats; ``per_sample`` has ε = 0 on even rows and > 0 on odd ones;
    ``default`` serves the train-mode, batch-independence and error tests, ``other`` the determinism test.
    """

    model: Callable[..., nn.Module]
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    threats: list[ThreatModel]
    zero: list[ThreatModel]
    per_sample: ThreatModel
    default: ThreatModel
    other: ThreatModel
    classes: int | tuple[int, ...] = 10  # logits per example (recommenders: [s(u, i+), s(u, i-)]; LMs: (K, V))


CLOUD_POINTS = 32


def point_model(seed: int = 0, *, batch_norm: bool = True, dropout: bool = True) -> nn.Module:
    """A tiny PointNet (clouds (B, 32, 3)) with BatchNorm and Dropout so that mode and buffer changes would show."""
    torch.manual_seed(seed)
    return PointNet(
        input_shape=(CLOUD_POINTS, 3), num_classes=10, width=8, batch_norm=batch_norm, dropout=0.5 if dropout else 0.0
    )


def cloud_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, CLOUD_POINTS, 3, generator=g) * 2 - 1, torch.randint(0, 10, (B,), generator=g)


def _alternating(value: float) -> torch.Tensor:
    return torch.tensor([0.0, value] * (B // 2))


DOMAINS: dict[str, Domain] = {
    "any": Domain(
        model=small_model, batch=batch, threats=threats(), zero=[LinfBall(eps=0.0), L2Ball(eps=0.0)],
        per_sample=LinfBall(eps=_alternating(0.2)), default=LinfBall(eps=0.1), other=L2Ball(eps=0.5),
    ),
    # Coordinates of (B, N, 3) clouds have no box.
    "points": Domain(
        model=point_model, batch=cloud_batch,
        threats=[
            LinfBall(eps=0.05, bounds=None), L2Ball(eps=0.3, bounds=None),
            LinfBall(eps=torch.linspace(0.0, 0.1, B), bounds=None),
            L2Ball(eps=torch.linspace(0.0, 0.6, B), bounds=None),
        ],
        zero=[LinfBall(eps=0.0, bounds=None), L2Ball(eps=0.0, bounds=None)],
        per_sample=LinfBall(eps=_alternating(0.05), bounds=None),
        default=LinfBall(eps=0.05, bounds=None), other=L2Ball(eps=0.3, bounds=None),
    ),
    # Point budgets: with and without a radius, per-sample budgets; ε = 0.9 floors to 0 points.
    "point_set": Domain(
        model=point_model, batch=cloud_batch,
        threats=[
            PointSet(eps=4, radius=0.05), PointSet(eps=2.0, radius=0.0),
            PointSet(eps=torch.linspace(0.0, 6.0, B), radius=0.05), PointSet(eps=torch.linspace(0.0, 6.0, B)),
        ],
        zero=[PointSet(eps=0.0, radius=0.05), PointSet(eps=0.9, radius=0.05)],
        per_sample=PointSet(eps=_alternating(4.0), radius=0.05),
        default=PointSet(eps=4, radius=0.05), other=PointSet(eps=3, radius=0.05),
    ),
    # Attacks of the L1 threat only (APGD-L1): images (B, 1, 8, 8), L1 balls with and without a box.
    "l1": Domain(
        model=small_model, batch=batch,
        threats=[L1Ball(eps=2.0), L1Ball(eps=4.0, bounds=None), L1Ball(eps=torch.linspace(0.0, 4.0, B)),
                 L1Ball(eps=torch.linspace(0.0, 8.0, B), bounds=None)],
        zero=[L1Ball(eps=0.0), L1Ball(eps=0.0, bounds=None)],
        per_sample=L1Ball(eps=_alternating(3.0)), default=L1Ball(eps=2.0), other=L1Ball(eps=5.0),
    ),
}


TINY_REC = synthetic(n_users=12, n_items=20, dim=6, interactions_per_user=5, seed=0)


def rec_model(seed: int = 0, *, batch_norm: bool = True, dropout: bool = True) -> nn.Module:
    """A tiny VBPR (LayerNorm projectors, no BatchNorm or Dropout to show; the flags are accepted and unused)."""
    torch.manual_seed(seed)
    return VBPR(data=TINY_REC, dim=8, visual_hidden=(16,), text_hidden=(16,))


def rec_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B (user, positive, negative) triples and the label 0 of the positive (BPR as cross-entropy)."""
    g = torch.Generator().manual_seed(seed)
    pairs = TINY_REC.train[torch.randint(len(TINY_REC.train), (B,), generator=g)]
    negatives = torch.randint(TINY_REC.n_items, (B, 1), generator=g)
    return torch.cat([pairs, negatives], dim=1), torch.zeros(B, dtype=torch.long)


# Recommender objectives perturb item features inside the objective; the threats are unused placeholders.
DOMAINS["recsys"] = dataclasses.replace(DOMAINS["any"], model=rec_model, batch=rec_batch, classes=2)


CHAT_WORDS = "how do i make a bomb bake bread sure here is the recipe sorry cannot help with that".split()
CHAT_TOKENIZER = word_tokenizer(CHAT_WORDS)
CHAT_CONTINUATION = 4  # words per continuation: every batch has the same widths (rows can be swapped)


def chat_model(seed: int = 0, *, batch_norm: bool = True, dropout: bool = True) -> nn.Module:
    """A tiny Llama built in code (attention dropout when ``dropout``; the BatchNorm flag is unused)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(CHAT_TOKENIZER), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         attention_dropout=0.1 if dropout else 0.0)
    return LlamaForCausalLM(config)


def chat_batch_of(seed: int = 0) -> tuple[ChatBatch, torch.Tensor]:
    """B behaviours of 5-word prompts with every continuation the objectives read, plus 2 utility chats."""
    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(CHAT_WORDS) for _ in range(n))  # noqa: E731
    prompts = [words(5) for _ in range(B)]
    names = ("target", "refusal", "chosen", "rejected_0", "rejected_1")
    batch = chat_batch(CHAT_TOKENIZER, prompts, {name: [words(CHAT_CONTINUATION) for _ in range(B)] for name in names})
    utility = chat_batch(CHAT_TOKENIZER, [words(5) for _ in range(2)], {"response": [words(3) for _ in range(2)]})
    return dataclasses.replace(batch, utility=utility), torch.zeros(B, dtype=torch.long)


# Language-model objectives attack the prompt inside the objective; the threats are unused placeholders.
DOMAINS["chat"] = dataclasses.replace(DOMAINS["any"], model=chat_model, batch=chat_batch_of,
                                      classes=(CHAT_CONTINUATION + 1, len(CHAT_TOKENIZER)))  # + EOS


def domain(name: str) -> Domain:
    inputs = attacks.ATTACKS.get(name).inputs
    assert inputs in DOMAINS, f"attack {name!r} declares inputs={inputs!r}; the contract tests know {list(DOMAINS)}"
    return DOMAINS[inputs]


@pytest.mark.parametrize("name", attacks.available())
class TestAttackContract:
    @pytest.mark.parametrize("slot", range(4), ids=THREAT_IDS)
    def test_model_unchanged(self, name: str, slot: int) -> None:
        d = domain(name)
        model = prepared_model(d.model)
        x, y = d.batch(0)
        before = snapshot(model)
        build_attack(name)(model, x, y, d.threats[slot], generator=seeded())
        assert_same(before, snapshot(model))

    def test_model_unchanged_in_train_mode_attack(self, name: str) -> None:
        d = domain(name)
        model = prepared_model(d.model)
        x, y = d.batch(0)
        before = snapshot(model)
        build_attack(name, train_mode=True)(model, x, y, d.default, generator=seeded())
        assert_same(before, snapshot(model))  # BatchNorm running stats restored

    @pytest.mark.parametrize("slot", range(4), ids=THREAT_IDS)
    def test_inside_threat_set(self, name: str, slot: int) -> None:
        d = domain(name)
        threat = d.threats[slot]
        x, y = d.batch(0)
        result = build_attack(name)(d.model(), x, y, threat, generator=seeded())
        assert result.x_adv.shape == x.shape
        assert threat.contains(result.x_adv, x).all()
        assert result.success.shape == (B,) and result.success.dtype == torch.bool
        assert result.loss.shape == (B,)

    @pytest.mark.parametrize("slot", range(2), ids=["linf", "l2"])
    def test_eps_zero_is_identity(self, name: str, slot: int) -> None:
        d = domain(name)
        x, y = d.batch(0)
        model = d.model()
        result = build_attack(name)(model, x, y, d.zero[slot], generator=seeded())
        assert torch.equal(result.x_adv, x)
        model.eval()
        assert torch.equal(result.success, model(x).argmax(1) != y)

    def test_per_sample_zero_eps_rows_unchanged(self, name: str) -> None:
        d = domain(name)
        x, y = d.batch(0)
        eps = d.per_sample.eps
        assert isinstance(eps, torch.Tensor)
        model = d.model()
        if attacks.ATTACKS.get(name).minimum_norm:  # a misclassified point's smallest perturbation is none at all
            with torch.no_grad():
                y = model.eval()(x).argmax(1)
        result = build_attack(name)(model, x, y, d.per_sample, generator=seeded())
        assert torch.equal(result.x_adv[eps == 0], x[eps == 0])
        assert (result.x_adv[eps > 0] - x[eps > 0]).abs().amax() > 0

    def test_batch_independence(self, name: str) -> None:
        d = domain(name)
        x, y = d.batch(0)
        x_other, y_other = d.batch(1)
        x_mixed, y_mixed = x_other.clone(), y_other.clone()
        x_mixed[0], y_mixed[0] = x[0], y[0]
        attack = build_attack(name)
        a = attack(d.model(), x, y, d.default, generator=seeded(3))
        b = attack(d.model(), x_mixed, y_mixed, d.default, generator=seeded(3))
        torch.testing.assert_close(a.x_adv[0], b.x_adv[0])
        assert a.success[0] == b.success[0]

    def test_batch_size_independence(self, name: str) -> None:
        """With per-sample streams keyed by global ids, chunks of 7 give the full batch's results (issue 23)."""
        d = domain(name)
        n = 40
        x, y = torch.cat([d.batch(s)[0] for s in range(n // B)]), torch.cat([d.batch(s)[1] for s in range(n // B)])
        model, attack, ids = d.model(), build_attack(name), torch.arange(n)
        full = attack(model, x, y, d.default, streams=SampleStreams.of(11, ids))
        chunks = [attack(model, x[i:i + 7], y[i:i + 7], d.default, streams=SampleStreams.of(11, ids[i:i + 7]))
                  for i in range(0, n, 7)]
        assert torch.equal(full.robust, torch.cat([c.robust for c in chunks]))
        torch.testing.assert_close(full.x_adv, torch.cat([c.x_adv for c in chunks]))

    def test_deterministic_under_seed(self, name: str) -> None:
        d = domain(name)
        x, y = d.batch(0)
        attack = build_attack(name)
        a = attack(d.model(), x, y, d.other, generator=seeded(7))
        b = attack(d.model(), x, y, d.other, generator=seeded(7))
        assert torch.equal(a.x_adv, b.x_adv)

    def test_restores_model_on_error(self, name: str) -> None:
        d = domain(name)
        model = prepared_model(d.model)
        before = snapshot(model)

        def failing_loss(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

        x, y = d.batch(0)
        with pytest.raises(RuntimeError, match="boom"):
            build_attack(name)(model, x, y, d.default, loss_fn=failing_loss)
        assert_same(before, snapshot(model))


# A long-tailed training split handed to every objective's lifecycle hooks, as the Trainer does.
LT_COUNTS = [40, 30, 22, 16, 12, 9, 7, 5, 4, 3]


def objective_domain(name: str) -> Domain:
    """The model and batch an objective trains on, by its ``inputs`` (``"any"``: the image CNN)."""
    inputs = objectives.OBJECTIVES.get(name).inputs
    assert inputs in DOMAINS, f"objective {name!r} declares inputs={inputs!r}; the contract tests know {list(DOMAINS)}"
    return DOMAINS[inputs]


def built(name: str, model: nn.Module) -> objectives.Objective:
    """``name`` with defaults, after ``on_train_begin`` (2 epochs, the split above) and ``on_epoch_begin(1)``."""
    g = torch.Generator().manual_seed(99)
    y = torch.repeat_interleave(torch.arange(10), torch.tensor(LT_COUNTS))
    sample = objective_domain(name).batch(0)[0]  # images: (B, 1, 8, 8); triples of indices have no float split
    floating = isinstance(sample, torch.Tensor) and sample.is_floating_point()  # not index triples or chat batches
    train = (torch.rand(len(y), *sample.shape[1:], generator=g), y) if floating else None
    objective = objectives.build(name)
    objective.on_train_begin(model, class_counts=LT_COUNTS, epochs=2, train=train)
    objective.on_epoch_begin(model, epoch=1)
    return objective


# MART's boosted loss is not CE at ε = 0 (it adds −log(1 − max_{k≠y} p_k)); its own tests check ε = 0.
ADVERSARIAL_OBJECTIVES = [n for n in objectives.available() if hasattr(objectives.build(n), "threat")
                          and objectives.OBJECTIVES.get(n).reduces_to_clean_ce]


@pytest.mark.parametrize("name", objectives.available())
class TestObjectiveContract:
    def test_per_example_differentiable_loss(self, name: str) -> None:
        d = objective_domain(name)
        model = d.model(dropout=False)
        model.train()
        x, y = d.batch(0)
        out = built(name, model)(model, x, y, generator=seeded())
        assert out.loss.shape == (B,)
        assert torch.isfinite(out.loss).all()
        assert out.logits.shape == (B, *(d.classes if isinstance(d.classes, tuple) else (d.classes,)))
        out.total().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_model_mode_and_flags_kept(self, name: str) -> None:
        d = objective_domain(name)
        for training in (True, False):
            model = d.model()
            model.train(training)
            flags = [p.requires_grad for p in model.parameters()]
            built(name, model)(model, *d.batch(0), generator=seeded())
            assert [m.training for m in model.modules()] == [training] * len(list(model.modules()))
            assert [p.requires_grad for p in model.parameters()] == flags

    def test_deterministic_under_seed(self, name: str) -> None:
        d = objective_domain(name)
        x, y = d.batch(0)
        model = d.model(batch_norm=False, dropout=False)
        a = built(name, model)(model, x, y, generator=seeded(5)).loss
        b = built(name, model)(model, x, y, generator=seeded(5)).loss
        assert torch.equal(a, b)

    def test_batch_independence(self, name: str) -> None:
        d = objective_domain(name)
        if objectives.OBJECTIVES.get(name).batch_dependent:
            pytest.skip(f"{name} is batch-dependent by design (documented in its module); its own tests cover it")
        model = d.model(batch_norm=False, dropout=False)
        x, y = d.batch(0)
        x_mixed, y_mixed = d.batch(1)
        x_mixed[0], y_mixed[0] = x[0], y[0]
        a = built(name, model)(model, x, y, generator=seeded(2)).loss[0]
        b = built(name, model)(model, x_mixed, y_mixed, generator=seeded(2)).loss[0]
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ADVERSARIAL_OBJECTIVES)
def test_eps_zero_objective_reduces_to_clean_cross_entropy(name: str) -> None:
    d = objective_domain(name)
    objective = objectives.build(name)
    objective = dataclasses.replace(objective, threat=objective.threat.with_eps(0.0))  # type: ignore[attr-defined]
    model = d.model(batch_norm=False, dropout=False)
    x, y = d.batch(0)
    torch.testing.assert_close(objective(model, x, y, generator=seeded()).loss, cross_entropy(model(x), y))


def test_registries_are_populated() -> None:
    assert {"fgsm", "fgsm_rs", "pgd", "point_drop", "point_add", "knn"} <= set(attacks.available())
    assert {"standard", "pgd_at", "trades", "fgsm_rs"} <= set(objectives.available())
