"""PGD speed and strength: sparring vs torchattacks vs a minimal hand-written loop.

Every case attacks one model and one batch with L∞ PGD-10 (step α = ε/4, random start) three ways:

* ``sparring``: ``PGD(steps=10, rel_step=0.25)(model, x, y, LinfBall(eps=eps), generator=g)``; the call
  returns per-sample success (it scores the last iterate with one more forward and keeps the best
  iterate), so robust accuracy needs nothing more.
* ``torchattacks``: ``torchattacks.PGD(model, eps, alpha=eps/4, steps=10, random_start=True)``; robust
  accuracy needs one extra forward on its output. Both "attack only" and "attack + accuracy forward" are
  timed in the same call; the headline ratio compares equal outputs (the latter).
* ``sparring_early_stop``: the same with ``early_stop=True`` (evaluation mode: a broken sample leaves the
  working batch); its robust accuracy must equal ``sparring``'s.
* ``minimal``: the textbook loop (random start, 10 sign steps, projection and clamp) + accuracy forward.

The three alternate round-robin in one process (the order rotates every round), after a warm-up round;
each figure is the median over ``--repeats`` rounds. Models are used as a user holds them: eval mode,
parameters with ``requires_grad=True``. Threads are left at torch's default (``--threads`` to pin them).
Seeds are fixed; each implementation's robust accuracy is checked to be identical across repeats.

Cases: ``digits`` (a small CNN trained for five epochs, a few seconds, on scikit-learn's 8×8 digits,
ε = 0.2; the headline), ``cifar`` (a small CNN on a random 3×32×32 batch of 128, ε = 8/255) and, opt-in because it
takes minutes on a CPU, ``resnet`` (PreAct-ResNet-18 on the same batch). Models come from
``sparring.models.build_model`` when it exists, else from the definitions below.

Run: ``python benchmarks/attack_speed.py`` (``--quick`` for a smoke run, ``--cases digits cifar resnet``).
Writes ``benchmarks/results/attack_speed.json`` (``attack_speed_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# torchattacks 3.5 imports without torchvision (a declared dependency it does not import), so no stub is
# needed; install it with `pip install --no-deps torchattacks`, as its dependencies would pull torchvision.
import torchattacks
from _common import environment, minimal_pgd
from torch import Tensor, nn

from sparring.attacks import PGD
from sparring.threat import LinfBall

STEPS = 10
REL_STEP = 0.25
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------- models
class SmallCNN(nn.Module):
    """Two 3×3 conv layers, a max-pool and two linear layers."""

    def __init__(self, in_channels: int, side: int, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (side // 2) ** 2, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """He et al. 2016 pre-activation ResNet-18 for 32×32 inputs (as in the adversarial-training papers)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def make_model(name: str, input_shape: tuple[int, int, int]) -> tuple[nn.Module, str]:
    """``sparring.models.build_model`` when the library has it, else the local definition."""
    try:
        from sparring.models import build_model  # type: ignore[attr-defined]
    except ImportError:
        build_model = None
    if build_model is not None:
        return build_model(name, input_shape=input_shape, num_classes=10), "sparring.models"
    if name == "small_cnn":
        return SmallCNN(input_shape[0], input_shape[1]), "benchmark-local"
    return PreActResNet18(input_shape[0]), "benchmark-local"


