"""Acceptance benchmark of the evaluation suite: sparring's ``standard`` suite vs a reference AutoAttack.

Three models on the 451-image digits test split, L∞ ε = 0.2:

* ``standard``: the demo's standard-trained small CNN (``demo_standard.yaml``: Adam lr 0.003, cyclic
  schedule, 10 epochs);
* ``pgd_at``: the demo's PGD-AT small CNN (``demo_pgd_at.yaml``: same, 15 epochs, PGD-10 at ε = 0.2);
* ``masked``: the ``standard`` CNN behind a bit-depth reduction of its input, ``round(16 x) / 16``, a
  classic obfuscated-gradient "defence" (Athalye et al. 2018): its input gradient is exactly zero, so
  white-box attacks fail and only the black-box Square attack finds the model's true weakness. A
  trustworthy evaluation must either find that weakness or flag the number.

Four evaluations per model, all on the same points:

* ``sparring``: ``evaluate(model, (x, y), LinfBall(eps), suite="standard", seed=0, batch_size=512)``, as
  ``sparring eval`` runs it (the default 9-point ε-curve and the checks; ``--no-eps-curve`` passes
  ``eps_curve=[]``); its robust accuracy is the per-sample worst case over everything it ran, its time
  ``suite_time_s`` (the suite's attacks only) and, separately, ``eval_total_s`` (the whole call, ε-curve and checks
  included). Guarded: while ``evaluate`` has no ``suite=`` the row says "not available yet".
* ``reference``: AutoAttack's standard configuration at its original budgets, assembled from torchattacks'
  classes: APGD-CE (100 steps, 1 restart), APGD-T (9 target classes × 100 steps), FAB-T (9 targets × 100
  steps), Square (5000 queries, p_init 0.8), run as a cascade (each attack only on the points still
  robust; AutoAttack's semantics), so its robust accuracy is the per-sample worst case. The cascade is
  written here rather than taken from ``torchattacks.MultiAttack`` (which does cascade) to time each
  stage and to check every adversarial example: finite, in [0, 1] and within ε (else it does not count).
* ``torchattacks_autoattack``: ``torchattacks.AutoAttack(model, norm="Linf", eps, version="standard",
  n_classes=10, seed=0)`` as shipped: the same four attacks, but APGD, APGD-T and FAB at torchattacks'
  default of 10 steps (not AutoAttack's 100).
* ``original_autoattack`` (only when the ``autoattack`` package of fra31/auto-attack is importable; never a
  dependency): the original code, ``version="standard"``, alternating with the two above in every round, with
  the paired ratio ``time_ratio_sparring_eval_total_vs_original_autoattack``.
* ``art_autoattack``: ART's ``AutoAttack`` with its default attack list (APGD-CE and APGD-DLR, 5 restarts ×
  100 steps each, DeepFool, Square 5 restarts × 5000 queries), ``eps_step = 2 ε`` (APGD's original initial
  step), batch size 500, on a ``PyTorchClassifier``. ``--skip-art`` leaves it out.

Timing: torch runs on ``--threads`` threads (default 1). With ``--repeats R`` sparring and the reference
alternate R times per model (the order flips every round); the headline ``time_ratio_sparring_vs_reference``
is the median over rounds of sparring's suite time over the reference cascade's time. torchattacks'
AutoAttack and ART run once per model (first round) and are reported beside, not in the ratio.

Trained weights are cached in ``benchmarks/.cache/`` (safetensors; retrained when the settings change or
with ``--retrain``).

Run: ``python benchmarks/eval_vs_reference.py`` (``--models standard pgd_at masked``, ``--eps 0.2``,
``--n 451``, ``--repeats 3``, ``--skip-art``, ``--threads 1``). Writes ``benchmarks/results/eval_vs_reference.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# torchattacks 3.5 imports without torchvision; install it with `pip install --no-deps torchattacks`.
import torchattacks
from _common import environment, log, train_demo_model
from torch import Tensor, nn

from sparring import LinfBall
from sparring.data import load_data

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
MODELS = ("standard", "pgd_at", "masked")
NUM_CLASSES = 10
BIT_LEVELS = 16
REF_STEPS = 100
SQUARE_QUERIES = 5000
# acceptance thresholds of the evaluation issue
MAX_GAP = 0.005  # sparring robust accuracy may exceed the reference's by at most this, on every model
MAX_TIME_RATIO = 0.5  # sparring's suite time over the reference's, on the PGD-AT model
MAX_MASKED_DIFF = 0.02  # |sparring - reference| on the masked model


# --------------------------------------------------------------------------------------------- models
class BitDepthReduction(nn.Module):
    """``model(round(levels · x) / levels)``: a non-differentiable input quantisation (zero input gradient)."""

    def __init__(self, model: nn.Module, levels: int = BIT_LEVELS) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch: int = 512) -> Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def input_gradient_abs_max(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Largest |∂CE/∂x| over the batch (exactly 0 for the bit-depth-reduced model)."""
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return float(grad.abs().max())


