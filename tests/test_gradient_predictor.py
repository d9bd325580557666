"""Gradient prediction on a trained digits MLP: fidelity, FGSM ordering, control variate, save/load."""

from __future__ import annotations

import pytest
import torch

from sparring.attacks import FGSM
from sparring.errors import ConfigError, SparringError
from sparring.gradients import GradientPredictor, Predicted
from sparring.threat import LinfBall

EPS = 0.1


@pytest.fixture(scope="module")
def calibrated(trained_mlp, digits, single_thread):
    train, test = digits
    predictor = GradientPredictor(layer="2")  # the ReLU after the hidden Linear
    report = predictor.calibrate(trained_mlp, train.x[:800], train.y[:800], seed=0)
    return trained_mlp, test, predictor, report


def test_calibration_reports_a_useful_predictor(calibrated) -> None:
    model, test, predictor, report = calibrated
    assert report["layer"] == "2" and report["points"] == 800 and report["features"] == 10 * (64 + 1)
    assert report["lambda"] in predictor.lambdas
    assert report["holdout_cosine"] == max(report["holdout_cosine_per_lambda"].values())
    assert report["holdout_cosine"] > 0.8 and report["holdout_sign_agreement"] > 0.8
    fidelity = predictor.fidelity(model, test.x[:200], test.y[:200])  # points the fit never saw
    assert fidelity["cosine"] > 0.8 and fidelity["sign_agreement"] > 0.8


def test_residual_features_beat_direct_regression(calibrated, digits) -> None:
    model, test, predictor, _ = calibrated
    train, _ = digits
    direct = GradientPredictor(layer="2", mode="direct")
    direct.calibrate(model, train.x[:800], train.y[:800], seed=0)
    x, y = test.x[:200], test.y[:200]
    assert predictor.fidelity(model, x, y)["cosine"] > direct.fidelity(model, x, y)["cosine"] + 0.3


def test_predicted_fgsm_lies_between_random_signs_and_true_fgsm(calibrated) -> None:
    model, test, predictor, _ = calibrated
    x, y = test.x[:300], test.y[:300]
    threat = LinfBall(eps=EPS)
    true = FGSM()(model, x, y, threat).robust.float().mean()
    pred = FGSM(gradients=Predicted(predictor))(model, x, y, threat).robust.float().mean()
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    with torch.no_grad():
        random = (model((x + EPS * signs).clamp(0, 1)).argmax(1) == y).float().mean()
    assert true <= pred + 0.02  # prediction is no stronger than the true gradient
    assert pred < random - 0.2  # and far stronger than noise of the same size


def test_control_fraction_one_is_the_true_gradient(calibrated) -> None:
    model, test, predictor, _ = calibrated
    x, y = test.x[:16], test.y[:16]
    from sparring.gradients import Autograd
    from sparring.losses import cross_entropy

    exact = Autograd()(model, x, cross_entropy, y).grad
    mixed = Predicted(predictor, control_fraction=1.0)(model, x, cross_entropy, y).grad
    assert torch.allclose(mixed, exact, atol=1e-6)
    pure = Predicted(predictor)(model, x, cross_entropy, y).grad
    assert not torch.allclose(pure, exact, atol=1e-3)


def test_save_and_load(calibrated, tmp_path) -> None:
    model, test, predictor, report = calibrated
    predictor.save(tmp_path / "pred.safetensors")
    again = GradientPredictor.load(tmp_path / "pred.safetensors")
    assert again.layer == "2" and again.report["lambda"] == report["lambda"]
    x, y = test.x[:8], test.y[:8]
    assert torch.equal(again.predict(model, x, ref=y)[0], predictor.predict(model, x, ref=y)[0])


def test_errors_name_the_problem(trained_mlp) -> None:
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        GradientPredictor(layer="nope").calibrate(trained_mlp, torch.rand(8, 1, 8, 8), torch.zeros(8).long())
    with pytest.raises(SparringError, match="not calibrated"):
        GradientPredictor(layer="2").predict(trained_mlp, torch.rand(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="control_fraction"):
        Predicted(GradientPredictor(layer="2"), control_fraction=1.5)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd", "apgd_t"])
def test_every_gradient_attack_runs_on_predicted_gradients(calibrated, name) -> None:
    from sparring.attacks import build

    model, test, predictor, _ = calibrated
    x, y = test.x[:64], test.y[:64]
    settings = {"pgd": {"steps": 5}, "apgd": {"steps": 10}, "apgd_t": {"steps": 5, "targets": 2}}.get(name, {})
    threat = LinfBall(eps=EPS)
    result = build(name, gradients=Predicted(predictor), **settings)(model, x, y, threat)
    assert threat.contains(result.x_adv, x).all()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    assert result.robust.float().mean() < clean - 0.2  # the predicted direction does real damage


def test_iterative_attacks_run_on_predicted_gradients(calibrated) -> None:
    """PGD and APGD accept the (untruncated) predicted source; the true gradient stays at least as strong."""
    from sparring.attacks import APGD, PGD

    model, test, predictor, _ = calibrated
    x, y = test.x[:200], test.y[:200]
    threat = LinfBall(eps=EPS)
    for attack in (PGD(steps=10), APGD(steps=20)):
        true = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0)).robust.float().mean()
        attack.gradients = Predicted(predictor)
        result = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
        assert threat.contains(result.x_adv, x).all()
        clean = (model(x).argmax(1) == y).float().mean()
        assert true - 0.02 <= result.robust.float().mean() < clean - 0.3  # far below clean accuracy


def test_loading_a_file_that_is_not_a_predictor_names_the_problem(tmp_path) -> None:
    from sparring.errors import DataError

    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a safetensors file"):
        GradientPredictor.load(garbage)
    with pytest.raises(DataError, match="not found"):
        GradientPredictor.load(tmp_path / "missing.safetensors")
