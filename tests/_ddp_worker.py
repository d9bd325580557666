"""A small PGD-AT run for the multi-process tests: launched with ``torchrun --nproc-per-node N`` or plainly.

``python tests/_ddp_worker.py OUT EPOCHS [--resume]`` trains an MLP (no BatchNorm, no dropout) with PGD-AT from
a fixed start (no random start) on fixed synthetic data, global batch 32, in the run folder OUT (checkpoints,
metrics.jsonl); the main process then writes ``OUT/final.safetensors`` and ``OUT/history.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sparring import LinfBall, Trainer
from sparring.attacks import PGD
from sparring.objectives import PGDAT
from sparring.train import TrainConfig


def main() -> None:
    out, epochs, resume = Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 16, generator=g)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long() + 2 * (x[:, 0] > 0.5).long()  # 4 classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    objective = PGDAT(threat=LinfBall(eps=0.05), attack=PGD(steps=3, random_start=False, keep_best=False,
                                                             score=False))
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, schedule="constant", cpu=True, progress=False,
                         weight_decay=0.0)
    trainer = Trainer(model=model, objective=objective, train=(x, y), val=(x[:64], y[:64]), config=config,
                      out_dir=out)
    result = trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process:
        weights = {k: v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
        save_file(weights, str(out / "final.safetensors"))
        (out / "history.json").write_text(json.dumps(result.history))


if __name__ == "__main__":
    main()
