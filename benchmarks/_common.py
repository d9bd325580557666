"""Helpers shared by the benchmark scripts: the environment record and the hand-written PGD baseline."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparring


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
