"""Scaling: PGD-AT throughput with 1 and 2 processes, and eager vs compiled attack throughput.

Two measurements, each a ratio against a baseline measured in the same run, alternating, median of repeats:

1. **Data-parallel PGD-AT** (``train``). sparring's ``Trainer`` runs PGD-AT (L∞ ε = 0.2, PGD-10, α = ε/4,
   Madry's last iterate; SGD lr 0.05, constant LR; no validation, nothing written) on the digits train split
   (1346 images (1, 8, 8)) with ``build_model("small_cnn")``, once with 1 process and once with 2, each
   launched as ``python -m torch.distributed.run --standalone --nproc-per-node N benchmarks/scaling.py
   --worker ...`` (gloo on CPU, NCCL on CUDA; ``OMP_NUM_THREADS=1`` and one torch thread per process, so
   the 1-process baseline is one core and the 2-process run two). Both use the same **global** batch
   (``--batch``, default 128) and data: ``TrainConfig.batch_size`` is the global batch when the Trainer
   splits batches across processes (accelerate's ``split_batches``); if it does not, the worker passes
   ``batch // N`` per process. Throughput is training examples per second of an epoch (1346 / epoch time,
   median over the epochs after the first, which pays one-time costs; the slowest rank counts). Process
   start-up and imports are not in the epoch time; they are reported as ``launch_s``. The 1- and
   2-process runs alternate (order rotating each round); figures are medians over ``--repeats`` rounds.
2. **torch.compile** (``attack``). PGD-10 (``PGD(steps=10)``: best iterate, scoring forward; L∞ ε = 8/255)
   on a random CIFAR-shaped batch (3, 32, 32), eager vs ``sparring.runtime.compile.compiled(model)`` (inductor,
   static shapes), for ``small_cnn`` (batch 64) and ``preact_resnet18`` (batch 16). The first compiled call
   compiles (reported apart as ``compile_s`` = first call − steady compiled call); inductor's on-disk cache
   is a fresh temporary folder, so compile times are cold (``--warm-cache`` keeps the user's cache). After
   one warm-up call each, eager and compiled calls alternate (order rotating); figures are medians over
   ``--repeats``; ``compiled_speedup`` = eager time / compiled time. The compiled adversarial examples are
   checked against the eager ones (max |Δx|, success agreement). One torch thread on CPU (``--threads``).

``--device cuda --bf16`` runs both parts on a GPU under bf16 autocast (``TrainConfig.mixed_precision="bf16"``,
``PGD(precision="bf16")``); the 2-process run then needs two GPUs and is skipped with one.

Run: ``python benchmarks/scaling.py`` (``--quick`` for a smoke run; ``--parts train attack``).
Writes ``benchmarks/results/scaling.json`` (``scaling_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import accelerate
import torch
from _common import environment

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve()
EPS_DIGITS, EPS_CIFAR, STEPS = 0.2, 8 / 255, 10
LR = 0.05
ATTACK_CASES = (("small_cnn", 64), ("preact_resnet18", 16))


# ------------------------------------------------------------------------------------ part 1: workers
def worker(args: argparse.Namespace) -> int:
    """One process of a data-parallel PGD-AT run (launched by torch.distributed.run); writes its timings."""
    from sparring.attacks import PGD
    from sparring.data import load_data
    from sparring.models import build_model
    from sparring.objectives.pgd_at import PGDAT
    from sparring.threat import LinfBall
    from sparring.train import TrainConfig, Trainer

    if args.device == "cpu":
        torch.set_num_threads(1)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    train, _ = load_data("digits")

    def build(batch_size: int) -> Trainer:
        torch.manual_seed(args.seed)
        model = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
        config = TrainConfig(
            epochs=args.epochs, batch_size=batch_size, optimizer="sgd", lr=LR, schedule="constant",
            cpu=args.device == "cpu", mixed_precision="bf16" if args.bf16 else "no", seed=args.seed, progress=False,
        )
        objective = PGDAT(threat=LinfBall(eps=EPS_DIGITS), attack=PGD(steps=STEPS, keep_best=False, score=False))
        return Trainer(model=model, objective=objective, train=(train.x, train.y), val=None, config=config)

    trainer = build(args.batch)
    split = bool(getattr(trainer.accelerator, "split_batches", False))
    per_process = args.batch if split or world == 1 else args.batch // world
    if per_process != args.batch:  # a Trainer whose batch_size is per process: keep the global batch equal
        trainer = build(per_process)
    started = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - started
    epochs = [record["time_s"] for record in result.history]
    timed = epochs[1:] or epochs
    record = {
        "rank": rank, "world_size": world, "distributed_type": str(trainer.accelerator.distributed_type),
        "backend": getattr(trainer.accelerator.state, "backend", None), "split_batches": split,
        "batch_per_process": per_process if not split else args.batch // world, "global_batch": args.batch,
        "epoch_times_s": epochs, "epoch_s": statistics.median(timed), "fit_s": fit_s, "n_train": len(train.y),
        "train_loss": result.history[-1]["train_loss"], "threads": torch.get_num_threads(),
    }
    Path(args.worker_out).with_suffix(f".rank{rank}.json").write_text(json.dumps(record))
    return 0


def launch(procs: int, args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """Run the worker on ``procs`` processes; examples/s from the slowest rank's median epoch time."""
    with tempfile.TemporaryDirectory(prefix="sparring-scaling-") as tmp:
        out = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", str(HERE),
            "--worker", "--worker-out", str(out), "--epochs", str(epochs), "--batch", str(args.batch),
            "--device", args.device, "--seed", str(args.seed), *(["--bf16"] if args.bf16 else []),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        started = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{procs}-process run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("run.rank*.json"))]
    if len(ranks) != procs:
        raise RuntimeError(f"{procs}-process run wrote {len(ranks)} rank records")
    epoch_s = max(r["epoch_s"] for r in ranks)
    fit_s = max(r["fit_s"] for r in ranks)
    return {
        "procs": procs, "examples_per_s": ranks[0]["n_train"] / epoch_s, "epoch_s": epoch_s, "fit_s": fit_s,
        "wall_s": wall, "launch_s": wall - fit_s, "train_loss": ranks[0]["train_loss"],
        **{k: ranks[0][k] for k in ("distributed_type", "backend", "split_batches", "batch_per_process",
                                     "global_batch", "n_train", "threads")},
        "epoch_times_s": [r["epoch_times_s"] for r in ranks],
    }


