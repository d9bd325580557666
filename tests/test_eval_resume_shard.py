"""Resumable and sharded evaluation: an interrupted or sharded evaluation ends with the same numbers.

The sharded case launches two CPU processes with ``torchrun`` (gloo); the CLI case kills a real
``sparring eval`` mid-way and runs the same command again.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_fixtures import EVAL_SETTINGS, digits_mlp, digits_points

from sparring.errors import RunFolderError
from sparring.evaluate import evaluate
from sparring.runtime.checkpoint import save_weights
from sparring.threat import LinfBall

HERE = Path(__file__).parent
SPARRING = shutil.which("sparring", path=str(Path(sys.executable).parent))


def numbers(report: dict) -> dict:
    """Everything but timings."""
    report = {k: v for k, v in report.items() if k != "timing"}
    report["attacks"] = [{k: v for k, v in row.items() if k != "time_s"} for row in report["attacks"]]
    return report


@pytest.fixture(scope="module")
def problem(single_thread):
    model = digits_mlp()
    x, y = digits_points()
    reference = evaluate(model, (x, y), **EVAL_SETTINGS())
    return model, x, y, reference


class Interrupt(Exception):
    pass


def test_interrupted_evaluation_resumes_with_the_same_numbers(problem, tmp_path, monkeypatch) -> None:
    model, x, y, reference = problem
    state = tmp_path / "state"

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate(model, (x, y), **EVAL_SETTINGS(), state_dir=state, progress=stop_after_two)
    assert sorted(p.name for p in state.glob("batch-*.json")) == ["batch-00000.json", "batch-00001.json"]

    module = importlib.import_module("sparring.evaluate")  # the module (sparring.evaluate is the function)

    computed: list[int] = []
    original = module._evaluate_batch
    monkeypatch.setattr(module, "_evaluate_batch", lambda *a, **k: computed.append(k["batch"]) or original(*a, **k))
    resumed = evaluate(model, (x, y), **EVAL_SETTINGS(), state_dir=state)
    assert computed == [2, 3, 4]  # the two finished batches were read back, not recomputed
    assert numbers(resumed.to_dict()) == numbers(reference.to_dict())
    assert torch.equal(resumed.broken_by, reference.broken_by)
    assert torch.equal(resumed.examples["adv"], reference.examples["adv"])


def test_state_of_another_evaluation_is_refused(problem, tmp_path) -> None:
    model, x, y, _ = problem
    state = tmp_path / "state"
    settings = EVAL_SETTINGS()
    evaluate(model, (x[:20], y[:20]), **settings, state_dir=state)
    settings["threat"] = LinfBall(eps=0.2)
    with pytest.raises(RunFolderError, match="different run"):
        evaluate(model, (x[:20], y[:20]), **settings, state_dir=state)
    fresh = evaluate(model, (x[:20], y[:20]), **settings, state_dir=state, fresh=True)
    assert fresh.threat.eps == 0.2


def test_two_process_sharded_evaluation_equals_one_process(problem, tmp_path) -> None:
    model, x, y, reference = problem
    save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "sharded.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29500 + os.getpid() % 1000), str(HERE / "_sharded_eval.py"), str(tmp_path / "w.safetensors"),
               str(out), str(tmp_path / "state")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(out.read_text())
    assert sharded["world"] == 2
    assert numbers(sharded["report"]) == numbers(json.loads(json.dumps(reference.to_dict())))
    assert sharded["broken_by"] == reference.broken_by.tolist()
    # each rank wrote its own batches into the shared state: a single process resumes it without work
    assert len(list((tmp_path / "state").glob("batch-*.json"))) == 5


FACTORY = """\
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def test_cli_eval_killed_and_run_again_resumes(problem, tmp_path) -> None:
    """A new user's run: MODULE:FACTORY + safetensors + .npz; killed mid-way, the same command continues."""
    assert SPARRING is not None
    model, x, y, _ = problem
    (tmp_path / "factory.py").write_text(FACTORY)
    save_weights(model, tmp_path / "w.safetensors")
    np.savez(tmp_path / "points.npz", x=x[:60].numpy(), y=y[:60].numpy())
    args = [SPARRING, "eval", "--model", "factory.py:make", "--checkpoint", "w.safetensors", "--data", "points.npz",
            "--eps", "0.1", "--suite", "fast", "--batch-size", "4", "--eps-curve", "0,0.1,0.2", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args, "--out", out], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=240)

    whole = run("whole")
    assert whole.returncode == 0, whole.stderr

    proc = subprocess.Popen([*args, "--out", "killed"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "eval_state"
    deadline = time.monotonic() + 120
    while not list(state.glob("batch-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(state.glob("batch-*.json")))
    assert 1 <= done_before < 15, "the run was not interrupted mid-way"
    assert not (tmp_path / "killed" / "report.json").exists()

    again = run("killed")
    assert again.returncode == 0, again.stderr
    first = json.loads((tmp_path / "whole" / "report.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert first["n_samples"] == 60  # the whole .npz file is evaluated
    for key in ("clean_accuracy", "robust_accuracy", "eps_curve", "checks", "per_class"):
        assert resumed[key] == first[key], key
