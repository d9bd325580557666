"""Language-model attacks and objectives on a tiny Llama trained here to answer or refuse (no downloads).

The prompt layout and its view, the embedding and latent attacks (each raises the target likelihood, inside
its budget, with true or predicted gradients), and the objectives CAT, CAPO, LAT and WARDEN (each one's loss
decreases; WARDEN's weights go from the mean to the max as the temperature falls; utility is not reweighted).
"""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparring.attacks import APGD, SignPGD
from sparring.errors import ConfigError
from sparring.gradients import GradientPredictor, Predicted
from sparring.language import (
    CAPO,
    CAT,
    LAT,
    WARDEN,
    PromptAttack,
    PromptView,
    behaviour_batch,
    chat_batch,
    embedding_attack,
    embedding_scale,
    latent_attack,
    safety_task,
    word_tokenizer,
)
from sparring.losses import IGNORE, cross_entropy
from sparring.threat import TokenL2Ball

TASK = safety_task(seed=0, train=96, test=24, utility=160, utility_test=16, benign=8)
TOKENIZER = word_tokenizer(TASK.words)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(config)


def sft(model: torch.nn.Module, pairs: list[tuple[str, str]], steps: int, seed: int) -> None:
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        chunk = rng.sample(pairs, 32)
        batch = chat_batch(TOKENIZER, [p for p, _ in chunk], {"response": [r for _, r in chunk]})
        view = PromptView(model, batch, ["response"])
        loss = cross_entropy(view(view.reference()), view.labels).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def safe_model() -> LlamaForCausalLM:
    """Pretrained to comply with every request, then safety-tuned to refuse the harmful ones."""
    model = tiny_llama()
    sft(model, [(u.prompt, u.response) for u in TASK.compliance], steps=150, seed=0)
    sft(model, [(b.prompt, b.refusal) for b in TASK.train] + [(u.prompt, u.response) for u in TASK.utility],
        steps=100, seed=1)
    return model.eval()


@pytest.fixture()
def model(safe_model) -> LlamaForCausalLM:
    return copy.deepcopy(safe_model)


def batch_of(n: int = 8, start: int = 0, utility: int = 0):
    return behaviour_batch(TOKENIZER, TASK.test[start:start + n], utility=TASK.utility[:utility])


def nll(model, batch, name: str) -> torch.Tensor:
    view = PromptView(model, batch, [name])
    with torch.no_grad():
        return cross_entropy(view(view.reference()), view.labels)


# --- layout and view ------------------------------------------------------------------------------------------

def test_prompts_are_aligned_at_their_end_and_the_view_matches_the_plain_model(model) -> None:
    batch = batch_of(6)
    assert (batch.prompt_attention[:, -1] == 1).all()  # every prompt ends at column P − 1
    assert not (batch.prompt_mask & (batch.prompt_attention == 0)).any()
    view = PromptView(model, batch, ["target", "refusal"])
    logits = view.split(view(view.reference()))
    torch.testing.assert_close(view.clean_logits(), view(view.reference()))  # the clean path skips x⁰
    for row in range(6):  # the padded, aligned batch gives the logits of each unpadded sequence
        prompt = batch.prompt_ids[row][batch.prompt_attention[row].bool()]
        cont = batch.continuations["refusal"]
        tokens = cont.ids[row][cont.attention[row].bool()]
        with torch.no_grad():
            full = model(input_ids=torch.cat([prompt, tokens])[None]).logits[0]
        expected = full[len(prompt) - 1:len(prompt) - 1 + len(tokens)]
        torch.testing.assert_close(logits["refusal"][row, :len(tokens)], expected, atol=1e-4, rtol=1e-4)


def test_latent_view_stacks_layers_and_perturbs_additively(model) -> None:
    batch = batch_of(4)
    view = PromptView(model, batch, ["target"], layers=("embedding", 0.5, 1))  # 0.5 of 2 layers is layer 1
    assert view.layers == ["embedding", 1]
    x0 = view.reference()
    assert x0.shape == (4, 2 * batch.prompt_ids.shape[1], 32)
    with torch.no_grad():
        clean = view(x0)
        moved = x0.clone()
        moved[:, view.width:] += 0.3  # layer 1 only: the embedding part is untouched
        assert (view(moved) - clean).abs().max() > 1e-3
        torch.testing.assert_close(view.delta(moved)[:, :view.width], torch.zeros_like(x0[:, :view.width]))
    with pytest.raises(ConfigError, match="layer"):
        PromptView(model, batch, ["target"], layers=("embedding", 7))