# ---------------------------------------------------------------------------------------------- cases
def digits_case(epochs: int) -> dict:
    """A small CNN trained for ``epochs`` of Adam on 8×8 digits (seconds); the attacked batch is the held-out
    split (397 images)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x_all = torch.tensor(data.data, dtype=torch.float32).div_(16.0).view(-1, 1, 8, 8)
    y_all = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    x_all, y_all = x_all[perm], y_all[perm]
    x_train, y_train, x_test, y_test = x_all[:1400], y_all[:1400], x_all[1400:], y_all[1400:]

    torch.manual_seed(0)
    model, source = make_model("small_cnn", (1, 8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    order_gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=order_gen).split(64):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        clean = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {
        "case": "digits_small_cnn", "model": model, "model_source": source, "x": x_test, "y": y_test,
        "eps": 0.2, "clean_accuracy": clean,
        "train": {"epochs": epochs, "seconds": round(seconds, 2), "optimizer": "Adam lr 1e-3, batch 64"},
    }


def cifar_case(model_name: str, batch: int = 128) -> dict:
    """A randomly initialised model on a random 3×32×32 batch in [0, 1] (speed only)."""
    torch.manual_seed(0)
    model, source = make_model(model_name, (3, 32, 32))
    model.eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand((batch, 3, 32, 32), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    label = "cifar_small_cnn" if model_name == "small_cnn" else "cifar_preact_resnet18"
    return {
        "case": label, "model": model, "model_source": source, "x": x, "y": y, "eps": 8 / 255,
        "clean_accuracy": clean, "train": None,
    }


# ------------------------------------------------------------------------------------ implementations
def run_sparring(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int, *, early_stop: bool = False
                 ) -> tuple[dict, float]:
    attack, threat = PGD(steps=STEPS, rel_step=REL_STEP, early_stop=early_stop), LinfBall(eps=eps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    result = attack(model, x, y, threat, generator=gen)
    robust = (~result.success).float().mean().item()  # the host sync belongs to the timed call
    t1 = time.perf_counter()
    return {"total": t1 - t0}, robust


def run_torchattacks(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> tuple[dict, float]:
    attack = torchattacks.PGD(model, eps=eps, alpha=REL_STEP * eps, steps=STEPS, random_start=True)
    torch.manual_seed(seed)  # torchattacks draws its random start from the global generator
    t0 = time.perf_counter()
    x_adv = attack(x, y)
    t1 = time.perf_counter()
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    t2 = time.perf_counter()
    return {"total": t2 - t0, "attack_only": t1 - t0}, robust


def run_minimal(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> tuple[dict, float]:
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x_adv = minimal_pgd(model, x, y, eps=eps, alpha=REL_STEP * eps, steps=STEPS, gen=gen)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    t1 = time.perf_counter()
    return {"total": t1 - t0}, robust


def run_sparring_early_stop(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> tuple[dict, float]:
    return run_sparring(model, x, y, eps, seed, early_stop=True)


IMPLEMENTATIONS: dict[str, Callable[..., tuple[dict, float]]] = {
    "sparring": run_sparring, "sparring_early_stop": run_sparring_early_stop, "torchattacks": run_torchattacks,
    "minimal": run_minimal,
}


# ------------------------------------------------------------------------------------------ measuring
def measure(case: dict, repeats: int, seed: int = 0) -> list[dict]:
    """Round-robin the implementations (rotating the order each round) after one warm-up round."""
    model, x, y, eps = case["model"], case["x"], case["y"], case["eps"]
    names = list(IMPLEMENTATIONS)
    times: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    robust: dict[str, float] = {}
    for name in names:  # warm-up (allocator, oneDNN primitive caches)
        IMPLEMENTATIONS[name](model, x, y, eps, seed)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timing, acc = IMPLEMENTATIONS[name](model, x, y, eps, seed)
            for key, value in timing.items():
                times[name].setdefault(key, []).append(value)
            robust.setdefault(name, acc)
            if acc != robust[name]:
                raise RuntimeError(f"{name}: robust accuracy changed between repeats with a fixed seed")
    rows = []
    for name in names:
        row = {
            "case": case["case"], "implementation": name, "batch": int(x.shape[0]),
            "input_shape": list(x.shape[1:]), "eps": eps, "steps": STEPS, "alpha": REL_STEP * eps,
            "median_s": statistics.median(times[name]["total"]), "min_s": min(times[name]["total"]),
            "times_s": times[name]["total"],
            "robust_acc": robust[name], "clean_acc": case["clean_accuracy"],
        }
        if "attack_only" in times[name]:
            row["attack_only_median_s"] = statistics.median(times[name]["attack_only"])
            row["attack_only_times_s"] = times[name]["attack_only"]
        rows.append(row)
    return rows


def ratios(rows: list[dict]) -> dict[str, float]:
    """Sparring's time over each baseline's: the median of the per-round ratios (the headline; each round
    runs the three back to back, so load that drifts between rounds cancels out), and the ratio of the
    medians."""
    by = {r["implementation"]: r for r in rows}
    sp, ta, mn = by["sparring"]["times_s"], by["torchattacks"], by["minimal"]

    def paired(base: list[float]) -> float:
        return statistics.median(a / b for a, b in zip(sp, base, strict=True))

    median = statistics.median(sp)
    early = by["sparring_early_stop"]["times_s"]
    return {
        "time_ratio_early_stop_vs_torchattacks": statistics.median(
            a / b for a, b in zip(early, ta["times_s"], strict=True)),
        "time_ratio_vs_torchattacks": paired(ta["times_s"]),
        "time_ratio_vs_torchattacks_attack_only": paired(ta["attack_only_times_s"]),
        "time_ratio_vs_minimal_loop": paired(mn["times_s"]),
        "ratio_of_medians_vs_torchattacks": median / ta["median_s"],
        "ratio_of_medians_vs_torchattacks_attack_only": median / ta["attack_only_median_s"],
        "ratio_of_medians_vs_minimal_loop": median / mn["median_s"],
    }


def print_table(rows: list[dict], case_ratios: dict[str, dict[str, float]]) -> None:
    header = f"{'case':<24}{'implementation':<21}{'median s':>10}{'attack-only s':>15}{'robust acc':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        only = f"{r['attack_only_median_s']:.4f}" if "attack_only_median_s" in r else "-"
        print(f"{r['case']:<24}{r['implementation']:<21}{r['median_s']:>10.4f}{only:>15}{r['robust_acc']:>12.4f}")
    print()
    print("time ratios, median of per-round ratios (ratio of medians in brackets):")
    for case, rat in case_ratios.items():
        print(
            f"{case}: sparring/torchattacks {rat['time_ratio_vs_torchattacks']:.3f} "
            f"({rat['ratio_of_medians_vs_torchattacks']:.3f}); "
            f"vs torchattacks attack only {rat['time_ratio_vs_torchattacks_attack_only']:.3f} "
            f"({rat['ratio_of_medians_vs_torchattacks_attack_only']:.3f}); "
            f"sparring/minimal {rat['time_ratio_vs_minimal_loop']:.3f} "
            f"({rat['ratio_of_medians_vs_minimal_loop']:.3f}); "
            f"early_stop/torchattacks {rat['time_ratio_early_stop_vs_torchattacks']:.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per case (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: digits only, 3 rounds, short training")
    parser.add_argument(
        "--cases", nargs="+", choices=["digits", "cifar", "resnet"], default=None,
        help="cases to run (default: digits cifar; resnet is opt-in, minutes on a CPU)",
    )
    parser.add_argument("--cifar-batch", type=int, default=128, help="batch of the 3x32x32 cases (default 128)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    repeats = 3 if args.quick else args.repeats
    cases = args.cases or (["digits"] if args.quick else ["digits", "cifar"])
    output = args.output or RESULTS / ("attack_speed_quick.json" if args.quick else "attack_speed.json")
    if "digits" not in cases:
        parser.error("the headline summary comes from the digits case; include it in --cases")

    rows: list[dict] = []
    case_ratios: dict[str, dict[str, float]] = {}
    meta: dict[str, dict] = {}
    for name in cases:
        if name == "digits":
            case = digits_case(epochs=2 if args.quick else 5)
        else:
            case = cifar_case("small_cnn" if name == "cifar" else "preact_resnet18", batch=args.cifar_batch)
        print(f"[{case['case']}] model from {case['model_source']}, clean accuracy {case['clean_accuracy']:.4f}",
              file=sys.stderr)
        case_rows = measure(case, repeats)
        rows += case_rows
        case_ratios[case["case"]] = ratios(case_rows)
        meta[case["case"]] = {"model_source": case["model_source"], "clean_accuracy": case["clean_accuracy"],
                              "train": case["train"], "batch": int(case["x"].shape[0]), "eps": case["eps"]}

    head = {r["implementation"]: r for r in rows if r["case"] == "digits_small_cnn"}
    summary = {
        **case_ratios["digits_small_cnn"],
        "robust_accuracy": {name: head[name]["robust_acc"] for name in IMPLEMENTATIONS},
        "robust_accuracy_gap": head["sparring"]["robust_acc"] - head["torchattacks"]["robust_acc"],
        "early_stop_same_robust_accuracy": all(
            r["robust_acc"] == next(q["robust_acc"] for q in rows if q["case"] == r["case"]
                                    and q["implementation"] == "sparring")
            for r in rows if r["implementation"] == "sparring_early_stop"),
        "headline_case": "digits_small_cnn",
        "per_case": case_ratios,
    }
    report = {
        "summary": summary,
        "environment": environment(torchattacks=getattr(torchattacks, "__version__", "?")),
        "settings": {"attack": f"Linf PGD-{STEPS}, alpha = {REL_STEP} eps, random start", "repeats": repeats,
                     "quick": args.quick, "cases": meta,
                     "statistic": "times: median over round-robin rounds; time_ratio_*: median of per-round "
                                  "ratios; ratio_of_medians_*: ratio of the median times"},
        "rows": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, case_ratios)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
