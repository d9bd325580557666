"""The ``sparring`` command line.

The main paths (run, train, train --resume, eval, a config error, a usage error, --help) run the
installed entry point in subprocesses. Each costs a Python start plus ``import torch`` (2-4 CPU seconds),
so they run in two concurrent waves from one module fixture (wave 1: what needs no earlier result;
wave 2: what reads wave 1's folders) and the tests only inspect the results.
Most bad-input cases call the same ``sparring.cli.main`` in process (argv patched, stderr captured):
an exception other than ``SystemExit`` escaping ``main`` is the traceback a user would see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparring.cli import load_factory, main
from sparring.config import load_config
from sparring.errors import SparringError

SPARRING = shutil.which("sparring", path=str(Path(sys.executable).parent))
TIMEOUT_S = 240

CONFIG = """\
name: tiny
seed: 0
data: {source: digits}
model: {name: mlp, hidden: [32]}
objective: {name: standard}
train: {epochs: EPOCHS, batch_size: 128, optimizer: adam, lr: 0.01, weight_decay: 0.0, schedule: constant,
        val_size: 64, val_attack_steps: 2}
eval:
  threat: {norm: linf, eps: 0.1}
  max_samples: 64
  attacks: [{name: fgsm}, {name: pgd, steps: 3}]
  eps_curve: [0, 0.1, 0.2]
"""

FACTORY = """\
from sparring.models import build_model


def make():
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))


def make_narrow():
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16,))
"""


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"sparring {' '.join(self.args)} → {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class Wave:
    """Start several ``sparring`` commands at once and collect their results."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.running: dict[str, tuple[list[str], subprocess.Popen[bytes], Path, Path]] = {}

    def start(self, name: str, *args: str) -> None:
        out, err = self.cwd / f".{name}.stdout", self.cwd / f".{name}.stderr"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen([SPARRING, *args], cwd=self.cwd, stdout=fo, stderr=fe, env=env)
        self.running[name] = (list(args), proc, out, err)

    def wait(self) -> dict[str, Result]:
        results = {}
        for name, (args, proc, out, err) in self.running.items():
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            results[name] = Result(args, proc.returncode, out.read_text(), err.read_text())
            out.unlink()
            err.unlink()
        self.running = {}
        return results


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def write_inputs(work: Path) -> None:
    (work / "cfg.yaml").write_text(CONFIG.replace("EPOCHS", "1"))
    (work / "cfg2.yaml").write_text(CONFIG.replace("EPOCHS", "2"))
    (work / "factory.py").write_text(FACTORY)
    (work / "bad_key.yaml").write_text(CONFIG.replace("EPOCHS", "1") + "bogus_section: 1\n")
    (work / "neg_eps.yaml").write_text(CONFIG.replace("EPOCHS", "1").replace("eps: 0.1}", "eps: -0.1}"))
    (work / "broken.yaml").write_text("data: {source: digits\nmodel: [mlp\n")
    rng = np.random.default_rng(0)
    x = rng.random((130, 1, 8, 8)).astype(np.float32)
    y = np.arange(130) % 10
    x_nan = x.copy()
    x_nan[3, 0, 2, 2] = np.nan
    np.savez(work / "nan.npz", x=x_nan, y=y)
    np.savez(work / "labels12.npz", x=x, y=np.arange(130) % 13)  # 13 classes; the model has 10 outputs
    (work / "not_a_run").mkdir()
    (work / "not_a_run" / "thesis.tex").write_text("years of work\n")
    (work / "empty").mkdir()


