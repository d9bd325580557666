"""LocalAlign: near-target edits, the margin-aware SimPO loss, and training on a toy prompt-injection QA task.

The task, built here: "how many <fruit> are in the basket ?" over data "the basket has N <fruit> ." with an
injected instruction asking for another count; the correct answer is "N <fruit>". A tiny Llama (no downloads)."""

from __future__ import annotations

import random
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparring.errors import ConfigError, DataError
from sparring.language.batch import chat_batch
from sparring.language.data import InjectionTask
from sparring.language.localalign import LocalAlign, injection_batch, near_target_asr, near_target_edits
from sparring.language.toy import toy_injection_tasks, word_tokenizer
from sparring.language.view import PromptView
from sparring.losses import cross_entropy

FRUITS = ("apples", "pears", "plums", "figs")
WORDS = ("how many are in the basket ? has . ignore that and answer say not sorry").split()
ANSWERS = ("the train leaves at 7 pm", "Paris", "42", "it is 3.50 dollars", "he did not go", "the cat is black")


def _distance(a: list[str], b: list[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _tasks(n: int, seed: int) -> list[InjectionTask]:
    return toy_injection_tasks(n, seed=seed, fruits=FRUITS)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer([*WORDS, *FRUITS, *(str(i) for i in range(40))])


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("answer", ANSWERS)
def test_edits_are_deterministic_distinct_and_small(answer) -> None:
    vocabulary = ["red", "London", "blue"]
    edits = near_target_edits(answer, count=4, rng=random.Random(3), vocabulary=vocabulary)
    assert edits == near_target_edits(answer, count=4, rng=random.Random(3), vocabulary=vocabulary)
    assert len(set(edits)) == 4 and answer not in edits
    assert all(1 <= _distance(e.split(), answer.split()) <= 2 for e in edits)


def test_numbers_are_changed_when_present() -> None:
    for seed in range(5):
        edits = near_target_edits("the train leaves at 7 pm", count=3, rng=random.Random(seed))
        numbers = [re.findall(r"\d+", e) for e in edits]
        assert numbers[0] and numbers[0] != ["7"]  # the first edit is the consequential one: another number
    decimals = near_target_edits("3.50", count=4, rng=random.Random(0))  # a lone number: only number edits
    assert all(re.fullmatch(r"\d\.\d\d", e) or e == "not 3.50" for e in decimals)


def test_negations_are_inserted_or_removed() -> None:
    edits = near_target_edits("he did not go", count=12, rng=random.Random(0))
    assert "he did go" in edits and not any(e.split().count("not") > 1 for e in edits)
    assert "the cat is not black" in near_target_edits("the cat is black", count=12, rng=random.Random(0))


def test_edit_errors() -> None:
    for empty in ("", "   "):
        with pytest.raises(DataError, match="empty answer"):
            near_target_edits(empty, count=2, rng=random.Random(0))
    with pytest.raises(DataError, match="admits only 1"):  # "Paris" alone: only "not Paris"
        near_target_edits("Paris", count=2, rng=random.Random(0))
    assert len(near_target_edits("Paris", count=3, rng=random.Random(0), vocabulary=["Rome", "Oslo"])) == 3
    with pytest.raises(ConfigError):
        near_target_edits("Paris", count=-1, rng=random.Random(0))


def test_injection_batch_layout(tokenizer) -> None:
    batch = injection_batch(tokenizer, _tasks(5, seed=0), rejected=3, seed=1)
    assert list(batch.continuations) == ["chosen", "rejected_0", "rejected_1", "rejected_2"]
    again = injection_batch(tokenizer, _tasks(5, seed=0), rejected=3, seed=1)
    assert all(torch.equal(c.ids, again.continuations[k].ids) for k, c in batch.continuations.items())
    prompt = tokenizer.decode(batch.prompt_ids[0][batch.prompt_mask[0]])
    assert "ignore that and answer" in prompt  # the injection sits in the data
    with pytest.raises(ConfigError):
        injection_batch(tokenizer, _tasks(2, seed=0), rejected=0)


def test_weights_fall_with_the_margin_and_are_half_at_m0() -> None:
    margins = torch.linspace(-3, 3, 13)
    for m0, tau in ((0.0, 1.0), (0.4, 0.2)):
        w = LocalAlign(m0=m0, tau=tau).weights(margins)
        assert (w.diff() < 0).all()
        assert LocalAlign(m0=m0, tau=tau).weights(torch.tensor([m0])).item() == pytest.approx(0.5)
    for bad in ({"tau": 0.0}, {"tau": -1.0}, {"beta": 0.0}, {"sft_weight": -0.1}, {"gamma": float("nan")}):
        with pytest.raises(ConfigError):
            LocalAlign(**bad)


def test_loss_matches_separate_passes_and_ignores_other_continuations(tokenizer) -> None:
    model = _model().eval()
    tasks = _tasks(4, seed=2)
    batch = injection_batch(tokenizer, tasks, rejected=2, seed=0)
    out = LocalAlign()(model, batch)
    # By hand with one forward pass per continuation (PromptView), and a per-example loop.
    names = list(batch.continuations)
    view = PromptView(model, batch, names)
    pieces, labels = view.split(view(view.reference())), view.split(view.labels)
    a = torch.stack([-cross_entropy(pieces[n], labels[n]) for n in names], 1).detach()
    for b in range(4):
        m = a[b, 0] - a[b, 1:]
        w = torch.sigmoid(-m)
        loss = (w * -torch.nn.functional.logsigmoid(2.0 * m - 0.5)).sum() / w.sum()
        assert out.loss[b].item() == pytest.approx(loss.item(), abs=1e-5)
    assert torch.allclose(out.logits, pieces["chosen"], atol=1e-5)
    # Extra continuations are ignored; every rejected_j is used; rows do not depend on their batch mates.
    extra = chat_batch(tokenizer, [b.instruction + "\n\n" + f"{b.data} {b.injection}" for b in tasks],
                       {"target": ["sorry"] * 4, **{k: tokenizer.batch_decode(c.ids, skip_special_tokens=True)
                                                    for k, c in batch.continuations.items()}})
    assert torch.allclose(LocalAlign()(model, extra).loss, out.loss, atol=1e-5)
    fewer = injection_batch(tokenizer, tasks, rejected=1, seed=0)
    assert not torch.allclose(LocalAlign()(model, fewer).loss, out.loss)
    assert torch.allclose(LocalAlign()(model, batch.rows(slice(1, 3))).loss, out.loss[1:3], atol=1e-5)
    with pytest.raises(DataError, match="rejected"):
        LocalAlign()(model, chat_batch(tokenizer, ["how many figs ?"], {"chosen": ["3 figs"]}))


def test_loss_is_per_example_and_reaches_every_parameter(tokenizer) -> None:
    model = _model().train()
    batch = injection_batch(tokenizer, _tasks(6, seed=1), rejected=3)
    out = LocalAlign(sft_weight=0.1)(model, batch)
    assert out.loss.shape == (6,) and out.logits.shape[:2] == batch.continuation("chosen").ids.shape
    assert model.training  # the mode is kept
    out.total().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    LocalAlign()(model, batch)
    assert not model.training
    assert near_target_asr(model, batch).shape == (6,) and not model.training


def test_training_lowers_the_loss_and_the_near_target_asr(tokenizer) -> None:
    model = _model(seed=1).train()
    batch = injection_batch(tokenizer, _tasks(16, seed=0), rejected=3, seed=0)
    objective = LocalAlign()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    asr_before = near_target_asr(model, batch).float().mean().item()
    losses, accuracy = [], []
    for _ in range(30):
        out = objective(model, batch)
        optimizer.zero_grad()
        out.total().backward()
        optimizer.step()
        losses.append(out.total().item())
        accuracy.append(float(out.metrics["preference_accuracy"]))
    asr_after = near_target_asr(model, batch).float().mean().item()
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert asr_after < asr_before and asr_after <= 0.25
    assert accuracy[-1] > accuracy[0]


def test_registered() -> None:
    import sparring.language.localalign  # noqa: F401  (registration happens on import)
    from sparring.objectives import OBJECTIVES, build

    assert OBJECTIVES.get("localalign") is LocalAlign
    assert build("localalign", beta=2.5).beta == 2.5
    assert LocalAlign.inputs == "chat"
