"""A real chat model end to end: SmolLM2-135M-Instruct red-teamed, refusal-tuned, adversarially trained, and
gradient prediction on it.

Every stage is a ``task: language`` run of the example configs (``examples/configs/smollm2_*.yaml``, read here and
changed only in name, seed, adapter and, with ``--quick``, budget), through the same pipeline as
``sparring run``:

1. ``shipped``: the model as it installs (``objective: none``), red-teamed on the built-in suite's 20 test
   behaviours: the direct request, CAT's embedding attack at ε and 2ε, LAT's latent attack and the GCG-style suffix
   search; utility (20 test questions answered, and their NLL) and over-refusal (50 XSTest-style prompts).
2. ``refusal_tuned``: LoRA refusal tuning on the 60 training behaviours and 60 utility chats (the aligned baseline).
3. ``cat``, ``warden``, ``lat``: each continues the refusal-tuned adapter for one epoch, one run per seed.
4. Gradient prediction on the refusal-tuned model (:mod:`_lm_gradient_prediction`): predicted-gradient FGSM on the
   prompt embeddings against true FGSM, target loss only, calibrated on training behaviours, attacking the test
   behaviours; throughput and target-loss increase per method and layer.

ASR is read with the stricter target judge (the response begins with the target prefix, or complies on topic
without refusing or warning); the refusal judge's figures are kept beside it. ε (0.05 of the mean embedding norm,
CAT's) was checked on the suite's *validation* split, never on the test split.

    python benchmarks/language_smollm2.py            # full: 2 seeds for the defences (see the JSON's timings)
    python benchmarks/language_smollm2.py --quick    # a smoke run, under 10 minutes on 2 cores
    python benchmarks/language_smollm2.py --device cuda --seeds 3

Writes ``benchmarks/results/language_smollm2.json`` (``--quick``: ``language_smollm2_quick.json``) with a
``summary`` and prints a Markdown table; run folders (adapters, reports with transcripts) go to
``runs/bench_smollm2/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, log  # noqa: E402

from sparring.experiment import run_experiment  # noqa: E402
from sparring.language.run_config import LanguageRunConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "examples" / "configs"
DEFENCES = ("cat", "warden", "lat")
MODEL = "SmolLM2-135M-Instruct"


#: The attacks of the CPU-sized ladder: the whole catalogue for the refusal-tuned model; the two the summary reads
#: (embedding at ε, suffix) and the direct request for the shipped model and every defence run (time: each
#: further continuous attack costs about a minute and a half per run on 2 cores; the example configs run all five).
CATALOGUE = ["none", "embedding", "embedding_2x", "latent", "suffix"]
SUMMARY_ATTACKS = ["none", "embedding", "suffix"]
#: Further seeds of a defence: the direct request and the embedding attack (the suffix search's ASR is then seed 0's).
SECOND_SEED_ATTACKS = ["none", "embedding"]


def config_for(stage: str, *, seed: int, adapter: Path | None, quick: bool, device: str,
               attacks: list[str] | None = None) -> LanguageRunConfig:
    """The example config of ``stage`` (redteam, refusal, cat, warden, lat) with this run's name, seed, adapter,
    attacks and (``quick``) a smaller budget."""
    raw = yaml.safe_load((CONFIGS / f"smollm2_{stage}.yaml").read_text(encoding="utf-8"))
    raw["name"], raw["seed"] = f"smollm2_{stage}_s{seed}", seed
    if adapter is not None:
        raw["model"]["adapter"] = str(adapter)
    raw.setdefault("train", {})["cpu"] = device == "cpu"
    if attacks is not None:
        raw["eval"]["attacks"] = attacks
    if quick:
        raw["data"]["max_train"] = 6
        raw["eval"].update(max_behaviours=4, steps=2, max_new_tokens=12,
                           suffix={"length": 4, "steps": 1, "top_k": 8, "candidates": 4})
        if isinstance(raw["objective"], dict) and "attack" in raw["objective"]:
            raw["objective"]["attack"]["steps"] = 1
    return LanguageRunConfig.model_validate(raw)


def run(stage: str, out: Path, **settings: Any) -> dict[str, Any]:
    """One run folder; returns its report.json with the wall time."""
    started = time.perf_counter()
    config = config_for(stage, **settings)
    log(f"[{time.strftime('%H:%M:%S')}] {config.name} → {out}")
    report = run_experiment(config, out, overwrite=True, progress=False, notify=log)
    assert report is not None
    report["wall_s"] = time.perf_counter() - started
    return report


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures this benchmark reads from one run's report."""
    block = report["language"]
    summary = block["summary"]
    attacks = block["attacks"]
    return {
        "asr_target": summary["asr_target"], "asr_refusal_judge": summary["asr"],
        "utility_answered": summary["utility_answered"], "utility_nll": summary["utility_loss"],
        "over_refusal": summary["over_refusal"],
        "by_category": {name: o.get("by_category") for name, o in attacks.items()},
        "embedding_target_nll": attacks.get("embedding", {}).get("target_nll"),
        "training_s": (report.get("training") or {}).get("time_s"), "wall_s": report["wall_s"],
    }


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def spread(values: list[float] | None) -> dict[str, float] | None:
    """Per-behaviour target-NLL spread under the embedding attack: the tail WARDEN reweights toward."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(1, len(ordered) // 5)
    return {"mean": statistics.fmean(ordered), "std": statistics.pstdev(ordered), "min": ordered[0],
            "max": ordered[-1], "lowest_fifth_mean": statistics.fmean(ordered[:k])}


def gradient_prediction(refusal_run: Path, *, quick: bool, device: str) -> list[dict[str, Any]]:
    """The study of :mod:`_lm_gradient_prediction` on the refusal-tuned model (training behaviours calibrate, test
    behaviours are attacked)."""
    from _lm_gradient_prediction import study

    from sparring.language.suites import load_suite
    from sparring.language.task import LanguageJob

    config = config_for("refusal", seed=0, adapter=None, quick=quick, device=device)
    job = LanguageJob(config)
    job.load_trained(refusal_run / "checkpoints")
    model = job.model.to(device).eval()
    suite = load_suite("redteam")
    calibration = suite.behaviours["train"][: 8 if quick else 24]
    attacked = suite.behaviours["test"][: 4 if quick else 10]
    layers = [2, 6] if quick else [2, 6, 15]
    return study(model, job.tokenizer, calibration, attacked, layers=layers, eps=config.eval.eps,
                 batch_size=4 if quick else 10, repeats=1 if quick else 2, log=log)


def best_trade_off(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best predicted-gradient row: the highest success ratio among those with throughput ≥ 5; if none has,
    the highest throughput × success (target-loss increase per unit of true FGSM's cost)."""
    predicted = [r for r in rows if r["method"] not in ("true", "random")]
    fast = [r for r in predicted if r["throughput_ratio"] >= 5]
    best = (max(fast, key=lambda r: r["success_ratio"]) if fast
            else max(predicted, key=lambda r: r["throughput_ratio"] * r["success_ratio"]))
    return {"throughput_ratio": best["throughput_ratio"], "success_ratio": best["success_ratio"],
            "layer": best["layer"], "method": best["method"]}