# bad input run in process: argv and the words the one stderr line must contain (exit status 2)
BAD_INPUT = {
    "unknown_config_key": (["run", "bad_key.yaml", "--out", "out_bad_key", "-q"], ["bogus_section"]),
    "negative_eps_in_config": (["run", "neg_eps.yaml", "--out", "out_neg_eps", "-q"], ["eval.threat.eps"]),
    "missing_config": (["run", "missing.yaml", "--out", "out_missing", "-q"], ["missing.yaml"]),
    "malformed_yaml": (["run", "broken.yaml", "--out", "out_broken", "-q"], ["broken.yaml", "YAML"]),
    "eval_negative_eps": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "-1", "--out", "out_e1"], ["eps"]),
    "eval_norm_l3": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--norm", "l3", "--out", "out_e2"],
        ["l3"]),
    "eval_missing_checkpoint": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--checkpoint", "nope.safetensors",
         "--out", "out_e3"], ["nope.safetensors"]),
    "eval_nan_npz": (
        ["eval", "--model", "factory.py:make", "--data", "nan.npz", "--eps", "0.1", "--out", "out_e4"], ["NaN"]),
    "eval_labels_out_of_range": (
        ["eval", "--model", "factory.py:make", "--data", "labels12.npz", "--eps", "0.1", "--out", "out_e5"], ["13"]),
    "eval_mismatched_checkpoint": (
        ["eval", "--model", "factory.py:make_narrow", "--data", "digits", "--eps", "0.1",
         "--checkpoint", "run/checkpoints/model.safetensors", "--out", "out_e6"], ["model.safetensors"]),
    "eval_missing_factory_file": (
        ["eval", "--model", "nope.py:make", "--data", "digits", "--eps", "0.1", "--out", "out_e7"], ["nope.py"]),
    "eval_missing_required_option": (["eval", "--model", "factory.py:make", "--data", "digits"], ["eps"]),
    "eval_unknown_suite": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--suite", "strong", "--out",
         "out_e8"], ["--suite", "strong"]),
    "eval_bad_eps_curve": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--eps-curve", "0,x", "--out",
         "out_e9"], ["--eps-curve"]),
    "eval_negative_eps_curve": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--eps-curve", "0,-1", "--out",
         "out_e10"], ["eps-curve", ">= 0"]),
    "eval_bad_precision": (
        ["eval", "--model", "factory.py:make", "--data", "digits", "--eps", "0.1", "--precision", "fp8", "--out",
         "out_e11"], ["--precision"]),
    "resume_without_checkpoints": (["train", "cfg.yaml", "--out", "empty", "--resume", "-q"], ["checkpoints"]),
    "report_of_a_folder_without_report": (["report", "empty"], ["report.json"]),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, Any]:
    assert SPARRING is not None, f"no sparring entry point next to {sys.executable}"
    work = tmp_path_factory.mktemp("cli")
    write_inputs(work)

    wave = Wave(work)
    wave.start("run", "run", "cfg.yaml", "--out", "run", "-q")
    wave.start("train", "train", "cfg.yaml", "--out", "train", "-q")
    wave.start("unknown_config_key", "run", "bad_key.yaml", "--out", "out_bad_key", "-q")
    wave.start("usage_error", "run", "cfg.yaml", "--frobnicate")
    wave.start("help", "--help")
    results = wave.wait()
    assert results["run"].returncode == 0, str(results["run"])
    assert results["train"].returncode == 0, str(results["train"])

    metrics_after_first_train = (work / "train" / "metrics.jsonl").read_text()
    wave.start("resume", "train", "cfg2.yaml", "--out", "train", "--resume", "-q")
    wave.start("eval", "eval", "--model", "factory.py:make", "--checkpoint", "run/checkpoints/model.safetensors",
               "--data", "digits", "--norm", "linf", "--eps", "0.1", "--out", "evaluated", "--max-samples", "64",
               "--attacks", "fgsm,pgd")
    results.update(wave.wait())
    return {"work": work, "results": results, "metrics_after_first_train": metrics_after_first_train}


