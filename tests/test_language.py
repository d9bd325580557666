"""Hugging Face models in embedding space: wrappers, per-token budgets, true and predicted gradients.

Tiny BERT and Llama configurations built in code (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from sparring.attacks import FGSM, PGD
from sparring.errors import ConfigError
from sparring.gradients import GradientPredictor, Predicted, cosine
from sparring.language import CausalLMTarget, TextClassifier, embedding_scale, topic_prompts
from sparring.losses import cross_entropy
from sparring.threat import TokenL2Ball, TokenLinfBall

KEEP = 4


@pytest.fixture(scope="module")
def classifier() -> tuple[TextClassifier, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    net = TextClassifier(BertModel(config).eval(), torch.nn.Linear(32, 3)).eval().requires_grad_(False)
    ids = torch.randint(5, 120, (24, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0  # every third sequence is padded
    return net, ids, mask, torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def lm() -> tuple[CausalLMTarget, torch.Tensor]:
    """A tiny Llama trained for a few steps on topic prompts (so its target NLL means something)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    ids, _ = topic_prompts(400, vocab=600, topics=4, prompt_len=12, target_len=KEEP, topic_words=20, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        batch = ids[(step * 16) % 320:(step * 16) % 320 + 16]
        logits = model(input_ids=batch, logits_to_keep=KEEP + 1).logits[:, :-1]
        optimizer.zero_grad()
        cross_entropy(logits, batch[:, -KEEP:]).mean().backward()
        optimizer.step()
    return CausalLMTarget(model.eval().requires_grad_(False), keep=KEEP), ids


def test_classifier_on_embeddings_matches_the_token_path(classifier) -> None:
    net, ids, mask, _ = classifier
    x = net.embed(ids, mask)
    assert (x[::3, 8:] == 0).all() and (x[1::3] != 0).any(-1).all()  # padding rows are zero
    states = net.model(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(net(x), net.head(pooled), atol=1e-5)
    assert torch.allclose(net(x[1:5]), net(x)[1:5], atol=1e-5)  # the mask travels with the rows


def test_causal_target_keeps_only_the_positions_that_predict_the_target(lm) -> None:
    net, ids = lm
    x = net.embed(ids[:6])
    full = net.model(input_ids=ids[:6]).logits
    assert net(x).shape == (6, KEEP, 600)
    assert torch.allclose(net(x), full[:, -KEEP - 1:-1], atol=1e-4)
    nll = cross_entropy(net(x), ids[:6, -KEEP:])
    target_logits = full[:, -KEEP - 1:-1].transpose(1, 2)
    by_hand = torch.nn.functional.cross_entropy(target_logits, ids[:6, -KEEP:], reduction="none")
    assert torch.allclose(nll, by_hand.mean(1), atol=1e-4)


@pytest.mark.parametrize("ball", [TokenL2Ball, TokenLinfBall])
def test_fgsm_on_prompt_embeddings_raises_the_target_nll_within_the_budget(lm, ball) -> None:
    net, ids = lm
    x, y = net.embed(ids[320:352]), ids[320:352, -KEEP:]
    eps = 0.3 * embedding_scale(net) / (1 if ball is TokenL2Ball else 32**0.5)
    threat = ball(eps=eps, mask=net.prompt_mask(x))
    result = FGSM()(net, x, y, threat)
    assert threat.contains(result.x_adv, x).all()
    assert torch.equal(result.x_adv[:, -KEEP:], x[:, -KEEP:])  # the target tokens never move
    assert (result.loss > cross_entropy(net(x), y)).float().mean() > 0.9
    assert torch.equal(FGSM()(net, x, y, threat.with_eps(0.0)).x_adv, x)


def test_predicted_gradients_on_a_language_model(lm) -> None:
    """methods.md §1.6.3: cos > 0, and the predicted iterative attack moves the target NLL the right way."""
    net, ids = lm
    predictor = GradientPredictor(layer="model.model.layers.0", mode="direct", per_token=True)
    report = predictor.calibrate(net, net.embed(ids[:320]), ids[:320, -KEEP:], batch_size=64)
    assert report["features"] == 32 and report["rows"] == 320 * 16
    x, y = net.embed(ids[320:]), ids[320:, -KEEP:]
    truncated, logits = predictor.predict(net, x, truncate=True)
    assert logits is None and torch.equal(truncated, predictor.predict(net, x)[0])
    assert predictor.fidelity(net, x, y)["cosine"] > 0.05
    threat = TokenL2Ball(eps=0.5 * embedding_scale(net), mask=net.prompt_mask(x))
    attack = PGD(steps=5, keep_best=False, score=False, gradients=Predicted(predictor, truncate=True))
    x_adv = attack(net, x, y, threat).x_adv
    assert threat.contains(x_adv, x).all()
    assert cross_entropy(net(x_adv), y).mean() > cross_entropy(net(x), y).mean()


def test_label_mode_truncates_and_predicts_per_token(classifier) -> None:
    net, ids, mask, y = classifier
    x = net.embed(ids, mask)
    predictor = GradientPredictor(layer="model.embeddings", mode="label", per_token=True)
    predictor.calibrate(net, x, y, batch_size=8)
    assert predictor.classes == 3 and predictor.report["features"] == 3 * 33
    grad, logits = predictor.predict(net, x, ref=y, truncate=True)
    assert logits is None and (grad[::3, 8:] == 0).all()  # no gradient on padding
    assert torch.equal(grad, predictor.predict(net, x, ref=y)[0])
    x_req = x.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(cross_entropy(net(x_req), y).sum(), x_req)
    real = (x != 0).any(-1)
    assert cosine(grad[real], true[real]).mean() > 0.2


def test_a_truncated_source_is_refused_where_scores_are_needed(classifier) -> None:
    net, ids, mask, y = classifier
    x = net.embed(ids, mask)
    predictor = GradientPredictor(layer="model.embeddings", mode="label", per_token=True)
    predictor.calibrate(net, x, y, batch_size=8)
    threat = TokenL2Ball(eps=0.1)
    with pytest.raises(ConfigError, match="gives no loss or logits"):
        PGD(steps=2, gradients=Predicted(predictor, truncate=True))(net, x, y, threat)
    with pytest.raises(ConfigError, match="residual"):
        Predicted(GradientPredictor(layer="model.embeddings"), truncate=True)


def test_refits_follow_the_schedule_and_use_the_true_gradient(classifier) -> None:
    net, ids, mask, y = classifier
    x = net.embed(ids, mask)
    predictor = GradientPredictor(layer="model.encoder.layer.0", mode="label", per_token=True)
    predictor.calibrate(net, x[:16], y[:16], batch_size=8)
    source = Predicted(predictor, refit_every=3)
    before = predictor.ridge.weight.clone()
    steps = [source(net, x[16:], cross_entropy, y[16:]) for _ in range(6)]
    assert len(source.fidelity) == 2 and not torch.equal(before, predictor.ridge.weight)
    x_req = x[16:].clone().requires_grad_(True)
    (true,) = torch.autograd.grad(cross_entropy(net(x_req), y[16:]).sum(), x_req)
    assert torch.allclose(steps[2].grad, true, atol=1e-6) and steps[2].scored


def test_save_and_load_keep_the_running_sums(classifier, tmp_path) -> None:
    net, ids, mask, y = classifier
    x = net.embed(ids, mask)
    predictor = GradientPredictor(layer="model.embeddings", mode="label", per_token=True)
    predictor.calibrate(net, x, y, batch_size=8)
    predictor.save(tmp_path / "p.safetensors")
    again = GradientPredictor.load(tmp_path / "p.safetensors")
    assert again.per_token and again.classes == 3 and again.mode == "label"
    assert torch.equal(again.predict(net, x, ref=y)[0], predictor.predict(net, x, ref=y)[0])
    predictor.update(net, x[:8], y[:8], decay=0.5)
    again.update(net, x[:8], y[:8], decay=0.5)
    assert torch.allclose(again.ridge.weight, predictor.ridge.weight, atol=1e-6)
