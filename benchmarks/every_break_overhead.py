"""What counting every break costs: the full evaluation before and after, on the demo's PGD-AT model.

Before the "every break counts" change, the ε-curve's and the checks' breaks at radii ≤ ε were computed but left
out of the headline. Counting them must not make an evaluation slower (the acceptance bound: 1.05× of before).
This script times ``evaluate(model, test, LinfBall(0.2), suite=SUITE, seed=0)`` with its defaults (9-point
ε-curve, every check) on the 451 digits test points, once with the sparring of ``--before`` (a git revision,
exported with ``git archive`` into ``benchmarks/.cache/``) and once with this tree, each in a fresh process,
alternating ``--repeats`` times (the order flips every round). The headline figure is the median over rounds of
after / before total evaluation time.

Run: ``python benchmarks/every_break_overhead.py [--before 8f896e1] [--suite standard] [--repeats 3]``.
Writes ``benchmarks/results/every_break_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
EPS = 0.2


def child(src: Path, suite: str, threads: int, out: Path) -> None:
    """Run one evaluation with the sparring found under ``src`` and write its timings to ``out``."""
    sys.path.insert(0, str(src))
    import time

    import torch
    from safetensors.torch import load_file

    import sparring
    from sparring import LinfBall, evaluate
    from sparring.data import load_data
    from sparring.models import build_model

    torch.set_num_threads(threads)
    assert Path(sparring.__file__).resolve().is_relative_to(src.resolve()), sparring.__file__
    _, test = load_data("digits")
    model = build_model("small_cnn", input_shape=test.input_shape, num_classes=test.num_classes)
    model.load_state_dict(load_file(str(CACHE / "digits_small_cnn_pgd_at.safetensors")))
    model.eval()
    started = time.perf_counter()
    ev = evaluate(model, test, LinfBall(eps=EPS), suite=suite, seed=0)
    total = time.perf_counter() - started
    out.write_text(json.dumps({
        "total_s": total, "suite_s": ev.suite_time_s, "eps_curve_s": ev.curve_time_s,
        "robust_accuracy": ev.robust_accuracy, "failed_checks": [c["name"] for c in ev.checks if c["passed"] is False],
        "eps_curve": ev.eps_curve,
    }))


def export(revision: str) -> Path:
    """``src/`` of ``revision`` under ``benchmarks/.cache/src-REV`` (once)."""
    target = CACHE / f"src-{revision}"
    if not (target / "src" / "sparring").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", revision, "src"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def run(src: Path, suite: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "t.json"
        subprocess.run([sys.executable, __file__, "--child", str(src), "--suite", suite, "--threads", str(threads),
                        "--out", str(out)], check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="8f896e1", help="the git revision before the change")
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.suite, args.threads, args.out)
        return
    if not (CACHE / "digits_small_cnn_pgd_at.safetensors").is_file():
        sys.exit("train the demo's PGD-AT model first: python benchmarks/checks_calibration.py --models pgd_at")
    versions = {"before": export(args.before), "after": ROOT / "src"}
    rounds = []
    for r in range(args.repeats):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        timings = {name: run(versions[name], args.suite, args.threads) for name in order}
        ratio = timings["after"]["total_s"] / timings["before"]["total_s"]
        rounds.append({"order": order, **timings, "ratio_total": ratio})
        print(f"round {r}: before {timings['before']['total_s']:.1f} s, after {timings['after']['total_s']:.1f} s "
              f"→ {ratio:.3f}", file=sys.stderr)
    summary = {
        "time_ratio_after_vs_before": statistics.median(r["ratio_total"] for r in rounds),
        "suite_time_ratio_after_vs_before": statistics.median(r["after"]["suite_s"] / r["before"]["suite_s"]
                                                              for r in rounds),
        "robust_accuracy_before": rounds[0]["before"]["robust_accuracy"],
        "robust_accuracy_after": rounds[0]["after"]["robust_accuracy"],
        "failed_checks_before": rounds[0]["before"]["failed_checks"],
        "failed_checks_after": rounds[0]["after"]["failed_checks"],
    }
    out = HERE / "results" / "every_break_overhead.json"
    out.write_text(json.dumps({"summary": summary, "before": args.before, "suite": args.suite,
                               "threads": args.threads, "rounds": rounds}, indent=2) + "\n")
    print("| figure | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value if not isinstance(value, float) else round(value, 4)} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