# --------------------------------------------------------------------------- sparring run
def test_run_writes_a_complete_run_folder(cli):
    run = cli["work"] / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/model.safetensors", "checkpoints/model.json",
                 "report.json", "report.html", "examples.npz"):
        assert (run / name).is_file(), name
    assert "report.html" in cli["results"]["run"].stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    model_json = json.loads((run / "checkpoints" / "model.json").read_text())
    assert model_json["name"] == "mlp" and model_json["num_classes"] == 10 and model_json["input_shape"] == [1, 8, 8]
    resolved = load_config(run / "config.yaml")  # the resolved config parses again and says the same
    assert resolved.model.settings() == {"hidden": [32]} and resolved.build_train().epochs == 1
    assert "<html" in (run / "report.html").read_text().lower()
    with np.load(run / "examples.npz") as examples:
        assert len(examples.files) > 0


def test_run_report_json(cli):
    report = json.loads((cli["work"] / "run" / "report.json").read_text())
    assert report["objective"] == "standard"
    assert report["threat"]["norm"] == "linf" and report["threat"]["eps"] == pytest.approx(0.1)
    assert 0.5 < report["clean_accuracy"] <= 1.0  # one epoch of an MLP on digits already learns
    robust = report["robust_accuracy"]
    assert {"fgsm", "pgd", "worst_case"} <= robust.keys()
    assert robust["worst_case"] <= min(robust["fgsm"], robust["pgd"]) + 1e-9
    assert robust["worst_case"] <= report["clean_accuracy"]
    assert len(report["per_class"]) == 10
    assert sum(row["n"] for row in report["per_class"]) == 64  # eval.max_samples
    assert [point["eps"] for point in report["eps_curve"]] == pytest.approx([0.0, 0.1, 0.2])
    assert report["eps_curve"][0]["robust_accuracy"] == pytest.approx(report["clean_accuracy"])
    assert isinstance(report["checks"], list) and report["checks"]
    assert all({"name", "passed"} <= check.keys() for check in report["checks"])


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    return lines[0]


