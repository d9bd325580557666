"""Multi-process training: 2 CPU processes (torchrun, gloo) against 1 process with the same global batch.

The worker (``tests/_ddp_worker.py``) trains an MLP with PGD-AT from a fixed start, so the maths allows exact
agreement: DDP averages the two shards' gradients, which is the gradient of the whole batch. A run can also
resume from a checkpoint written with another process count, since the batch size is global.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("_ddp_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(out: Path, epochs: int, *, processes: int = 1, resume: bool = False) -> None:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command = [*launcher, str(WORKER), str(out), str(epochs), *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    folders = {name: root / name for name in ("one", "two", "mixed")}
    run(folders["one"], 3)
    run(folders["two"], 3, processes=2)
    run(folders["mixed"], 2, processes=2)  # killed after 2 of 3 epochs, then resumed by a single process
    run(folders["mixed"], 3, resume=True)
    return folders


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "final.safetensors"))


def test_two_processes_give_the_single_process_weights_and_metrics(runs) -> None:
    one, two = weights(runs["one"]), weights(runs["two"])
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5)
    h1 = json.loads((runs["one"] / "history.json").read_text())
    h2 = json.loads((runs["two"] / "history.json").read_text())
    for a, b in zip(h1, h2, strict=True):  # training metrics are summed over both processes' shards
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_accuracy"] == a["train_accuracy"]
        assert b["val_robust_accuracy"] == a["val_robust_accuracy"]


def test_only_the_main_process_writes(runs) -> None:
    lines = (runs["two"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]  # once, not once per process
    assert (runs["two"] / "checkpoints" / "latest.json").is_file()


def test_a_run_resumes_with_another_process_count(runs) -> None:
    one, mixed = weights(runs["one"]), weights(runs["mixed"])
    for name in one:
        torch.testing.assert_close(mixed[name], one[name], atol=1e-6, rtol=1e-5)
    lines = (runs["mixed"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_a_recommender_trains_on_two_processes_as_on_one(tmp_path) -> None:
    """Recommenders train on the core Trainer, so `torchrun` runs them too: BPR with the regularizer hook on 2
    processes (each batch split in halves) ends with the single process's weights."""
    import yaml
    from test_recsys_run import tiny

    raw = tiny(objective={"name": "standard"}, train={"epochs": 2, "batch_size": 72})  # 360 pairs: 5 even batches
    raw["eval"] = {"ks": [5], "promotion": None}
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, processes in (("one", 1), ("two", 2)):
        launcher = [sys.executable] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
        command = [*launcher, "-m", "sparring.cli", "run", str(tmp_path / "rec.yaml"), "--out",
                   str(tmp_path / name), "-q"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "checkpoints" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "model.safetensors"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
