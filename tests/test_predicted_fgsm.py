"""Adversarial training on predicted gradients: warm-up, refit schedule, fidelity metric, robustness, resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import sparring.objectives as objectives
from sparring.attacks import PGD
from sparring.config import parse_config
from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.models import build_model
from sparring.objectives import FastAT, PredictedFGSM, Standard
from sparring.objectives.predicted_fgsm import input_of_last_linear
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

EPS = 0.2  # the digits budget of the demo and the benchmarks
EPOCHS = 10
BATCH = 64
CALIBRATION = 256
REFIT_EVERY = 5


def digits_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64,))


def train(objective: objectives.Objective, data) -> tuple[nn.Module, list[dict]]:
    train_set, _ = data
    model = digits_mlp()
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, optimizer="adam", lr=3e-3, weight_decay=0.0,
                         schedule="cyclic", progress=False)
    result = Trainer(model=model, objective=objective, train=(train_set.x, train_set.y), config=config).fit()
    return model.eval(), result.history


def pgd_accuracy(model: nn.Module, data) -> float:
    _, test = data
    x, y = test.x[:300], test.y[:300]
    return float(PGD(steps=10)(model, x, y, LinfBall(eps=EPS), generator=torch.Generator().manual_seed(0))
                 .robust.float().mean())


@pytest.fixture(scope="module")
def trained(digits, single_thread):
    objective = PredictedFGSM(threat=LinfBall(eps=EPS), refit_every=REFIT_EVERY, calibration_points=CALIBRATION)
    model, history = train(objective, digits)
    return model, objective, history


def test_loss_is_per_example_and_warm_up_is_exact_fgsm_rs(digits) -> None:
    train_set, _ = digits
    x, y = train_set.x[:BATCH], train_set.y[:BATCH]
    model = digits_mlp()
    ours = PredictedFGSM(threat=LinfBall(eps=EPS))(model, x, y, generator=torch.Generator().manual_seed(1))
    fgsm_rs = FastAT(threat=LinfBall(eps=EPS))(model, x, y, generator=torch.Generator().manual_seed(1))
    assert ours.loss.shape == (BATCH,) and ours.logits.shape == (BATCH, 10)
    torch.testing.assert_close(ours.loss, fgsm_rs.loss)  # no predictor yet: the step is FGSM-RS's own
    assert ours.metrics["predicted_step"] == 0.0 and "predictor_cosine" not in ours.metrics


def test_default_layer_is_the_input_of_the_last_linear() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert input_of_last_linear(digits_mlp(), x) == "net.2"  # the ReLU after the hidden Linear
    cnn = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    assert input_of_last_linear(cnn, x) == "features.6"  # reached through a functional flatten
    with pytest.raises(ConfigError, match="max_features"):  # 10 x (1024 + 1) residual features
        PredictedFGSM(threat=LinfBall(eps=EPS))(cnn, x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="no nn.Linear"):
        input_of_last_linear(nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten()), x)


def test_training_is_more_robust_than_standard_training(trained, digits) -> None:
    model, _, _ = trained
    standard, _ = train(Standard(), digits)
    robust, baseline = pgd_accuracy(model, digits), pgd_accuracy(standard, digits)
    assert baseline < 0.1
    assert robust > baseline + 0.15


def test_calibration_then_a_refit_every_n_steps(trained, digits) -> None:
    _, objective, history = trained
    steps = EPOCHS * -(-len(digits[0].y) // BATCH)
    calibrated_at = -(-CALIBRATION // BATCH)  # the warm-up step that completes the calibration points
    assert objective.steps == steps
    assert [h["step"] for h in objective.history if h["kind"] == "calibration"] == [calibrated_at]
    refit_steps = [h["step"] for h in objective.history if h["kind"] == "refit"]
    assert refit_steps == list(range(calibrated_at + REFIT_EVERY, steps + 1, REFIT_EVERY))
    assert objective.refits == len(refit_steps)
    # the trainer's epoch mean of predicted_step: every step but the warm-up and the refits was predicted
    predicted = sum(r["train_predicted_step"] for r in history) * steps / EPOCHS
    assert predicted == pytest.approx(steps - calibrated_at - len(refit_steps), abs=1e-3 * steps)


def test_predictor_tracks_the_model(trained, digits) -> None:
    model, objective, history = trained
    assert all("train_predictor_cosine" in r for r in history)
    assert history[-1]["train_predictor_cosine"] > 0.5
    assert objective.history[-1]["cosine"] > 0.5 and objective.history[-1]["sign_agreement"] > 0.5
    _, test = digits
    x = LinfBall(eps=EPS).random_start(test.x[:200], torch.Generator().manual_seed(0))
    assert objective.predictor.fidelity(model, x, test.y[:200])["cosine"] > 0.5  # on points it never saw


def test_state_round_trip_continues_exactly_and_predicted_steps_are_per_example(trained, digits) -> None:
    model, trained_objective, _ = trained
    objective = copy.deepcopy(trained_objective)  # the uninterrupted run (the fixture stays as it was)
    restored = PredictedFGSM(threat=LinfBall(eps=EPS), refit_every=REFIT_EVERY, calibration_points=CALIBRATION)
    restored.load_state_dict(json.loads(json.dumps(objective.state_dict())))  # the checkpoint's JSON
    assert restored.predictor is not None and restored.steps == objective.steps
    train_set, _ = digits
    model_copy = copy.deepcopy(model)
    for i in range(REFIT_EVERY + 1):  # spans a refit
        x, y = train_set.x[i * 32:(i + 1) * 32], train_set.y[i * 32:(i + 1) * 32]
        a = objective(model, x, y, generator=torch.Generator().manual_seed(i))
        b = restored(model_copy, x, y, generator=torch.Generator().manual_seed(i))
        assert a.loss.shape == (32,)
        torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    assert restored.history == objective.history and restored.history[-1]["kind"] == "refit"
    # a predicted step: a sample's loss does not depend on its batch mates
    x, y = train_set.x[:16], train_set.y[:16]
    mixed_x, mixed_y = train_set.x[100:116].clone(), train_set.y[100:116].clone()
    mixed_x[0], mixed_y[0] = x[0], y[0]
    a = objective(model, x, y, generator=torch.Generator().manual_seed(9))
    b = restored(model_copy, mixed_x, mixed_y, generator=torch.Generator().manual_seed(9))
    assert a.metrics["predicted_step"] == b.metrics["predicted_step"] == 1.0
    torch.testing.assert_close(a.loss[0], b.loss[0])


def test_a_predictor_too_large_to_embed_recalibrates_after_resume(trained) -> None:
    _, objective, _ = trained
    state = PredictedFGSM(max_state_mb=0.0)
    state.predictor, state._source = objective.predictor, objective._source
    saved = state.state_dict()
    assert saved["predictor"] is None
    restored = PredictedFGSM()
    restored.load_state_dict(saved)
    assert restored.predictor is None  # the next steps warm up and calibrate again


def test_eps_zero_trains_on_clean_inputs_after_calibration(digits) -> None:
    train_set, _ = digits
    model = digits_mlp()
    objective = PredictedFGSM(threat=LinfBall(eps=0.0), calibration_points=BATCH)
    objective(model, train_set.x[:BATCH], train_set.y[:BATCH], generator=torch.Generator().manual_seed(0))
    assert objective.predictor is not None
    x, y = train_set.x[BATCH:2 * BATCH], train_set.y[BATCH:2 * BATCH]
    out = objective(model, x, y, generator=torch.Generator().manual_seed(1))
    assert out.metrics["predicted_step"] == 1.0
    torch.testing.assert_close(out.loss, cross_entropy(model(x), y))


def test_registered_configurable_and_checked() -> None:
    assert "predicted_fgsm" in objectives.available()
    config = parse_config({"objective": {"name": "predicted_fgsm", "threat": {"norm": "linf", "eps": EPS},
                                         "layer": "net.2", "refit_every": 20, "decay": 0.9}})
    built = config.build_objective()
    assert isinstance(built, PredictedFGSM) and built.refit_every == 20 and built.layer == "net.2"
    assert built.describe()["refit_every"] == 20 and "steps" not in built.describe()
    for bad in ({"mode": "nope"}, {"decay": 1.5}, {"refit_every": -1}, {"rel_step": 0.0}):
        with pytest.raises(ConfigError):
            PredictedFGSM(**bad)