def test_greedy_generation_under_the_view_matches_hugging_face(model) -> None:
    batch = batch_of(4)
    view = PromptView(model, batch, ["target"])
    ours = view.generate(view.reference(), max_new_tokens=6)
    theirs = model.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_attention, max_new_tokens=6,
                            do_sample=False, pad_token_id=0)[:, batch.prompt_ids.shape[1]:]
    assert torch.equal(ours, theirs)


# --- attacks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: embedding_attack(eps=0.5, steps=10),
                                  lambda: latent_attack(layers=("embedding", 0, 1), eps=0.5, steps=10)],
                         ids=["embedding", "latent"])
def test_attacks_raise_the_target_likelihood_within_the_budget(model, make) -> None:
    batch = batch_of(8)
    before = nll(model, batch, "target")
    result = make()(model, batch, generator=torch.Generator().manual_seed(0))
    assert (result.toward_nll < before).all() and result.toward_nll.mean() < 0.7 * before.mean()
    delta = result.view.delta(result.x_adv)  # absolute perturbation (B, L·P, D)
    per_token = delta.norm(dim=-1) / result.view.scale[..., 0]
    assert (per_token <= 0.5 + 1e-4).all()
    assert (delta[~result.view.mask()] == 0).all()  # template tokens and padding never move


def test_any_core_attack_optimizes_a_prompt_view(model) -> None:
    """APGD (sequence logits (B, k, V) in its best-iterate bookkeeping) in place of CAT's signed steps."""
    batch = batch_of(8)
    result = PromptAttack(optimizer=APGD(steps=10), eps=0.5)(model, batch)
    assert result.toward_nll.mean() < nll(model, batch, "target").mean()