def summarize(stages: dict[str, list[dict[str, Any]]], gradient_rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["shipped", "refusal_tuned", *DEFENCES]

    def per_stage(read: Any) -> dict[str, float | None]:
        return {k: mean([read(f) for f in stages.get(k, [])]) for k in keys}

    utility = per_stage(lambda f: f["utility_answered"])
    base = utility["refusal_tuned"]
    return {
        "model": MODEL,
        "asr_embedding": per_stage(lambda f: f["asr_target"].get("embedding")),
        "asr_suffix": per_stage(lambda f: f["asr_target"].get("suffix")),
        "utility": utility,
        "utility_drop": {k: None if base is None or utility[k] is None else base - utility[k] for k in DEFENCES},
        "over_refusal": per_stage(lambda f: f["over_refusal"]),
        "gradient_prediction": best_trade_off(gradient_rows) if gradient_rows else None,
    }


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def markdown(stages: dict[str, list[dict[str, Any]]], gradient_rows: list[dict[str, Any]],
             summary: dict[str, Any]) -> str:
    attacks = ["none", "embedding", "embedding_2x", "latent", "suffix"]
    head = ["model", "runs", *[f"ASR {a}" for a in attacks], "ASR embedding (refusal judge)", "utility answered",
            "utility NLL", "over-refusal"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for stage, runs in stages.items():
        cells = [stage, str(len(runs))]
        cells += [pct(mean([r["asr_target"].get(a) for r in runs])) for a in attacks]
        cells += [pct(mean([r["asr_refusal_judge"].get("embedding") for r in runs])),
                  pct(mean([r["utility_answered"] for r in runs])),
                  f"{mean([r['utility_nll'] for r in runs]):.3f}", pct(mean([r["over_refusal"] for r in runs]))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "ASR by the target judge unless said; means over the runs.", "",
              "| gradient | layer | throughput × | target-loss increase (of true FGSM's) | cosine |",
              "|---|---:|---:|---:|---:|"]
    for row in gradient_rows:
        lines.append(f"| {row['method']} | {row['layer'] if row['layer'] is not None else '—'} | "
                     f"{row['throughput_ratio']:.1f} | {row['success_ratio']:.2f} | "
                     f"{row['cosine']:.2f} |" if row.get("cosine") is not None else
                     f"| {row['method']} | — | {row['throughput_ratio']:.1f} | {row['success_ratio']:.2f} | — |")
    best = summary["gradient_prediction"]
    if best is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"Best trade-off: {best['method']} at layer {best['layer']}: {best['throughput_ratio']:.1f}× "
                  f"throughput, {best['success_ratio']:.2f} of true FGSM's target-loss increase."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (under 10 minutes on 2 cores)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of each defence (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "bench_smollm2")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="read the stages whose run folder already has a report.json instead of running them")
    parser.add_argument("--assemble", action="store_true",
                        help="run nothing: write the JSON from the finished stages (missing ones and the gradient "
                             "study stay empty)")
    parser.add_argument("--study", action="store_true", help="with --assemble: still run the gradient study")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    seeds = 1 if args.quick else args.seeds
    out = args.out or HERE / "results" / ("language_smollm2_quick.json" if args.quick else "language_smollm2.json")
    started = time.perf_counter()
    settings = {"quick": args.quick, "device": args.device}
    stages: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}

    def stage(name: str, config: str, seed: int, adapter: Path | None, attacks: list[str]) -> Path:
        folder = args.runs / f"{name}_s{seed}"
        if (args.reuse or args.assemble) and (folder / "report.json").is_file():  # a finished stage
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            report.setdefault("wall_s", None)
            log(f"reusing {folder}")
        elif args.assemble:
            log(f"{folder}: not finished, left out")
            return folder
        else:
            report = run(config, folder, seed=seed, adapter=adapter, attacks=attacks, **settings)
        stages.setdefault(name, []).append(figures(report))
        timings[f"{name}_s{seed}"] = report["wall_s"]
        return folder

    stage("shipped", "redteam", 0, None, SUMMARY_ATTACKS)
    refusal = stage("refusal_tuned", "refusal", 0, None, CATALOGUE)
    for seed in range(seeds):
        for defence in DEFENCES:
            stage(defence, defence, seed, refusal, SUMMARY_ATTACKS if seed == 0 else SECOND_SEED_ATTACKS)
    t0 = time.perf_counter()
    gradient_rows = [] if args.assemble and not args.study else gradient_prediction(refusal, **settings)
    timings["gradient_prediction"] = time.perf_counter() - t0
    summary = summarize(stages, gradient_rows)
    spreads = {k: [spread(r["embedding_target_nll"]) for r in stages.get(k, [])]
               for k in ("refusal_tuned", "cat", "warden")}
    table = markdown(stages, gradient_rows, summary)
    result = {
        "benchmark": "language_smollm2", "summary": summary,
        "settings": {"quick": args.quick, "device": args.device, "defence_seeds": seeds, "reused": args.reuse,
                     "assembled": args.assemble,
                     "configs": {s: f"examples/configs/smollm2_{s}.yaml"
                                 for s in ("redteam", "refusal", *DEFENCES)},
                     "judge": "target judge (summary); refusal judge kept per stage",
                     "eps_chosen_on": "the suite's validation split"},
        "stages": stages, "per_behaviour_spread_embedding": spreads, "gradient_prediction": gradient_rows,
        "timings_s": {**timings, "total": time.perf_counter() - started},
        "environment": environment(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table)  # noqa: T201
    log(f"wrote {out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