def valid_adversarial(x_adv: Tensor, x: Tensor, eps: float, tol: float = 1e-5) -> Tensor:
    """Per sample: finite, inside [0, 1] and within ε of ``x`` in L∞ (up to float rounding)."""
    flat_adv, flat = x_adv.flatten(1), x.flatten(1)
    finite = torch.isfinite(flat_adv).all(1)
    in_box = (flat_adv >= -tol).all(1) & (flat_adv <= 1 + tol).all(1)
    in_ball = ((flat_adv - flat).abs().amax(1) <= eps + tol)
    return finite & in_box & in_ball


# ------------------------------------------------------------------------------------------ reference
def reference_attacks(model: nn.Module, eps: float, seed: int) -> list[tuple[str, Any]]:
    """AutoAttack ``standard`` at the original budgets, from torchattacks' classes."""
    return [
        ("apgd_ce", torchattacks.APGD(model, norm="Linf", eps=eps, steps=REF_STEPS, n_restarts=1, loss="ce",
                                      seed=seed)),
        ("apgd_t", torchattacks.APGDT(model, norm="Linf", eps=eps, steps=REF_STEPS, n_restarts=1,
                                      n_classes=NUM_CLASSES, seed=seed)),
        ("fab_t", torchattacks.FAB(model, norm="Linf", eps=eps, steps=REF_STEPS, n_restarts=1, multi_targeted=True,
                                   n_classes=NUM_CLASSES, seed=seed)),
        ("square", torchattacks.Square(model, norm="Linf", eps=eps, n_queries=SQUARE_QUERIES, n_restarts=1,
                                       p_init=0.8, seed=seed)),
    ]


def run_reference(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> dict[str, Any]:
    """The cascade: each attack runs on the points still robust; a point is robust iff no attack broke it."""
    n = len(y)
    t_start = time.perf_counter()
    robust = predict(model, x) == y
    clean = robust.sum().item() / n
    stages, invalid = [], {}
    for name, attack in reference_attacks(model, eps, seed):
        idx = robust.nonzero().flatten()
        t0 = time.perf_counter()
        if len(idx):
            x_adv = attack(x[idx], y[idx])
            ok = valid_adversarial(x_adv, x[idx], eps)
            fooled = predict(model, torch.nan_to_num(x_adv)) != y[idx]
            broken = fooled & ok
            invalid[name] = int((fooled & ~ok).sum())
            robust[idx[broken]] = False
        else:
            broken = torch.zeros(0, dtype=torch.bool)
        seconds = time.perf_counter() - t0
        stages.append({
            "attack": name, "attacked": len(idx), "broken": int(broken.sum()), "time_s": seconds,
            "robust_accuracy_after": robust.sum().item() / n,
        })
    return {
        "clean_accuracy": clean, "robust_accuracy": robust.sum().item() / n, "time_s": time.perf_counter() - t_start,
        "stages": stages, "invalid_successes_rejected": invalid, "robust": robust,
    }


def run_torchattacks_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> dict[str, Any]:
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=NUM_CLASSES,
                                     seed=seed)
    t0 = time.perf_counter()
    x_adv = attack(x, y)
    seconds = time.perf_counter() - t0
    fooled = predict(model, torch.nan_to_num(x_adv)) != y
    ok = valid_adversarial(x_adv, x, eps)
    return {
        "robust_accuracy": (len(y) - (fooled & ok).sum().item()) / len(y),
        "robust_accuracy_as_returned": (len(y) - fooled.sum().item()) / len(y),  # counting out-of-budget / NaN outputs
        "invalid_outputs_counted_as_broken": int((fooled & ~ok).sum()), "time_s": seconds,
    }


