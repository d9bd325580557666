"""Helpers shared by the benchmark scripts: the environment record, the hand-written PGD baseline and the demo's
two digits CNNs (trained once, cached in ``benchmarks/.cache/``)."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

import sparring
from sparring import LinfBall, Trainer
from sparring.config import RunConfig, load_config
from sparring.experiment import demo_config_path
from sparring.models import build_model
from sparring.runtime.checkpoint import load_weights, save_weights

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(**versions: str) -> dict[str, Any]:
    """Python / torch / sparring versions (plus ``versions``), threads, device and CPU model."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(), "torch": torch.__version__, **versions,
        "sparring": sparring.__version__, "threads": torch.get_num_threads(), "device": "cpu", "cpu": cpu,
        "platform": platform.platform(),
    }


def minimal_pgd(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float, steps: int, gen: torch.Generator
) -> Tensor:
    """The textbook L∞ PGD: uniform random start, ``steps`` sign steps, projection and clamp to [0, 1]."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def train_demo_model(
    kind: str, train: Any, test: Any, eps: float, retrain: bool, *, config: RunConfig | None = None
) -> tuple[nn.Module, dict]:
    """The demo's ``kind`` (``standard`` / ``pgd_at``) small CNN, trained as ``sparring demo`` trains it, or
    loaded from the cache when it was trained with the same settings (another ``config`` trains that instead)."""
    config = config or load_config(demo_config_path(kind))
    objective = config.build_objective()
    train_cfg = config.build_train()
    train_cfg.progress = False
    settings = {
        "model": config.model.name, "objective": objective.describe(), "seed": config.seed,
        "train": {k: v for k, v in vars(train_cfg).items() if k != "progress"},
        "data": {"source": "digits", "n_train": len(train.y), "n_test": len(test.y)},
    }
    key = json.dumps(settings, sort_keys=True, default=str)
    path = CACHE / f"digits_small_cnn_{kind}.safetensors"
    torch.manual_seed(config.seed)  # weight initialisation is part of the run's seed, as in the demo
    model = build_model(config.model.name, input_shape=train.input_shape, num_classes=train.num_classes)
    if path.is_file() and not retrain:
        with safe_open(str(path), "pt") as f:
            cached = (f.metadata() or {}).get("settings")
        if cached == key:
            load_weights(model, path)
            model.eval()
            log(f"[{kind}] loaded cached weights {path.relative_to(HERE.parent)}")
            return model, {"cached": True, "path": str(path.relative_to(HERE.parent)), **settings}
        log(f"[{kind}] cached weights were trained with other settings; retraining")
    log(f"[{kind}] training ({train_cfg.epochs} epochs, objective {objective.name})")
    trainer = Trainer(
        model=model, objective=objective, train=(train.x, train.y), val=(test.x, test.y), config=train_cfg,
        val_threat=LinfBall(eps=eps),
    )
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    model = trainer.accelerator.unwrap_model(trainer.model).cpu().eval()
    save_weights(model, path, metadata={"settings": key})
    log(f"[{kind}] trained in {seconds:.1f} s, cached to {path.relative_to(HERE.parent)}")
    return model, {"cached": False, "train_s": round(seconds, 2), "path": str(path.relative_to(HERE.parent)),
                   **settings}
