"""Run by tests/test_eval_resume_shard.py under ``torchrun``: a sharded evaluation; rank 0 writes JSON.

Usage: ``torchrun --nproc-per-node 2 _sharded_eval.py WEIGHTS OUT_JSON [STATE_DIR]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _eval_fixtures import EVAL_SETTINGS, digits_points, mlp  # noqa: E402

from sparring.evaluate import evaluate  # noqa: E402
from sparring.runtime.checkpoint import load_weights  # noqa: E402
from sparring.runtime.distributed import world  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    model = mlp()
    load_weights(model, Path(sys.argv[1]))
    state = sys.argv[3] if len(sys.argv) > 3 else None
    ev = evaluate(model.eval(), digits_points(), **EVAL_SETTINGS(), state_dir=state)
    rank, size = world()
    if rank == 0:
        Path(sys.argv[2]).write_text(json.dumps({"world": size, "report": ev.to_dict(),
                                                 "broken_by": ev.broken_by.tolist()}))
