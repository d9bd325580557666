"""Run folders are sparring's by their marker, ``--overwrite`` deletes only what sparring wrote, one process per
output (the lock), and state sparring wrote is validated when read back (a bad record is recomputed)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_fixtures import EVAL_SETTINGS, digits_mlp, digits_points
from test_cli import CONFIG, one_error_line, run_main, snapshot

from sparring.attacks import FGSM, PGD
from sparring.errors import RunFolderError
from sparring.evaluate import evaluate
from sparring.experiment import check_run_dir, claim_run_dir, prepare_run_dir
from sparring.generate import generate
from sparring.runtime.run_folder import LOCK, MARKER, FolderInUseError, RunFolder, folder_lock, output_lock
from sparring.threat import LinfBall

FACTORY = """\
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""
EVAL = ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--suite", "fast", "--max-samples",
        "16", "--eps-curve", "0", "-q"]
ATTACK = ["attack", "--model", "factory.py:make", "--data", "digits", "--attack", "fgsm", "--eps", "0.1", "-q"]
HOLD = """\
import sys, time
from sparring.runtime.run_folder import folder_lock, output_lock
with (output_lock if sys.argv[1] == "file" else folder_lock)(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "factory.py").write_text(FACTORY)
    (tmp_path / "cfg.yaml").write_text(CONFIG.replace("EPOCHS", "1"))
    return tmp_path


def holder(kind: str, target: Path) -> subprocess.Popen[str]:
    """Another process holding the lock of ``target`` (a folder, or an output ``file``) until it is killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(target)], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


class Stop(Exception):
    pass


def numbers(report: dict) -> dict:
    """Everything but timings."""
    report = {k: v for k, v in report.items() if k != "timing"}
    report["attacks"] = [{k: v for k, v in row.items() if k != "time_s"} for row in report["attacks"]]
    return report


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- the marker and --overwrite
def test_overwrite_refuses_a_folder_without_the_marker_and_touches_nothing(work, monkeypatch, capsys, single_thread):
    mine = work / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own config\n")  # a run file's name does not make the folder sparring's
    (mine / "precious.txt").write_bytes(b"years of work\n")
    before = snapshot(mine)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main(["run", "cfg.yaml", "--out", "mine", "-q", *extra], work, monkeypatch, capsys)
        assert code == 2
        line = one_error_line(err)
        assert "mine was not created by sparring (no .sparring-run.json)" in line and "--out" in line
        assert snapshot(mine) == before  # same bytes, same mtimes, and no lock or marker left behind
        assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "precious.txt"]


def test_overwrite_replaces_sparrings_files_and_keeps_the_users(work, monkeypatch, capsys, caplog, single_thread):
    code, _, err = run_main([*EVAL, "--out", "ev"], work, monkeypatch, capsys)
    assert code == 0, err
    folder = work / "ev"
    first = json.loads((folder / MARKER).read_text())
    assert first["kind"] == "eval" and len(first["run_id"]) == 32 and not (folder / LOCK).exists()
    (folder / "notes.md").write_text("what I think of this model\n")
    (folder / "report.json").write_text("stale")
    code, _, err = run_main([*EVAL, "--out", "ev", "--overwrite"], work, monkeypatch, capsys)
    assert code == 0, err
    assert (folder / "notes.md").read_text() == "what I think of this model\n"
    assert json.loads((folder / "report.json").read_text())["n_samples"] == 16
    assert json.loads((folder / MARKER).read_text())["run_id"] != first["run_id"]
    assert any("notes.md" in r.getMessage() and "did not write" in r.getMessage() for r in caplog.records)


