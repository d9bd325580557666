"""Fault injection: runs killed at random moments, state files corrupted, two starts on one output.

Real ``sparring`` processes (the installed entry point) are SIGKILLed at a moment drawn from a seeded generator
once they have shown progress (training: a first metrics line; evaluation and attack generation: a first batch
record), some of their state files are then corrupted (a truncated evaluation record, a garbage attack batch, a
truncated ``latest.json``), and the same command is run again. Every output must equal an uninterrupted run's,
bit for bit where the claim is bit-exact. Two evaluations started at once on one folder must not both write it:
one waits its turn by refusing in one line, or comes after and resumes. ``SPARRING_FAULT_SEED`` picks other
moments (default 0); the seed is in every failure message.

Two waves of concurrent processes keep the file near half a minute on two quiet cores.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file
from test_cli import SPARRING, TIMEOUT_S, Result

SEED = int(os.environ.get("SPARRING_FAULT_SEED", "0"))

CONFIG = """\
name: victim
seed: 0
data: {source: digits}
model: {name: mlp, hidden: [32]}
objective: {name: pgd_at, threat: {norm: linf, eps: 0.1}, attack: {name: pgd, steps: 3}}
train: {epochs: 30, batch_size: 128, optimizer: adam, lr: 0.01, weight_decay: 0.0, schedule: constant,
        val_size: 64, val_attack_steps: 2}
"""

FACTORY = """\
import torch
from sparring.data import load_data
from sparring.models import build_model


def make():  # a quickly trained MLP (the same weights in every process: seeded, one thread)
    torch.manual_seed(3)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))
    train, _ = load_data("digits")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(60):
        rows = torch.arange(step * 64, step * 64 + 64) % len(train)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x[rows]), train.y[rows]).backward()
        opt.step()
    return model.eval()