def original_autoattack_available() -> bool:
    """Whether the original AutoAttack (fra31/auto-attack, ``pip install git+https://github.com/fra31/auto-attack``)
    is importable: never a dependency of sparring, used only when a user has it."""
    return importlib.util.find_spec("autoattack") is not None


def run_original_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> dict[str, Any]:
    """The original AutoAttack, ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square at their budgets), on
    the CPU with the same threads, one batch."""
    from autoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, verbose=False,
                           device=str(x.device))
    t0 = time.perf_counter()
    x_adv = adversary.run_standard_evaluation(x, y, bs=len(x))
    with torch.no_grad():
        robust = (predict(model, x_adv) == y).sum().item() / len(y)
    return {"robust_accuracy": robust, "time_s": time.perf_counter() - t0}


def run_art_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> dict[str, Any]:
    from art.attacks.evasion import AutoAttack
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=NUM_CLASSES,
        clip_values=(0.0, 1.0), device_type="cpu",
    )
    attack = AutoAttack(estimator=classifier, norm=np.inf, eps=eps, eps_step=2 * eps, batch_size=500)
    for member in attack.attacks:  # no tqdm bars
        if hasattr(member, "verbose"):
            member.verbose = False
    np.random.seed(seed)
    torch.manual_seed(seed)
    x_np, y_np = x.numpy().astype(np.float32), y.numpy()
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):  # DeepFool divides by zero gradients on the masked model
        x_adv = attack.generate(x=x_np, y=y_np)
    seconds = time.perf_counter() - t0
    x_adv_t = torch.from_numpy(x_adv)
    fooled = predict(model, torch.nan_to_num(x_adv_t)) != y
    ok = valid_adversarial(x_adv_t, x, eps)
    return {"robust_accuracy": (len(y) - (fooled & ok).sum().item()) / len(y),
            "invalid_outputs_counted_as_broken": int((fooled & ~ok).sum()), "time_s": seconds}


# -------------------------------------------------------------------------------------------- sparring
def run_sparring(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int, *, autoattack_square: bool = False,
    eps_curve: bool = True,
) -> dict[str, Any]:
    """``evaluate(..., suite="standard")``; ``{"available": False, ...}`` while the API lacks ``suite=``.

    ``autoattack_square``: the same suite with Square's ``autoattack_compat`` draws (one window and sign
    shared by the batch, never the last position), to show where a gap to the reference comes from."""
    from sparring.attacks.cascade import Cascade, suite
    from sparring.evaluate import evaluate

    cascade = suite("standard")
    if autoattack_square:
        attacks = (*cascade.attacks[:-1], dataclasses.replace(cascade.attacks[-1], autoattack_compat=True))
        cascade = Cascade(attacks=attacks, labels=cascade.labels, name="standard+autoattack_square_draws")
    t0 = time.perf_counter()
    try:
        ev = evaluate(model, (x, y), LinfBall(eps=eps), suite=cascade, eps_curve=None if eps_curve else [],
                      seed=seed, batch_size=512)
    except TypeError as exc:
        if "suite" not in str(exc):
            raise
        return {"available": False, "reason": f"sparring suite not available yet ({exc})"}
    total = time.perf_counter() - t0
    checks = [dict(c) for c in ev.checks]
    return {
        "available": True, "robust_accuracy": float(ev.robust_accuracy), "clean_accuracy": float(ev.clean_accuracy),
        "suite_time_s": float(ev.suite_time_s), "eval_total_s": total, "trustworthy": bool(ev.trustworthy),
        "checks": checks, "failed_checks": [c["name"] for c in checks if c.get("passed") is False],
        "stages": [{"attack": a["name"], "attacked": a["attacked"], "broken": a["broken"],
                    "robust_accuracy_after": a["robust_accuracy"], "time_s": a["time_s"]} for a in ev.attacks],
    }