def test_clear_ours_deletes_only_known_names_recursively(tmp_path):
    run = RunFolder.create(tmp_path / "demo" / "standard", kind="run").path
    state = RunFolder.create(run / "eval_state", kind="state").path
    RunFolder.create(tmp_path / "demo", kind="demo")
    for name in ("config.yaml", "report.json", "metrics.jsonl", ".report.json.0a1b2c.tmp"):
        (run / name).write_text("ours")
    (run / "checkpoints" / "epoch-1").mkdir(parents=True)
    (run / "checkpoints" / "epoch-1" / "model.safetensors").write_text("ours")
    (state / "manifest.json").write_text("{}")
    (state / "batch-00000.json").write_text("{}")
    (state / "mine.txt").write_text("user")  # inside sparring's state folder: kept, and so is the folder
    (run / "analysis.ipynb").write_text("user")
    (tmp_path / "demo" / "comparison.html").write_text("ours")
    (tmp_path / "demo" / "README").write_text("user")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("user")
    (run / "trackers").symlink_to(outside, target_is_directory=True)  # a link is removed, never what it points to

    kept = RunFolder(tmp_path / "demo").clear_ours()

    assert sorted(kept) == ["README", "standard/analysis.ipynb", "standard/eval_state/mine.txt"]
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["demo", "demo/.sparring-run.json", "demo/README", "demo/standard", "demo/standard/analysis.ipynb",
                    "demo/standard/eval_state", "demo/standard/eval_state/mine.txt", "elsewhere",
                    "elsewhere/keep.txt"]


def test_demo_folder_is_recognised_by_its_marker_not_by_comparison_html(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "comparison.html").write_text("mine")  # the old rule took this for a demo folder
    with pytest.raises(RunFolderError, match="was not created by sparring"), \
            claim_run_dir(folder, kind="demo", overwrite=True):
        pass
    assert [p.name for p in folder.iterdir()] == ["comparison.html"]
    RunFolder.create(folder, kind="demo")
    with claim_run_dir(folder, kind="demo", overwrite=True) as out:
        assert (out / LOCK).exists() and not (out / "comparison.html").exists()
    assert json.loads((folder / MARKER).read_text())["kind"] == "demo" and not (folder / LOCK).exists()


def test_resume_accepts_a_folder_of_an_older_sparring_and_marks_it(tmp_path, caplog):
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "latest.json").write_text('{"checkpoint": "epoch-1", "epoch": 1}')
    (old / "config.yaml").write_text("name: old\n")
    with pytest.raises(RunFolderError, match="was not created by sparring"):
        check_run_dir(old)  # a new run, or --overwrite, still refuses it
    assert prepare_run_dir(old, resume=True) == old
    assert json.loads((old / MARKER).read_text())["kind"] == "run"
    assert any("older sparring" in r.getMessage() for r in caplog.records)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "checkpoints").mkdir()  # a checkpoints/ folder, but nothing sparring wrote
    with pytest.raises(RunFolderError, match="was not created by sparring"):
        check_run_dir(stranger, resume=True)
    with pytest.raises(RunFolderError, match="has no checkpoints/ folder"):
        prepare_run_dir(tmp_path / "empty", resume=True)
    killed = RunFolder.create(tmp_path / "killed", kind="run").path  # killed before its first checkpoint
    assert prepare_run_dir(killed, resume=True) == killed  # ours: it starts again from epoch 0