def run_main(argv: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """``sparring ARGV`` in process; (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["sparring", *argv])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_run_again_without_overwrite_refuses_and_touches_nothing(cli, monkeypatch, capsys):
    before = snapshot(cli["work"] / "run")
    code, _, err = run_main(["run", "cfg.yaml", "--out", "run", "-q"], cli["work"], monkeypatch, capsys)
    assert code == 2
    assert "--overwrite" in one_error_line(err)
    assert snapshot(cli["work"] / "run") == before  # every file: same bytes, same mtime


def test_run_with_overwrite_replaces_sparrings_files_and_keeps_the_users(cli, monkeypatch, capsys, single_thread):
    work = cli["work"]
    shutil.copytree(work / "run", work / "run_overwrite")
    (work / "run_overwrite" / "notes.txt").write_text("the user's, not sparring's\n")
    (work / "run_overwrite" / "report.json").write_text("from the old run\n")
    code, out, err = run_main(["run", "cfg.yaml", "--out", "run_overwrite", "--overwrite", "-q"], work, monkeypatch,
                              capsys)
    assert code == 0, err
    folder = work / "run_overwrite"
    assert (folder / "notes.txt").read_text() == "the user's, not sparring's\n"  # only what sparring wrote goes
    assert json.loads((folder / "report.json").read_text())["objective"] == "standard"
    for name in ("config.yaml", "metrics.jsonl", "report.json", "report.html", "checkpoints/model.safetensors"):
        assert (folder / name).is_file(), name
    assert "report.html" in out


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(cli, monkeypatch, capsys):
    work = cli["work"]
    code, _, err = run_main(["run", "cfg.yaml", "--out", "not_a_run", "--overwrite", "-q"], work, monkeypatch, capsys)
    assert code == 2
    assert "not_a_run" in one_error_line(err)
    assert [p.name for p in (work / "not_a_run").iterdir()] == ["thesis.tex"]
    assert (work / "not_a_run" / "thesis.tex").read_text() == "years of work\n"


# --------------------------------------------------------------------------- sparring train --resume
def test_train_then_resume_continues(cli):
    result = cli["results"]["resume"]
    assert result.returncode == 0, str(result)
    folder = cli["work"] / "train"
    assert len(cli["metrics_after_first_train"].splitlines()) == 1
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # epoch 0 kept from the first run, epoch 1 added by the resumed one
    assert (folder / "metrics.jsonl").read_text().startswith(cli["metrics_after_first_train"])
    latest = json.loads((folder / "checkpoints" / "latest.json").read_text())
    assert latest["epoch"] == 1
    assert (folder / "checkpoints" / "model.safetensors").is_file()
    assert not (folder / "report.json").exists()  # train does not evaluate
    assert "model.safetensors" in result.stdout


# --------------------------------------------------------------------------- sparring report
def test_report_re_renders_the_html(cli, monkeypatch, capsys):
    work = cli["work"]
    shutil.copytree(work / "run", work / "run_report")
    page = work / "run_report" / "report.html"
    page.unlink()
    code, out, err = run_main(["report", "run_report"], work, monkeypatch, capsys)
    assert code == 0, err
    assert page.is_file() and "tiny" in page.read_text()
    assert "report.html" in out


# --------------------------------------------------------------------------- sparring eval
def test_eval_of_a_factory_and_checkpoint(cli):
    result = cli["results"]["eval"]
    assert result.returncode == 0, str(result)
    folder = cli["work"] / "evaluated"
    for name in ("report.json", "report.html", "examples.npz"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert report["threat"]["norm"] == "linf" and report["threat"]["eps"] == pytest.approx(0.1)
    assert {"fgsm", "pgd", "worst_case"} <= report["robust_accuracy"].keys()
    assert report["data"]["n_eval"] == 64
    assert isinstance(report["objective"], str)  # docs/report.md: required; for an outside model, its name
    assert report["training"] is None
    trained = json.loads((cli["work"] / "run" / "report.json").read_text())
    # same digits split and samples, same weights: the checkpoint really was loaded
    assert report["clean_accuracy"] == pytest.approx(trained["clean_accuracy"])


# --------------------------------------------------------------------------- bad input
def test_bad_config_through_the_entry_point(cli):
    result = cli["results"]["unknown_config_key"]
    assert "Traceback" not in result.stderr, str(result)
    assert result.returncode == 2, str(result)
    assert "bogus_section" in one_error_line(result.stderr)
    assert not (cli["work"] / "out_bad_key").exists()


def test_usage_error_through_the_entry_point(cli):
    result = cli["results"]["usage_error"]
    assert "Traceback" not in result.stderr, str(result)
    assert result.returncode == 2, str(result)
    assert "frobnicate" in result.stderr


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(cli, case, monkeypatch, capsys, single_thread):
    argv, words = BAD_INPUT[case]
    code, _, err = run_main(argv, cli["work"], monkeypatch, capsys)  # a traceback would escape main() here
    assert code == 2, err
    line = one_error_line(err)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    if "--out" in argv and argv[0] == "run":
        assert not (cli["work"] / argv[argv.index("--out") + 1]).exists()  # config errors: nothing created


# --------------------------------------------------------------------------- --model resolution (in process)
def test_load_factory_from_file_and_module(tmp_path):
    (tmp_path / "factory.py").write_text(FACTORY)
    model = load_factory(f"{tmp_path / 'factory.py'}:make")()
    assert sum(p.numel() for p in model.parameters()) == 64 * 32 + 32 + 32 * 10 + 10
    assert callable(load_factory("sparring.models:available"))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no_colon.py", ["MODULE:FACTORY"]),
        ("missing.py:make", ["not found", "missing.py"]),
        ("sparring_no_such_module:make", ["sparring_no_such_module"]),
        ("sparring.models:no_such_factory", ["no_such_factory"]),
    ],
)
def test_load_factory_errors(spec, words):
    with pytest.raises(SparringError) as info:
        load_factory(spec)
    assert all(word in str(info.value) for word in words)


def test_help_lists_the_commands(cli):
    result = cli["results"]["help"]
    assert result.returncode == 0, str(result)
    for command in ("demo", "run", "train", "eval", "attack", "report"):
        assert command in result.stdout