"""

EVAL = ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--suite", "fast",
        "--batch-size", "32", "--max-samples", "256", "--eps-curve", "0,0.05,0.1", "-q"]
ATTACK = ["attack", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--attack", "apgd",
          "--batch-size", "32", "-q"]


class Processes:
    """``sparring`` commands started together; some are killed once ``ready()`` holds, after a seeded delay."""

    def __init__(self, cwd: Path, rng: random.Random) -> None:
        self.cwd, self.rng = cwd, rng
        self.running: dict[str, tuple[list[str], subprocess.Popen[bytes], threading.Thread | None]] = {}
        self.delays: dict[str, float] = {}

    def start(self, name: str, *args: str, kill_when: Callable[[], bool] | None = None, within: float = 1.0) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out, err = (self.cwd / f".{name}.{kind}" for kind in ("stdout", "stderr"))
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen([SPARRING, *args], cwd=self.cwd, stdout=fo, stderr=fe, env=env)
        killer = None
        if kill_when is not None:
            delay = self.delays[name] = self.rng.uniform(0.0, within)
            killer = threading.Thread(target=_kill_later, args=(proc, kill_when, delay), daemon=True)
            killer.start()
        self.running[name] = (list(args), proc, killer)

    def wait(self) -> dict[str, Result]:
        results = {}
        for name, (args, proc, killer) in self.running.items():
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if killer is not None:
                killer.join()
            out, err = (self.cwd / f".{name}.{kind}" for kind in ("stdout", "stderr"))
            results[name] = Result(args, proc.returncode, out.read_text(), err.read_text())
        self.running = {}
        return results


def _kill_later(proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float) -> None:
    while proc.poll() is None and not ready():
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _batches(folder: Path, pattern: str) -> bool:
    return folder.is_dir() and any(folder.glob(pattern))


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> dict[str, Any]:
    assert SPARRING is not None
    work = tmp_path_factory.mktemp("faults")
    (work / "cfg.yaml").write_text(CONFIG)
    (work / "factory.py").write_text(FACTORY)
    rng = random.Random(SEED)

    wave = Processes(work, rng)  # wave 1: uninterrupted references beside the victims, killed mid-work
    wave.start("train_ref", "train", "cfg.yaml", "--out", "train_ref", "-q")
    wave.start("train", "train", "cfg.yaml", "--out", "train", "-q",
               kill_when=lambda: _lines(work / "train" / "metrics.jsonl") >= 1, within=2.0)
    wave.start("eval_ref", *EVAL, "--out", "eval_ref")
    wave.start("eval", *EVAL, "--out", "eval", kill_when=lambda: _batches(work / "eval" / "eval_state", "batch-*"),
               within=0.6)
    wave.start("attack_ref", *ATTACK, "--out", "attack_ref.npz")
    wave.start("attack", *ATTACK, "--out", "attack.npz",
               kill_when=lambda: _batches(work / "attack.state", "batch-*"), within=0.8)
    first = wave.wait()
    corrupted = _corrupt(work, rng)

    wave.start("train_resume", "train", "cfg.yaml", "--out", "train", "--resume", "-q")
    wave.start("eval_again", *EVAL, "--out", "eval")
    wave.start("attack_again", *ATTACK, "--out", "attack.npz")
    wave.start("both_a", *EVAL, "--out", "both")  # two starts on one output at the same moment
    wave.start("both_b", *EVAL, "--out", "both")
    second = wave.wait()
    return {"work": work, "first": first, "second": second, "delays": wave.delays, "corrupted": corrupted}


def _corrupt(work: Path, rng: random.Random) -> list[str]:
    """Damage one state file of each killed run, chosen by the seeded generator."""
    damaged = []
    records = sorted((work / "eval" / "eval_state").glob("batch-*.json"))
    if records:
        record = rng.choice(records)
        record.write_bytes(record.read_bytes()[: rng.randrange(1, max(2, record.stat().st_size))])
        damaged.append(str(record.relative_to(work)))
    parts = sorted((work / "attack.state").glob("batch-*.npz"))
    if parts:
        part = rng.choice(parts)
        part.write_bytes(bytes(rng.randrange(256) for _ in range(64)))
        damaged.append(str(part.relative_to(work)))
    pointer = work / "train" / "checkpoints" / "latest.json"
    if pointer.is_file():
        pointer.write_bytes(pointer.read_bytes()[: rng.randrange(0, max(1, pointer.stat().st_size))])
        damaged.append(str(pointer.relative_to(work)))
    return damaged


def _context(faults: dict[str, Any], *names: str) -> str:
    results = {**faults["first"], **faults["second"]}
    shown = "\n".join(str(results[n]) for n in names if n in results)
    return f"SPARRING_FAULT_SEED={SEED}, kill delays {faults['delays']}, corrupted {faults['corrupted']}\n{shown}"


def _report(folder: Path) -> dict[str, Any]:
    report = json.loads((folder / "report.json").read_text())
    return {k: report[k] for k in ("clean_accuracy", "robust_accuracy", "eps_curve", "per_class")}


def test_references_ran_and_victims_were_killed_mid_work(faults) -> None:
    first = faults["first"]
    for name in ("train_ref", "eval_ref", "attack_ref"):
        assert first[name].returncode == 0, _context(faults, name)
    for name in ("train", "eval", "attack"):  # killed (or, rarely, done before its moment came: still checked)
        assert first[name].returncode in (-signal.SIGKILL, 0), _context(faults, name)
    victims = ("train", "eval", "attack")
    assert any(first[n].returncode == -signal.SIGKILL for n in victims), _context(faults, *victims)


def test_training_killed_at_a_random_moment_resumes_to_the_same_weights(faults) -> None:
    work, resumed = faults["work"], faults["second"]["train_resume"]
    assert resumed.returncode == 0, _context(faults, "train", "train_resume")
    ref = load_file(str(work / "train_ref" / "checkpoints" / "model.safetensors"))
    got = load_file(str(work / "train" / "checkpoints" / "model.safetensors"))
    assert ref.keys() == got.keys()
    for key in ref:  # bit-exact: all randomness derives from (seed, epoch)
        assert np.array_equal(ref[key].numpy(), got[key].numpy()), _context(faults, "train", "train_resume")
    ref_metrics = [json.loads(line) for line in (work / "train_ref" / "metrics.jsonl").read_text().splitlines()]
    got_metrics = [json.loads(line) for line in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    strip = ("time_s", "epoch_s", "examples_per_s", "lr_time")
    assert [{k: v for k, v in m.items() if k not in strip and not k.endswith("_s")} for m in got_metrics] == [
        {k: v for k, v in m.items() if k not in strip and not k.endswith("_s")} for m in ref_metrics]


def test_evaluation_killed_and_corrupted_gives_the_same_numbers(faults) -> None:
    work, again = faults["work"], faults["second"]["eval_again"]
    assert again.returncode == 0, _context(faults, "eval", "eval_again")
    assert _report(work / "eval") == _report(work / "eval_ref"), _context(faults, "eval", "eval_again")
    assert not (work / "eval" / ".sparring-lock").exists()


def test_attack_generation_killed_and_corrupted_writes_the_same_file(faults) -> None:
    work, again = faults["work"], faults["second"]["attack_again"]
    assert again.returncode == 0, _context(faults, "attack", "attack_again")
    with np.load(work / "attack.npz") as got, np.load(work / "attack_ref.npz") as ref:
        for key in ("x_adv", "y", "success", "loss"):
            assert np.array_equal(got[key], ref[key]), (key, _context(faults, "attack", "attack_again"))
    assert not (work / "attack.state").exists() and not (work / "attack.npz.lock").exists()


def test_two_starts_on_one_output_never_write_it_together(faults) -> None:
    work = faults["work"]
    a, b = faults["second"]["both_a"], faults["second"]["both_b"]
    codes = sorted((a.returncode, b.returncode))
    assert codes in ([0, 0], [0, 2]), _context(faults, "both_a", "both_b")
    for result in (a, b):
        assert "Traceback" not in result.stderr, str(result)
        if result.returncode == 2:  # the later one refused while the first held the folder
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "in use by process" in lines[0], str(result)
    assert _report(work / "both") == _report(work / "eval_ref")
    assert not (work / "both" / ".sparring-lock").exists()