# ------------------------------------------------------------------------------------------ measuring
def measure_model(name: str, model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    eps, seed = args.eps, args.seed
    rounds: list[dict[str, Any]] = []
    original = original_autoattack_available()
    for r in range(args.repeats):
        order = ["sparring", "reference"] if r % 2 == 0 else ["reference", "sparring"]
        if original:  # the original AutoAttack alternates in the same rounds: its ratio is paired too
            order = order + ["original"] if r % 2 == 0 else ["original", *order]
        record: dict[str, Any] = {"round": r, "order": order}
        for side in order:
            log(f"[{name}] round {r + 1}/{args.repeats}: {side}")
            if side == "sparring":
                record["sparring"] = run_sparring(model, x, y, eps, seed, eps_curve=args.eps_curve)
            elif side == "original":
                record["original"] = run_original_autoattack(model, x, y, eps, seed)
                log(f"[{name}]   original AutoAttack: {record['original']['robust_accuracy']:.4f} robust, "
                    f"{record['original']['time_s']:.1f} s")
            else:
                record["reference"] = run_reference(model, x, y, eps, seed)
                log(f"[{name}]   reference: {record['reference']['robust_accuracy']:.4f} robust, "
                    f"{record['reference']['time_s']:.1f} s")
        rounds.append(record)
    log(f"[{name}] torchattacks AutoAttack (as shipped)")
    ta = run_torchattacks_autoattack(model, x, y, eps, seed)
    compat = None
    if name == "masked":
        log(f"[{name}] sparring with AutoAttack's Square draws (diagnostic)")
        compat = run_sparring(model, x, y, eps, seed, autoattack_square=True)
    art = None
    if not args.skip_art:
        log(f"[{name}] ART AutoAttack")
        art = run_art_autoattack(model, x, y, eps, seed)
    return {"rounds": rounds, "torchattacks_autoattack": ta, "art_autoattack": art, "sparring_aa_square": compat}


def model_summary(name: str, clean: float, m: dict[str, Any]) -> dict[str, Any]:
    rounds = m["rounds"]
    refs = [r["reference"] for r in rounds]
    ref_acc = refs[0]["robust_accuracy"]
    out: dict[str, Any] = {
        "clean_accuracy": clean,
        "reference_robust_accuracy": ref_acc,
        "reference_time_s": statistics.median(r["time_s"] for r in refs),
        "reference_stage_robust_accuracy": {s["attack"]: s["robust_accuracy_after"] for s in refs[0]["stages"]},
        "reference_stage_time_s": {
            s["attack"]: statistics.median(r["stages"][i]["time_s"] for r in refs)
            for i, s in enumerate(refs[0]["stages"])
        },
        "reference_deterministic": len({r["robust_accuracy"] for r in refs}) == 1,
        "torchattacks_autoattack_robust_accuracy": m["torchattacks_autoattack"]["robust_accuracy"],
        "torchattacks_autoattack_time_s": m["torchattacks_autoattack"]["time_s"],
        "art_robust_accuracy": m["art_autoattack"]["robust_accuracy"] if m["art_autoattack"] else None,
        "art_time_s": m["art_autoattack"]["time_s"] if m["art_autoattack"] else None,
    }
    sps = [r["sparring"] for r in rounds]
    if not sps[0]["available"]:
        out.update({"sparring_available": False, "sparring_robust_accuracy": None, "sparring_suite_time_s": None,
                    "sparring_eval_total_s": None, "sparring_minus_reference": None,
                    "time_ratio_sparring_vs_reference": None, "time_ratio_sparring_eval_total_vs_reference": None})
        if name == "masked":
            out.update({"masked_flagged_by": None, "masked_abs_diff_vs_reference": None})
        return out
    sp_acc = sps[0]["robust_accuracy"]
    out.update({
        "sparring_available": True,
        "sparring_robust_accuracy": sp_acc,
        "sparring_clean_accuracy": sps[0]["clean_accuracy"],
        "sparring_suite_time_s": statistics.median(s["suite_time_s"] for s in sps),
        "sparring_eval_total_s": statistics.median(s["eval_total_s"] for s in sps),
        "sparring_deterministic": len({s["robust_accuracy"] for s in sps}) == 1,
        "sparring_trustworthy": sps[0]["trustworthy"],
        "sparring_failed_checks": sps[0]["failed_checks"],
        "sparring_stage_robust_accuracy": {st["attack"]: st["robust_accuracy_after"] for st in sps[0]["stages"]},
        "sparring_stage_time_s": {
            st["attack"]: statistics.median(sp["stages"][i]["time_s"] for sp in sps)
            for i, st in enumerate(sps[0]["stages"])
        },
        "sparring_minus_reference": round(sp_acc - ref_acc, 6),  # float32 means: drop the rounding noise
        # median over rounds of the per-round ratio (both sides ran back to back in each round)
        "time_ratio_sparring_vs_reference": statistics.median(
            r["sparring"]["suite_time_s"] / r["reference"]["time_s"] for r in rounds),
        "time_ratio_sparring_eval_total_vs_reference": statistics.median(
            r["sparring"]["eval_total_s"] / r["reference"]["time_s"] for r in rounds),
    })
    if all("original" in r for r in rounds):
        original_acc = rounds[0]["original"]["robust_accuracy"]
        out.update({
            "original_autoattack_robust_accuracy": original_acc,
            "original_autoattack_time_s": statistics.median(r["original"]["time_s"] for r in rounds),
            "sparring_minus_original_autoattack": round(sp_acc - original_acc, 6),
            "time_ratio_sparring_eval_total_vs_original_autoattack": statistics.median(
                r["sparring"]["eval_total_s"] / r["original"]["time_s"] for r in rounds),
        })
    if name == "masked":
        out["masked_flagged_by"] = sps[0]["failed_checks"]
        out["masked_abs_diff_vs_reference"] = round(abs(sp_acc - ref_acc), 6)
        compat = m.get("sparring_aa_square")
        if compat and compat.get("available"):
            out["sparring_with_autoattack_square_draws_robust_accuracy"] = compat["robust_accuracy"]
            out["masked_abs_diff_vs_reference_with_autoattack_square_draws"] = round(
                abs(compat["robust_accuracy"] - ref_acc), 6)
    return out


def acceptance(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's criteria; ``passed`` is None where a figure is missing (model not run, sparring unavailable)."""
    def crit(value: Any, threshold: float, ok: bool | None) -> dict[str, Any]:
        return {"value": value, "threshold": threshold, "passed": ok}

    criteria: dict[str, Any] = {}
    for name, s in summary.items():
        gap = s.get("sparring_minus_reference")
        criteria[f"{name}.sparring_minus_reference<=0.005"] = crit(
            gap, MAX_GAP, None if gap is None else gap <= MAX_GAP)
    if "pgd_at" in summary:
        ratio = summary["pgd_at"].get("time_ratio_sparring_vs_reference")
        criteria["pgd_at.time_ratio_sparring_vs_reference<=0.5"] = crit(
            ratio, MAX_TIME_RATIO, None if ratio is None else ratio <= MAX_TIME_RATIO)
    if "masked" in summary:
        masked = summary["masked"]
        diff, flagged = masked.get("masked_abs_diff_vs_reference"), masked.get("masked_flagged_by")
        criteria["masked.masked_abs_diff_vs_reference<=0.02"] = crit(
            diff, MAX_MASKED_DIFF, None if diff is None else diff <= MAX_MASKED_DIFF)
        criteria["masked.masked_flagged_by_nonempty"] = {
            "value": flagged, "passed": None if flagged is None else len(flagged) > 0}
    verdicts = [c["passed"] for c in criteria.values()]
    return {"criteria": criteria, "all_passed": None if None in verdicts else all(verdicts)}


# ------------------------------------------------------------------------------------------- printing
def fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: dict[str, dict[str, Any]], acc: dict[str, Any]) -> None:
    header = f"{'model':<10}{'evaluation':<26}{'robust acc':>12}{'time s':>10}  notes"
    print(header)
    print("-" * (len(header) + 30))
    for name, s in summary.items():
        print(f"{name:<10}{'clean':<26}{fmt(s['clean_accuracy']):>12}")
        stages = " → ".join(f"{k} {v:.4f}" for k, v in s["reference_stage_robust_accuracy"].items())
        print(f"{'':<10}{'reference (AA, 100 steps)':<26}{fmt(s['reference_robust_accuracy']):>12}"
              f"{fmt(s['reference_time_s'], '.1f'):>10}  {stages}")
        times = ", ".join(f"{k} {v:.1f} s" for k, v in s["reference_stage_time_s"].items())
        print(f"{'':<10}{'':<26}{'':>12}{'':>10}  stage times: {times}")
        if s["sparring_available"]:
            note = (f"minus reference {s['sparring_minus_reference']:+.4f}, time ratio "
                    f"{s['time_ratio_sparring_vs_reference']:.3f} (total eval {s['sparring_eval_total_s']:.1f} s), "
                    f"trustworthy {s['sparring_trustworthy']}, failed checks {s['sparring_failed_checks']}")
            print(f"{'':<10}{'sparring standard suite':<26}{fmt(s['sparring_robust_accuracy']):>12}"
                  f"{fmt(s['sparring_suite_time_s'], '.1f'):>10}  {note}")
            times = ", ".join(f"{k} {v:.1f} s" for k, v in s["sparring_stage_time_s"].items())
            print(f"{'':<10}{'':<26}{'':>12}{'':>10}  stage times: {times}")
            if "sparring_with_autoattack_square_draws_robust_accuracy" in s:
                print(f"{'':<10}{'sparring, AA Square draws':<26}"
                      f"{fmt(s['sparring_with_autoattack_square_draws_robust_accuracy']):>12}{'':>10}  diagnostic: "
                      "Square with one window/sign per batch, never the last position (AutoAttack's port)")
        else:
            print(f"{'':<10}{'sparring standard suite':<26}{'-':>12}{'-':>10}  sparring suite not available yet")
        if "original_autoattack_robust_accuracy" in s:
            print(f"{'':<10}{'original AutoAttack':<26}{fmt(s['original_autoattack_robust_accuracy']):>12}"
                  f"{fmt(s['original_autoattack_time_s'], '.1f'):>10}  fra31/auto-attack, standard; sparring eval "
                  f"total / it: {s['time_ratio_sparring_eval_total_vs_original_autoattack']:.3f}, sparring minus it "
                  f"{s['sparring_minus_original_autoattack']:+.4f}")
        print(f"{'':<10}{'torchattacks AutoAttack':<26}{fmt(s['torchattacks_autoattack_robust_accuracy']):>12}"
              f"{fmt(s['torchattacks_autoattack_time_s'], '.1f'):>10}  as shipped (10 APGD/FAB steps)")
        art_note = "skipped (--skip-art)" if s["art_robust_accuracy"] is None else "default attack list"
        print(f"{'':<10}{'ART AutoAttack':<26}{fmt(s['art_robust_accuracy']):>12}{fmt(s['art_time_s'], '.1f'):>10}"
              f"  {art_note}")
    print()
    for key, c in acc["criteria"].items():
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["passed"]]
        print(f"{verdict:<5} {key}: {c['value']}")
    print(f"all acceptance criteria passed: {acc['all_passed']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models (default: all)")
    parser.add_argument("--eps", type=float, default=0.2, help="L-inf radius (default 0.2)")
    parser.add_argument("--n", type=int, default=None, help="first N test points (default: all 451)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds alternating sparring and the reference (default 1; use 3+ for timings)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    parser.add_argument("--skip-art", action="store_true", help="leave out ART's AutoAttack")
    parser.add_argument("--no-eps-curve", dest="eps_curve", action="store_false",
                        help="sparring without its default 9-point ε-curve (the suite and checks only)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached weights")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    output = args.output or RESULTS / "eval_vs_reference.json"

    started = time.perf_counter()
    train, test = load_data("digits")
    x, y = test.x, test.y
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    log(f"digits: {len(train.y)} train, {len(test.y)} test; evaluating {len(y)} points at L-inf eps = {args.eps}")

    base: dict[str, nn.Module] = {}
    training: dict[str, dict] = {}
    needed = {"standard" if m == "masked" else m for m in args.models}
    for kind in ("standard", "pgd_at"):
        if kind in needed:
            base[kind], training[kind] = train_demo_model(kind, train, test, args.eps, args.retrain)
    models = {m: frozen(BitDepthReduction(base["standard"]) if m == "masked" else base[m]) for m in args.models}
    for p in (p for m in models.values() for p in m.parameters()):
        p.requires_grad_(True)  # as a user holds them

    summary: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    part_times: dict[str, float] = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        clean = (predict(model, x) == y).sum().item() / len(y)
        log(f"[{name}] clean accuracy {clean:.4f}")
        m = measure_model(name, model, x, y, args)
        part_times[name] = time.perf_counter() - t0
        summary[name] = model_summary(name, clean, m)
        if name == "masked":
            summary[name]["input_gradient_abs_max"] = input_gradient_abs_max(model, x, y)
        for r in m["rounds"]:
            ref = {k: v for k, v in r["reference"].items() if k != "robust"}
            rows.append({"model": name, "implementation": "reference", "round": r["round"], "order": r["order"], **ref})
            rows.append({"model": name, "implementation": "sparring", "round": r["round"], "order": r["order"],
                         **r["sparring"]})
        rows += [{"model": name, "implementation": "original_autoattack", "round": r["round"], **r["original"]}
                 for r in m["rounds"] if "original" in r]
        rows.append({"model": name, "implementation": "torchattacks_autoattack", **m["torchattacks_autoattack"]})
        if m["art_autoattack"] is not None:
            rows.append({"model": name, "implementation": "art_autoattack", **m["art_autoattack"]})

    acc = acceptance(summary)
    try:
        import art

        art_version = getattr(art, "__version__", "?")
    except ImportError:
        art_version = "not installed"
    report = {
        "summary": {
            **summary, "acceptance": acc, "eps": args.eps, "n_points": len(y), "threads": args.threads,
            "repeats": args.repeats,
            "statistic": "times: median over rounds; time_ratio_*: median of per-round ratios (sparring and the "
                         "reference alternate, order flipped every round); torchattacks/ART: one run",
        },
        "environment": environment(torchattacks=getattr(torchattacks, "__version__", "?"),
                                   art=art_version),
        "settings": {
            "threat": f"Linf eps={args.eps}, box [0, 1]", "data": "digits test split (sparring.data.load_data)",
            "seed": args.seed, "skip_art": args.skip_art,
            "reference": f"cascade APGD-CE ({REF_STEPS} steps) → APGD-T (9 targets x {REF_STEPS}) → FAB-T "
                         f"(9 targets x {REF_STEPS}) → Square ({SQUARE_QUERIES} queries, p_init 0.8); torchattacks "
                         "classes; successes checked finite, in [0, 1] and within eps",
            "torchattacks_autoattack": "torchattacks.AutoAttack(norm='Linf', version='standard', n_classes=10, "
                                       "seed) as shipped (APGD / APGD-T / FAB-T at 10 steps)",
            "art_autoattack": "art AutoAttack default attacks, eps_step = 2 eps, batch_size 500",
            "sparring": "evaluate(model, (x, y), LinfBall(eps), suite='standard', seed, batch_size=512)"
                        + ("" if args.eps_curve else ", eps_curve=[]"),
            "masked_model": f"standard CNN on round({BIT_LEVELS} x) / {BIT_LEVELS}",
            "training": training, "part_times_s": part_times, "total_s": time.perf_counter() - started,
        },
        "rows": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(summary, acc)
    print(f"\nwrote {output} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