# --------------------------------------------------------------------------- the attack's state folder
def test_attack_refuses_a_foreign_state_folder_and_cleans_its_own(work, monkeypatch, capsys, single_thread):
    foreign = work / "adv.state"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = snapshot(foreign)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main([*ATTACK, "--out", "adv.npz", *extra], work, monkeypatch, capsys)
        assert code == 2
        assert "adv.state was not created by sparring" in one_error_line(err)
        assert snapshot(foreign) == before and [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not (work / "adv.npz").exists() and not (work / "adv.npz.lock").exists()

    code, _, err = run_main([*ATTACK, "--out", "ok.npz"], work, monkeypatch, capsys)
    assert code == 0, err
    assert (work / "ok.npz").is_file() and not (work / "ok.state").exists() and not (work / "ok.npz.lock").exists()


def test_generate_keeps_a_user_file_put_into_its_state_folder(trained_mlp, digits, tmp_path, single_thread):
    _, test = digits
    x, y = test.x[:40], test.y[:40]

    def stop(done: int, total: int) -> None:
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        generate(trained_mlp, (x, y), PGD(steps=2), LinfBall(eps=0.1), tmp_path / "adv.npz", batch_size=16,
                 progress=stop)
    state = tmp_path / "adv.state"
    assert json.loads((state / MARKER).read_text())["kind"] == "state"
    assert not (tmp_path / "adv.npz.lock").exists()  # released on the way out of the exception
    (state / "todo.txt").write_text("user")
    generate(trained_mlp, (x, y), PGD(steps=2), LinfBall(eps=0.1), tmp_path / "adv.npz", batch_size=16)
    assert sorted(p.name for p in state.iterdir()) == ["todo.txt"]


def test_attack_overwrite_replaces_only_its_own_output(trained_mlp, digits, tmp_path, single_thread):
    _, test = digits
    args = (trained_mlp, (test.x[:16], test.y[:16]), FGSM(), LinfBall(eps=0.1))
    mine = tmp_path / "mine.npz"
    np.savez(mine, x=test.x[:16].numpy())  # the user's own archive
    before = mine.read_bytes()
    with pytest.raises(RunFolderError, match="mine.npz was not written by sparring attack"):
        generate(*args, mine, overwrite=True)
    assert mine.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine.npz"]
    generate(*args, tmp_path / "adv.npz")
    assert generate(*args, tmp_path / "adv.npz", overwrite=True).n == 16  # its own output: replaced


# --------------------------------------------------------------------------- the lock
def test_second_eval_on_a_folder_in_use_refuses_then_takes_over_the_stale_lock(work, monkeypatch, capsys, caplog,
                                                                                 single_thread):
    proc = holder("folder", work / "busy")
    try:
        code, _, err = run_main([*EVAL, "--out", "busy"], work, monkeypatch, capsys)
        assert code == 2
        line = one_error_line(err)
        assert f"busy is in use by process {proc.pid} (started " in line and "choose another --out" in line
        code, _, err = run_main([*EVAL, "--out", "busy", "--overwrite"], work, monkeypatch, capsys)
        assert code == 2 and f"in use by process {proc.pid}" in one_error_line(err)
        assert sorted(p.name for p in (work / "busy").iterdir()) == [LOCK]  # nothing written beside the holder
    finally:
        proc.kill()  # SIGKILL: no clean-up runs, the lock stays behind with a dead pid
        proc.wait()
    assert json.loads((work / "busy" / LOCK).read_text())["pid"] == proc.pid
    code, _, err = run_main([*EVAL, "--out", "busy"], work, monkeypatch, capsys)
    assert code == 0, err
    assert (work / "busy" / "report.json").is_file() and not (work / "busy" / LOCK).exists()
    assert any("taking over" in r.getMessage() and str(proc.pid) in r.getMessage() for r in caplog.records)


def test_second_attack_on_an_output_in_use_refuses(work, monkeypatch, capsys, single_thread):
    proc = holder("file", work / "adv.npz")
    try:
        code, _, err = run_main([*ATTACK, "--out", "adv.npz"], work, monkeypatch, capsys)
        assert code == 2 and f"adv.npz is in use by process {proc.pid}" in one_error_line(err)
        assert not (work / "adv.npz").exists() and not (work / "adv.state").exists()
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    lock = tmp_path / "run" / LOCK
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started_at": "yesterday"}))
    with folder_lock(tmp_path / "run"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_of_another_host_or_unreadable_counts_as_held(tmp_path):
    lock = tmp_path / "run" / LOCK
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": dead_pid(), "host": "elsewhere.example", "started_at": "today"}))
    with pytest.raises(FolderInUseError, match="on elsewhere.example"), folder_lock(tmp_path / "run"):
        pass
    lock.write_text("not a lock")  # never deleted: it may be someone's file
    with pytest.raises(FolderInUseError, match="not a readable sparring lock"), folder_lock(tmp_path / "run"):
        pass
    assert lock.read_text() == "not a lock"


def test_lock_is_released_on_an_exception_and_held_by_rank_0_only(tmp_path, monkeypatch):
    with pytest.raises(ZeroDivisionError), output_lock(tmp_path / "adv.npz"):
        assert (tmp_path / "adv.npz.lock").exists()
        1 / 0  # noqa: B018
    assert not (tmp_path / "adv.npz.lock").exists()
    with folder_lock(tmp_path / "a"), pytest.raises(FolderInUseError, match=f"process {os.getpid()}"), \
            folder_lock(tmp_path / "a"):
        pass  # the same process, twice: the second refuses
    assert not (tmp_path / "a").exists()  # made by the lock, empty at the end: removed again
    monkeypatch.setattr("sparring.runtime.distributed.is_main_process", lambda: False)
    with folder_lock(tmp_path / "b"):
        assert not (tmp_path / "b").exists()  # another rank: no lock (rank 0 holds it)


# --------------------------------------------------------------------------- reading state back
@pytest.fixture(scope="module")
def problem(single_thread):
    model = digits_mlp()
    x, y = digits_points(48)
    return model, x, y, evaluate(model, (x, y), **EVAL_SETTINGS())


def test_corrupted_eval_records_are_recomputed_with_the_same_numbers(problem, tmp_path, monkeypatch, caplog):
    model, x, y, reference = problem
    state = tmp_path / "state"
    evaluate(model, (x, y), **EVAL_SETTINGS(), state_dir=state)
    good = (state / "batch-00000.json").read_text()
    (state / "batch-00000.json").write_text(good[: len(good) // 2])  # truncated
    (state / "batch-00001.json").write_text(good)  # whole, but batch 0's record
    record = json.loads((state / "batch-00002.json").read_text())
    record["broken_by"] = record["broken_by"][:-1]  # one point short
    (state / "batch-00002.json").write_text(json.dumps(record))

    module = importlib.import_module("sparring.evaluate")
    computed: list[int] = []
    original = module._evaluate_batch
    monkeypatch.setattr(module, "_evaluate_batch", lambda *a, **k: computed.append(k["batch"]) or original(*a, **k))
    again = evaluate(model, (x, y), **EVAL_SETTINGS(), state_dir=state)
    assert computed == [0, 1, 2]
    assert torch.equal(again.broken_by, reference.broken_by)
    assert numbers(again.to_dict()) == numbers(reference.to_dict())
    assert torch.equal(again.examples["adv"], reference.examples["adv"])
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"batch-0000{b}.json" in warned for b in range(3)) and "recomputing" in warned
    rewritten, first = json.loads((state / "batch-00000.json").read_text()), json.loads(good)  # rewritten whole
    assert {k: v for k, v in rewritten.items() if "time" not in k} == {k: v for k, v in first.items()
                                                                        if "time" not in k}


def test_corrupted_manifest_is_refused_in_one_line_and_overwrite_starts_afresh(problem, tmp_path):
    model, x, y, _ = problem
    state = tmp_path / "state"
    evaluate(model, (x[:16], y[:16]), **EVAL_SETTINGS(), state_dir=state)
    (state / "manifest.json").write_text('{"fingerprint": "abc"')
    with pytest.raises(RunFolderError, match="manifest.json is corrupted") as info:
        evaluate(model, (x[:16], y[:16]), **EVAL_SETTINGS(), state_dir=state)
    assert "--overwrite" in str(info.value) and "\n" not in str(info.value)
    evaluate(model, (x[:16], y[:16]), **EVAL_SETTINGS(), state_dir=state, fresh=True)
    assert json.loads((state / "manifest.json").read_text())["fingerprint"] != "abc"


def test_corrupted_attack_batches_are_recomputed_with_the_same_file(trained_mlp, digits, tmp_path, caplog,
                                                                    single_thread):
    _, test = digits
    x, y = test.x[:64], test.y[:64]
    args = (trained_mlp, (x, y), PGD(steps=3), LinfBall(eps=0.1))
    generate(*args, tmp_path / "whole.npz", batch_size=16, seed=1)

    def stop(done: int, total: int) -> None:
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        generate(*args, tmp_path / "cut.npz", batch_size=16, seed=1, progress=stop)
    state = tmp_path / "cut.state"
    data = (state / "batch-00000.npz").read_bytes()
    (state / "batch-00000.npz").write_bytes(data[: len(data) // 2])  # truncated
    (state / "batch-00001.npz").write_bytes(b"garbage" * 10)
    with np.load(state / "batch-00002.npz") as part:
        arrays = dict(part)
    np.savez(state / "batch-00002.npz", **{**arrays, "success": arrays["success"][:-1]})  # one point short
    resumed = generate(*args, tmp_path / "cut.npz", batch_size=16, seed=1)
    assert resumed.resumed_batches == 0
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "cut.npz") as b:
        for key in ("x_adv", "y", "success", "loss"):
            assert np.array_equal(a[key], b[key]), key
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"batch-0000{b}.npz" in warned for b in range(3))
    assert not state.exists()