def test_embedding_attack_breaks_the_safety_tuned_model_and_leaves_it_unchanged(model) -> None:
    batch = batch_of(8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = embedding_attack(eps=1.0, steps=20)(model, batch)
    assert result.toward_nll.mean() < 0.5 * nll(model, batch, "target").mean()
    responses = TOKENIZER.batch_decode(result.view.generate(result.x_adv, max_new_tokens=12,
                                                            eos_token_id=TOKENIZER.eos_token_id),
                                       skip_special_tokens=True)
    assert sum(r.startswith("sure here is") for r in responses) >= 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not model.training


def test_the_predicted_gradient_source_attacks_a_prompt_view(model) -> None:
    """A per-token predictor on the view's prompt_states drives a signed attack away from the refusal.

    The plumbing is what is tested: on prompts, a per-token linear map from the first block's state predicts the
    gradient poorly (held-out cosine ≈ 0.07 here), so the predicted attack is far weaker than the true one."""
    views = [PromptView(model, batch_of(8, start), ["refusal"]) for start in (0, 8, 16)]
    predictor = GradientPredictor(layer="prompt_states", mode="direct", per_token=True)
    report = predictor.calibrate_batches([(view, view.reference(), view.labels) for view in views])
    assert report["rows"] > 100 and -1 <= report["holdout_cosine"] <= 1
    view = views[0]
    x, y = view.reference(), view.labels
    threat = TokenL2Ball(eps=0.5, mask=view.mask())
    predicted = SignPGD(steps=10, random_start=False, gradients=Predicted(predictor))(view, x, y, threat)
    with torch.no_grad():
        clean = cross_entropy(view(x), y)
    assert threat.contains(predicted.x_adv, x).all()
    assert predicted.loss.mean() > 2 * clean.mean()  # the refusal became less likely


# --- objectives --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: CAT(attack=embedding_attack(eps=0.5, steps=5)),
    lambda: CAPO(attack=embedding_attack(eps=0.5, steps=5)),
    lambda: LAT(attack=latent_attack(layers=("embedding", 0.5), eps=0.5, steps=5)),
    lambda: WARDEN(base=CAT(attack=embedding_attack(eps=0.5, steps=5))),
], ids=["cat", "capo", "lat", "warden"])
def test_each_objective_loss_decreases(model, make) -> None:
    objective = make()
    batch = batch_of(8, utility=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(12):
        out = objective(model, batch, generator=torch.Generator().manual_seed(step))
        assert out.loss.shape == (8,)
        loss = out.total()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_cat_trains_toward_the_refusal_under_attack_and_keeps_utility_outside_the_rows(model) -> None:
    batch = batch_of(8, utility=8)
    out = CAT(attack=embedding_attack(eps=0.5, steps=5))(model, batch)
    assert out.extra is not None and out.extra.item() == pytest.approx(float(out.metrics["utility_nll"]))
    assert out.logits.shape[:2] == batch.continuations["refusal"].ids.shape
    no_utility = CAT(attack=embedding_attack(eps=0.5, steps=5))(model, dataclasses.replace(batch, utility=None))
    torch.testing.assert_close(no_utility.loss, out.loss)
    assert no_utility.extra is None


def test_warden_weights_tend_to_the_mean_as_temperature_grows_and_to_the_max_as_it_falls(model) -> None:
    batch = batch_of(8, utility=8)
    cat = CAT(attack=embedding_attack(eps=0.3, steps=5))
    plain = cat(model, batch)
    for temperature, check in ((1e4, "mean"), (1e-4, "max")):
        warden = WARDEN(base=cat, divergence="kl_fixed", temperature=temperature)
        out = warden(model, batch)
        value, weights, _ = warden.dual(plain.loss.detach())
        assert weights.sum().item() == pytest.approx(1.0)
        if check == "mean":
            torch.testing.assert_close(weights, torch.full_like(weights, 1 / 8), atol=1e-3, rtol=0)
            assert float(value) == pytest.approx(float(plain.loss.mean()), abs=1e-3)
        else:
            assert float(weights.max()) > 0.99 and int(weights.argmax()) == int(plain.loss.argmax())
            assert float(value) == pytest.approx(float(plain.loss.max()), abs=1e-3)
        # the utility term rides along unweighted: total = robust value + w_util · utility NLL
        assert float(out.total()) == pytest.approx(float(value) + float(plain.extra), abs=1e-3)


def test_warden_learns_its_temperature_in_training_only(model) -> None:
    warden = WARDEN(base=CAT(attack=embedding_attack(eps=0.5, steps=3)), rho=1.0, temperature_lr=0.5)
    batch = batch_of(8)
    model.eval()
    warden(model, batch)
    assert float(warden.current_temperature()) == pytest.approx(1.0)
    model.train()
    out = warden(model, batch)
    assert float(warden.current_temperature()) != pytest.approx(1.0)
    assert {"dro_weight_entropy", "dro_weight_max", "dro_temperature", "attack_success"} <= set(out.metrics)


def test_language_objective_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        CAT(toward_weight=-1.0)
    with pytest.raises(ConfigError):
        CAT(away_kind="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CAPO(beta=0.0)
    with pytest.raises(ConfigError):
        embedding_attack(eps=-0.1)


def test_sequence_losses_ignore_padding() -> None:
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 2, IGNORE], [4, IGNORE, IGNORE]])
    by_hand = torch.stack([
        torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2]),
        torch.nn.functional.cross_entropy(logits[1, :1], labels[1, :1]),
    ])
    torch.testing.assert_close(cross_entropy(logits, labels), by_hand)


def test_embedding_scale_is_the_mean_row_norm(model) -> None:
    weight = model.get_input_embeddings().weight
    assert embedding_scale(model) == pytest.approx(float(weight.norm(dim=1).mean()))


def test_cached_generation_equals_rerunning_the_perturbed_prompt(model) -> None:
    """generate() reads the prompt once (KV cache); rerunning the whole perturbed prompt at every step, the plain
    reading of 'the perturbation applies at every step', must give the same tokens, for latent layers too."""
    from sparring.language.batch import Continuation

    torch.manual_seed(0)
    batch = batch_of(6)
    view = PromptView(model, batch, ["target"], layers=("embedding", 1))
    x = view.reference() + 0.3 * torch.randn_like(view.reference()) * view.mask()[..., None]
    cached = view.generate(x, max_new_tokens=5)
    ids = torch.empty(len(batch), 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(5):
            grown = Continuation(ids=torch.cat([ids, ids.new_zeros(len(batch), 1)], 1),
                                 attention=torch.ones(len(batch), ids.shape[1] + 1, dtype=torch.long))
            step = view._with([grown], ["generated"])(x)[:, -1].argmax(-1)
            ids = torch.cat([ids, step[:, None]], 1)
    assert torch.equal(cached, ids)