def measure_training(args: argparse.Namespace, repeats: int, epochs: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Alternate 1-process and N-process runs (order rotating each round)."""
    procs = [1, 2]
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        log("only one CUDA device: the 2-process run is skipped")
        procs = [1]
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        for n in procs[r % len(procs):] + procs[: r % len(procs)]:
            run = launch(n, args, epochs)
            runs.append({"round": r, **run})
            log(f"  round {r + 1}/{repeats} {n} proc: {run['examples_per_s']:8.1f} examples/s "
                f"(epoch {run['epoch_s']:.2f} s, launch {run['launch_s']:.1f} s)")
    return runs, procs


# ---------------------------------------------------------------------------------- part 2: compile
def measure_attack(name: str, batch: int, args: argparse.Namespace, repeats: int) -> dict[str, Any]:
    """Eager vs compiled PGD-10 on one model: compile time, then alternating steady-state calls."""
    import torch._dynamo

    from sparring.attacks import PGD
    from sparring.models import build_model
    from sparring.runtime.compile import compiled
    from sparring.threat import LinfBall

    torch._dynamo.reset()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(name, input_shape=(3, 32, 32), num_classes=10).to(device).eval()
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.rand((batch, 3, 32, 32), generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    attack, threat = PGD(steps=STEPS, precision="bf16" if args.bf16 else "fp32"), LinfBall(eps=EPS_CIFAR)
    fast = compiled(model)
    variants = {"eager": model, "compiled": fast}

    def call(which: str) -> tuple[float, Any]:
        g = torch.Generator(device=device).manual_seed(args.seed)
        sync(device)
        t0 = time.perf_counter()
        result = attack(variants[which], x, y, threat, generator=g)
        sync(device)
        return time.perf_counter() - t0, result

    first_eager, ref = call("eager")
    first_compiled, ours = call("compiled")  # compiles the attack-step and scoring graphs
    second_compiled, _ = call("compiled")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    names = list(times)
    for r in range(repeats):
        for which in names[r % 2:] + names[: r % 2]:
            times[which].append(call(which)[0])
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {
        "model": name, "batch": batch, "input_shape": [3, 32, 32], "attack": f"PGD-{STEPS}",
        "eager_s": eager_s, "compiled_s": compiled_s, "compiled_speedup": eager_s / compiled_s,
        "eager_examples_per_s": batch / eager_s, "compiled_examples_per_s": batch / compiled_s,
        "compile_s": first_compiled - compiled_s, "first_compiled_call_s": first_compiled,
        "second_compiled_call_s": second_compiled, "first_eager_call_s": first_eager,
        "break_even_calls": (first_compiled - compiled_s) / max(eager_s - compiled_s, 1e-12)
        if eager_s > compiled_s else None,
        "max_abs_diff_x_adv": float((ours.x_adv - ref.x_adv).abs().max()),
        "success_agreement": float((ours.success == ref.success).float().mean()),
        "eager_times_s": times["eager"], "compiled_times_s": times["compiled"],
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- report
def print_table(summary: dict[str, Any], attack_rows: list[dict[str, Any]]) -> None:
    if "pgd_at_examples_per_s_1proc" in summary:
        print(f"{'PGD-AT (Trainer, digits small CNN)':<38}{'examples/s':>12}")
        print("-" * 50)
        print(f"{'1 process':<38}{summary['pgd_at_examples_per_s_1proc']:>12.1f}")
        if "pgd_at_examples_per_s_2proc" in summary:
            print(f"{'2 processes':<38}{summary['pgd_at_examples_per_s_2proc']:>12.1f}")
            print(f"{'speed-up (2 vs 1)':<38}{summary['speedup_2proc']:>12.2f}")
        print()
    if attack_rows:
        header = (f"{'PGD-10 model':<18}{'batch':>6}{'eager ex/s':>12}{'compiled ex/s':>15}{'speed-up':>10}"
                  f"{'compile s':>11}{'max|dx|':>10}")
        print(header)
        print("-" * len(header))
        for r in attack_rows:
            print(f"{r['model']:<18}{r['batch']:>6}{r['eager_examples_per_s']:>12.1f}"
                  f"{r['compiled_examples_per_s']:>15.1f}{r['compiled_speedup']:>10.2f}{r['compile_s']:>11.1f}"
                  f"{r['max_abs_diff_x_adv']:>10.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 epochs, 2 attack repeats")
    parser.add_argument("--parts", nargs="+", choices=("train", "attack"), default=["train", "attack"])
    parser.add_argument("--repeats", type=int, default=None, help="training rounds (default 3; 1 with --quick)")
    parser.add_argument("--attack-repeats", type=int, default=None, help="attack calls each (default 5; 2 quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per training run (default 4; 2 quick)")
    parser.add_argument("--batch", type=int, default=128, help="global training batch (default 128)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for training and attacks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the attack part on CPU")
    parser.add_argument("--warm-cache", action="store_true", help="use inductor's usual cache (compile times warm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.worker:
        return worker(args)
    repeats = args.repeats or (1 if args.quick else 3)
    attack_repeats = args.attack_repeats or (2 if args.quick else 5)
    epochs = args.epochs or (2 if args.quick else 4)
    if min(repeats, attack_repeats, epochs) < 1:
        parser.error("--repeats, --attack-repeats and --epochs must be >= 1")

    summary: dict[str, Any] = {}
    train_runs: list[dict[str, Any]] = []
    if "train" in args.parts:
        log(f"PGD-AT throughput: {repeats} round(s) of 1 vs 2 processes, {epochs} epochs each")
        train_runs, procs = measure_training(args, repeats, epochs)
        per = {n: [r["examples_per_s"] for r in train_runs if r["procs"] == n] for n in procs}
        summary["pgd_at_examples_per_s_1proc"] = statistics.median(per[1])
        if 2 in per:
            summary["pgd_at_examples_per_s_2proc"] = statistics.median(per[2])
            summary["speedup_2proc"] = summary["pgd_at_examples_per_s_2proc"] / summary["pgd_at_examples_per_s_1proc"]
            rounds = [
                next(r for r in train_runs if r["round"] == k and r["procs"] == 2)["examples_per_s"]
                / next(r for r in train_runs if r["round"] == k and r["procs"] == 1)["examples_per_s"]
                for k in range(repeats)
            ]
            summary["speedup_2proc_paired_median"] = statistics.median(rounds)
        summary["pgd_at_global_batch"] = args.batch
        summary["pgd_at_split_batches"] = train_runs[0]["split_batches"]

    attack_rows: list[dict[str, Any]] = []
    cache: str | None = None
    if "attack" in args.parts:
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        if not args.warm_cache:  # cold compile times: a fresh inductor cache for this run
            cache = tempfile.mkdtemp(prefix="sparring-inductor-")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            for name, batch in ATTACK_CASES:
                log(f"PGD-{STEPS} eager vs compiled: {name}, batch {batch} ({attack_repeats} repeats)")
                row = measure_attack(name, batch, args, attack_repeats)
                attack_rows.append(row)
                log(f"  compile {row['compile_s']:.1f} s, speed-up {row['compiled_speedup']:.2f}")
        finally:
            if cache is not None:
                shutil.rmtree(cache, ignore_errors=True)
        summary["compiled_speedup"] = {r["model"]: r["compiled_speedup"] for r in attack_rows}
        summary["compile_s"] = {r["model"]: r["compile_s"] for r in attack_rows}
        summary["attack_examples_per_s"] = {
            r["model"]: {"eager": r["eager_examples_per_s"], "compiled": r["compiled_examples_per_s"]}
            for r in attack_rows
        }

    env = environment(accelerate=accelerate.__version__)
    env.update(device=args.device, threads=args.threads if args.device == "cpu" else torch.get_num_threads(),
               cpu_count=os.cpu_count(), bf16=args.bf16)
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    report = {
        "summary": summary,
        "environment": env,
        "settings": {
            "train": {
                "task": "PGD-AT on the digits train split, build_model('small_cnn', input_shape=(1, 8, 8))",
                "attack": f"Linf eps {EPS_DIGITS}, PGD-{STEPS}, alpha eps/4, last iterate", "lr": LR,
                "global_batch": args.batch, "epochs": epochs, "repeats": repeats,
                "launcher": "python -m torch.distributed.run --standalone --nproc-per-node N",
                "threads_per_process": 1, "statistic": "examples/s from the median epoch after the first, "
                "slowest rank; median over alternating rounds",
            },
            "attack": {
                "attack": f"PGD(steps={STEPS}) (best iterate, scoring forward), Linf eps 8/255, random CIFAR-shaped "
                "batch", "compile": "sparring.runtime.compile.compiled(model): inductor, mode default, dynamic=False",
                "inductor_cache": "warm (user cache)" if args.warm_cache else "cold (fresh temporary folder)",
                "repeats": attack_repeats, "statistic": "median over alternating calls after one warm-up each",
            },
            "quick": args.quick, "seed": args.seed,
        },
        "train_runs": train_runs,
        "attack_rows": attack_rows,
    }
    output = args.output or RESULTS / ("scaling_quick.json" if args.quick else "scaling.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(summary, attack_rows)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
