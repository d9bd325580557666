"""Machine-generated-text detection (issue 22, 4–6): rewrites, corpus, detector, black-box search, REACT training.

Everything runs on a tiny random BERT / Llama built in code (no SmolLM2, no MiniLM weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparring.errors import ConfigError, DataError
from sparring.language.mgt import (
    HOMOGLYPHS,
    ContrastiveMarginLoss,
    FitConfig,
    GenerationConfig,
    Humanizer,
    MGTDetector,
    RuleSearch,
    TrainSettings,
    attack_success_rate,
    f1_machine,
    fit_detector,
    generate,
    homoglyphs,
    human_chunks,
    pairwise_margin_loss,
    punctuation_edits,
    reorder_sentences,
    synonym_swap,
    tiny_encoder,
    tiny_llama,
    topic_split,
    train_detector,
)

TEXT = ("The parser reads each token once. It keeps a small stack of states. Errors are reported with the line "
        "number. Every rule has a name and a body. The generated tables are cached on disk.")
HUMAN_WORDS = "the a of to is are parser reads token keeps stack rules errors reported line name body".split()
MACHINE_WORDS = "quantum purple banana seventeen velvet galaxy thunder marble ocean crystal".split()


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_homoglyphs_change_characters_but_map_back() -> None:
    out = homoglyphs(TEXT, generator=_g(), budget=0.2)
    assert out != TEXT and len(out) == len(TEXT)
    back = {v: k for k, v in HOMOGLYPHS.items()}
    assert "".join(back.get(c, c) for c in out) == TEXT  # looks the same: only lookalikes replaced
    changed = sum(a != b for a, b in zip(out.split(), TEXT.split(), strict=True))
    assert 1 <= changed <= int(0.2 * len(TEXT.split()))
    assert homoglyphs(TEXT, generator=_g(), budget=0.0) == TEXT


def test_reorder_keeps_the_sentence_multiset() -> None:
    out = reorder_sentences(TEXT, generator=_g(1), budget=0.4)
    split = lambda t: t.split(". ")  # noqa: E731
    assert out != TEXT
    assert sorted(s.rstrip(".") for s in split(out)) == sorted(s.rstrip(".") for s in split(TEXT))


def test_synonym_swap_respects_the_budget_and_uses_neighbours() -> None:
    table = {"parser": ["reader"], "token": ["symbol"], "stack": ["pile"], "states": ["modes"], "rule": ["law"],
             "errors": ["faults"], "line": ["row"], "name": ["label"], "body": ["content"], "tables": ["grids"]}
    neighbours = lambda w: table.get(w.lower(), [])  # noqa: E731
    words = TEXT.split()
    for budget, allowed in ((0.05, 1), (0.1, 3), (0.3, 10)):
        out = synonym_swap(TEXT, neighbours=neighbours, generator=_g(2), budget=budget).split()
        diff = [(a, b) for a, b in zip(words, out, strict=True) if a != b]
        assert 1 <= len(diff) <= allowed
        for a, b in diff:  # punctuation and case kept, the word swapped for one of its neighbours
            core = a.strip(".")
            assert b.strip(".") in [n.capitalize() if core[0].isupper() else n for n in table[core.lower()]]
            assert a.endswith(".") == b.endswith(".")
    assert synonym_swap(TEXT, neighbours=neighbours, generator=_g(2), budget=0.1) == \
        synonym_swap(TEXT, neighbours=neighbours, generator=_g(2), budget=0.1)


def test_punctuation_edits_keep_the_words() -> None:
    out = punctuation_edits(TEXT, generator=_g(3), budget=0.2)
    assert out != TEXT
    assert [w.strip(".,;:") for w in out.split()] == [w.strip(".,;:") for w in TEXT.split()]


def test_encoder_neighbours_exclude_the_word_and_pieces() -> None:
    enc = tiny_encoder(["parser", "reader", "##ing", "x1", "Parser", "stack"])
    got = enc.neighbours("parser", k=5)
    assert "parser" not in [w.lower() for w in got] and got and all(w.isalpha() and not w.startswith("#")
                                                                     for w in got)
    e = enc.embed(["parser stack", "reader"])
    assert e.shape == (2, enc.dim) and enc.encoded == 2
    enc.embed(["reader", "parser stack"])
    assert enc.encoded == 2  # cached


def test_corpus_is_deterministic_and_topic_disjoint() -> None:
    letters = "abcdefghijklmnopqrstuvwxyz"
    topics = {f"t{i}": "\n\n".join(" ".join(f"w{letters[i]}{letters[j]}{letters[k]}." for k in range(24))
                                   for j in range(8)) for i in range(10)}
    a, b = human_chunks(topics=topics, min_words=20, max_words=40), human_chunks(topics=topics, min_words=20,
                                                                                 max_words=40)
    assert a == b and a and all(20 <= len(c.text.split()) <= 40 for c in a)
    split = topic_split(a, seed=3)
    assert split == topic_split(a, seed=3)
    names = {s: {c.topic for c in split[s]} for s in split}
    assert not names["train"] & names["test"] and not names["train"] & names["val"] and not names["val"] & names["test"]
    assert sum(len(v) for v in split.values()) == len(a)
    with pytest.raises(ConfigError):
        topic_split(a, fractions=(0.5, 0.5, 0.5))


def test_pydoc_corpus_has_enough_chunks() -> None:
    chunks = human_chunks()
    assert len(chunks) > 400 and len({c.topic for c in chunks}) > 50
    assert chunks[0].opening(10) == " ".join(chunks[0].text.split()[:10])


def test_generation_is_seeded_and_cached(tmp_path) -> None:
    lm = tiny_llama(HUMAN_WORDS + MACHINE_WORDS)
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    prompts = ["the parser reads", "errors are reported", "the stack keeps"]
    first = generate(lm, prompts, config=cfg, cache=tmp_path)
    assert all(t.startswith(p) and len(t.split()) > len(p.split()) for t, p in zip(first, prompts, strict=True))
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert generate(lm, prompts, config=cfg, cache=False) == first  # the same seed gives the same texts
    lm.model.forward = None  # a cached rerun does not touch the model
    assert generate(lm, prompts, config=cfg, cache=tmp_path) == first


def _toy(n: int, seed: int) -> tuple[list[str], list[str]]:
    g = torch.Generator().manual_seed(seed)
    pick = lambda words: " ".join(words[i] for i in torch.randint(len(words), (12,), generator=g))  # noqa: E731
    return [pick(HUMAN_WORDS) for _ in range(n)], [pick(MACHINE_WORDS) for _ in range(n)]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder(HUMAN_WORDS + MACHINE_WORDS, seed=0)


def test_detector_learns_a_separable_toy_task(encoder) -> None:
    human, machine = _toy(16, 0)
    x = encoder.embed(human + machine)
    y = torch.tensor([0] * 16 + [1] * 16)
    det = fit_detector(MGTDetector(encoder.dim, seed=0), x, y, objective=ContrastiveMarginLoss(),
                       config=FitConfig(epochs=60, lr=1e-2))
    th, tm = _toy(16, 1)
    pred = det.score(encoder.embed(th + tm)) >= 0.5
    assert f1_machine(pred, torch.tensor([0] * 16 + [1] * 16)) > 0.9
    with pytest.raises(DataError):
        fit_detector(MGTDetector(encoder.dim), x[:16], y[:16], objective=ContrastiveMarginLoss())


def test_metrics() -> None:
    assert f1_machine(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    assert attack_success_rate(torch.tensor([1, 1, 0, 1]), torch.tensor([0, 1, 0, 0])) == pytest.approx(2 / 3)


def test_black_box_search_lowers_the_score() -> None:
    """A score that counts the Latin vowels: the search must find homoglyph / synonym edits that lower it."""
    def score(texts: list[str]) -> torch.Tensor:
        return torch.tensor([sum(c in "aeo" for c in t) / max(len(t), 1) * 4 for t in texts])

    texts = [TEXT, "a parser reads each token and keeps a stack of states."]
    search = RuleSearch(steps=3, candidates=4, step_budget=0.1, threshold=0.0)
    result = search(texts, score)
    assert (result.scores < result.initial).all()
    assert torch.allclose(result.scores, score(result.texts))
    assert result.queries > len(texts)
    assert search(texts, score).texts == result.texts  # seeded
    with pytest.raises(ConfigError):
        RuleSearch(rewrites=("paraphrase",))


def test_pairwise_margin_loss_is_the_documented_hinge() -> None:
    s = torch.tensor([3.0, 0.5, 1.0, -1.0])  # two machine-side, two human
    machine = torch.tensor([True, True, False, False])
    got = pairwise_margin_loss(s, machine, margin=2.0)
    hinge = lambda i, j: max(0.0, 2.0 - (s[i] - s[j]).item())  # noqa: E731
    expected = [(hinge(0, 2) + hinge(0, 3)) / 2, (hinge(1, 2) + hinge(1, 3)) / 2,
                (hinge(0, 2) + hinge(1, 2)) / 2, (hinge(0, 3) + hinge(1, 3)) / 2]
    assert got.tolist() == pytest.approx(expected)
    loss = ContrastiveMarginLoss(ce_weight=0.0, contrastive_weight=0.0, margin_weight=1.0, margin=2.0)
    net = MGTDetector(4, projection=3, seed=0)
    x = torch.randn(4, 4, generator=_g())
    out = loss(net, x, torch.tensor([1, 2, 0, 0]))
    logits = net(x)
    assert torch.allclose(out.loss, pairwise_margin_loss(logits[:, 1] - logits[:, 0], machine, margin=2.0))
    full = ContrastiveMarginLoss()(net, x, torch.tensor([1, 2, 0, 0]))
    ce = F.cross_entropy(logits, torch.tensor([1, 1, 0, 0]), reduction="none")
    assert (full.loss > ce).all() and {"ce", "supcon", "pbc"} <= set(full.metrics)


def test_react_training_runs_and_uses_rewrites(encoder) -> None:
    human, machine = _toy(12, 2)
    humanized = {machine[0]: [machine[0].replace("quantum", "the"), "the parser reads"]}
    settings = TrainSettings(rounds=1, pretrain=FitConfig(epochs=30, lr=1e-2), round_fit=FitConfig(epochs=15, lr=1e-2),
                             search=RuleSearch(steps=1, candidates=2, threshold=1.01), search_cap=6)
    det, log = train_detector("react", encoder=encoder, human=human, machine=machine, settings=settings,
                              humanized=humanized)
    assert len(log) == 1 and log[0]["humanized_texts"] == 1 and log[0]["rewrites_total"] >= 1
    assert log[0]["new_rewrites"] <= 6 + 1  # capped search plus the humanized text
    th, tm = _toy(12, 3)
    assert f1_machine(det.score(encoder.embed(th + tm)) >= 0.5, torch.tensor([0] * 12 + [1] * 12)) > 0.8
    _, none = train_detector("standard", encoder=encoder, human=human, machine=machine, settings=settings)
    assert none == []
    with pytest.raises(ConfigError):
        train_detector("paraphrase", encoder=encoder, human=human, machine=machine)  # type: ignore[arg-type]


def test_humanizer_best_of_n_picks_the_lowest_surrogate_score() -> None:
    groups = [["aaa", "b", "aa"], ["x", "aaaa"]]
    picked = Humanizer.select(groups, lambda ts: torch.tensor([float(t.count("a")) for t in ts]))
    assert picked == ["b", "x"]
    lm = tiny_llama(HUMAN_WORDS)
    hum = Humanizer(lm=lm, n=2, generation=GenerationConfig(max_new_tokens=4, batch_size=2), cache=False)
    cands = hum.candidates(["the parser reads", "errors are reported"], ["the stack", "the line"])
    assert len(cands) == 2 and all(len(c) == 2 for c in cands)
