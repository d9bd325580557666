"""UAT-MC and APR (methods.md §7.4): the all-item FGM perturbation, the alignment term, the code's quirks."""

from __future__ import annotations

import pytest
import torch

from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.objectives import build
from sparring.recsys.data import synthetic
from sparring.recsys.models import build_recommender
from sparring.recsys.train import epoch_generator, fit, sample_triples
from sparring.recsys.uat_mc import APR, UATMC


@pytest.fixture(scope="module")
def trained() -> dict[str, object]:
    """VBPR and MMGCN after a few BPR epochs on the planted set, and one batch of triples."""
    data = synthetic(seed=0)
    models = {}
    for name in ("vbpr", "mmgcn"):
        torch.manual_seed(0)
        model = build_recommender(name, data, visual_hidden=(64,), text_hidden=(64,))
        fit(model, data, build("standard"), epochs=8, batch_size=1024, lr=3e-3)
        models[name] = model
    x = sample_triples(data, epoch_generator(0, 99))[:1024]
    return {"models": models, "x": x, "y": torch.zeros(len(x), dtype=torch.long)}


@pytest.mark.parametrize("name", ["vbpr", "mmgcn"])
def test_alignment_raises_the_cosine_of_the_modal_perturbations(trained, name):
    """The acceptance unit test: with γ > 0 the per-item δ_v and δ_t agree more than with γ = 0."""
    model, x, y = trained["models"][name], trained["x"], trained["y"]
    plain = APR()(model, x, y).metrics
    aligned = UATMC(gamma=4.0)(model, x, y).metrics
    assert float(plain["delta_cosine"]) == pytest.approx(float(plain["grad_cosine"]))  # γ = 0: δ ∥ g
    assert float(aligned["delta_cosine"]) > float(plain["delta_cosine"])
    # The mismatch is there to fix: the planted groups make the modal gradients nearly orthogonal.
    assert abs(float(plain["grad_cosine"])) < 0.2


def test_perturbation_is_a_row_wise_fgm_step_within_the_budget(trained):
    model, x, y = trained["models"]["vbpr"], trained["x"], trained["y"]
    objective = UATMC(eps=0.05)
    v_hat, t_hat = model.aligned()
    delta_v, delta_t, _, _, leak = objective.perturbation(model, x, y, v_hat, t_hat)
    for delta in (delta_v, delta_t):
        assert delta.abs().max() <= 0.05 + 1e-6
        norms = delta.norm(dim=1)
        moved = norms > 0
        assert moved.any() and torch.allclose(norms[moved], torch.full_like(norms[moved], 0.05), atol=1e-5)
    assert not delta_v.requires_grad and float(leak) == 0.0
    again = objective.perturbation(model, x, y, v_hat, t_hat)[0]
    torch.testing.assert_close(again, delta_v, atol=1e-6, rtol=0)  # deterministic up to summation order


def test_loss_is_clean_plus_weighted_adversarial_bpr(trained):
    model, x, y = trained["models"]["vbpr"], trained["x"], trained["y"]
    objective = UATMC(adv_weight=5.0)
    out = objective(model, x, y)
    with torch.no_grad():
        clean = cross_entropy(model(x), y)
    adv = out.metrics["adv_bpr"]
    torch.testing.assert_close(out.loss.detach().mean(), clean.mean() + 5.0 * adv, rtol=1e-5, atol=1e-6)
    assert float(adv) > float(clean.mean())  # the perturbation hurts the ranking
    assert float(UATMC(eps=0.0)(model, x, y).metrics["adv_bpr"]) == pytest.approx(float(clean.mean()), rel=1e-5)


def test_first_order_flag_reproduces_the_mmgcn_code(trained):
    model, x, y = trained["models"]["mmgcn"], trained["x"], trained["y"]
    first = UATMC(gamma=4.0, second_order=False)(model, x, y).metrics
    plain = APR()(model, x, y).metrics
    assert float(first["delta_cosine"]) == pytest.approx(float(plain["delta_cosine"]))  # the term has no effect


def test_parameter_gradient_leak_flag_changes_the_update(trained):
    model, x, y = trained["models"]["vbpr"], trained["x"], trained["y"]

    def grads(objective: UATMC) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        objective(model, x, y).loss.mean().backward()
        return model.item_linear.weight.grad.clone()

    paper, code = grads(UATMC()), grads(UATMC(param_grad_leak=True))
    assert not torch.allclose(paper, code)
    model.zero_grad(set_to_none=True)


def test_uat_mc_training_runs_and_logs_the_diagnostics():
    data = synthetic(n_users=80, n_items=50, dim=8, interactions_per_user=8, seed=1)
    torch.manual_seed(0)
    model = build_recommender("vbpr", data, dim=16, visual_hidden=(16,), text_hidden=(16,))
    records = fit(model, data, UATMC(), epochs=3, batch_size=256, lr=3e-3)
    assert records[-1]["loss"] < records[0]["loss"]
    assert {"grad_cosine", "delta_cosine", "adv_bpr"} <= set(records[-1])


def test_bad_settings_and_models():
    with pytest.raises(ConfigError, match="eps >= 0"):
        UATMC(eps=-0.1)
    with pytest.raises(ConfigError, match="Recommender"):
        UATMC()(torch.nn.Linear(3, 2), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert APR().gamma == 0.0 and build("apr").name == "apr"
