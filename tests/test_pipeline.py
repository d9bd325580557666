"""One pipeline for every task, through the command line: `run`, `eval`, `report` and `compare` dispatch on the
run's task (TASKS, VIEWS), and every report.json carries the same header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import one_error_line, run_main
from test_recsys_run import tiny

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
HEADER = ("schema_version", "task", "sparring_version", "created_at", "run_name", "threat")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished recsys run and a finished language run, made with `sparring run`."""
    import torch

    root = tmp_path_factory.mktemp("pipeline")
    (root / "rec.yaml").write_text(yaml.safe_dump(tiny()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    try:
        from sparring.cli import main

        for name, config in (("rec", root / "rec.yaml"), ("lang", EXAMPLES / "language_cat.yaml")):
            mp.chdir(root)
            mp.setattr("sys.argv", ["sparring", "run", str(config), "--out", name, "-q"])
            try:
                main()
            except SystemExit as exc:
                assert exc.code in (0, None), f"sparring run {config} exited {exc.code}"
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return {"root": root, "rec": root / "rec", "lang": root / "lang"}


@pytest.mark.parametrize("name, task", [("rec", "recsys"), ("lang", "language")])
def test_every_task_writes_the_same_header(runs, name, task):
    report = json.loads((runs[name] / "report.json").read_text())
    assert all(key in report for key in HEADER), sorted(report)
    assert report["task"] == task and report["run_name"]
    assert isinstance(report["threat"], dict)
    assert (runs[name] / "metrics.jsonl").is_file() and (runs[name] / "checkpoints" / "latest.json").is_file()


@pytest.mark.parametrize("name, task", [("rec", "recsys"), ("lang", "language")])
def test_eval_report_and_the_run_left_alone(runs, name, task, monkeypatch, capsys, single_thread):
    """`sparring eval --model RUN` re-evaluates a run of any task into a new folder (same numbers: the saved model
    is what was evaluated), `sparring report` re-renders it by its task's view; the run is not touched."""
    before = {p: p.stat().st_mtime_ns for p in runs[name].rglob("*") if p.is_file()}
    out = f"eval-{name}"
    code, stdout, stderr = run_main(["eval", "--model", str(runs[name]), "--out", out, "-q"], runs["root"],
                                    monkeypatch, capsys)
    assert code == 0, stderr
    again = json.loads((runs["root"] / out / "report.json").read_text())
    original = json.loads((runs[name] / "report.json").read_text())
    assert again["task"] == task and again["evaluated_run"] == str(runs[name])
    block = "ranking" if task == "recsys" else "language"
    if task == "recsys":
        assert again["ranking"] == original["ranking"]
    else:
        def untimed(report):
            return {n: {k: v for k, v in a.items() if k != "time_s"} for n, a in report[block]["attacks"].items()}

        assert untimed(again) == untimed(original)
    assert {p: p.stat().st_mtime_ns for p in runs[name].rglob("*") if p.is_file()} == before
    (runs["root"] / out / "report.html").unlink()
    code, stdout, stderr = run_main(["report", out], runs["root"], monkeypatch, capsys)
    assert code == 0, stderr
    assert (runs["root"] / out / "report.html").is_file() and "report:" in stdout


def test_compare_puts_each_task_in_its_own_table(runs, monkeypatch, capsys):
    code, stdout, stderr = run_main(["compare", "rec", "lang", "--out", "both.html"], runs["root"], monkeypatch,
                                    capsys)
    assert code == 0, stderr
    page = (runs["root"] / "both.html").read_text()
    assert "<h2>recsys</h2>" in page and "<h2>language</h2>" in page
    assert "recsys runs" in stdout and "language runs" in stdout
    # the page is sparring's: compare may replace it, but never a file of the user's
    (runs["root"] / "mine.html").write_text("my notes")
    code, _, stderr = run_main(["compare", "rec", "--out", "mine.html"], runs["root"], monkeypatch, capsys)
    assert code == 2 and "not a comparison page written by sparring" in one_error_line(stderr)
    assert (runs["root"] / "mine.html").read_text() == "my notes"


def test_eval_of_a_classifier_still_needs_data_and_eps(tmp_path, monkeypatch, capsys):
    code, _, stderr = run_main(["eval", "--model", "small_cnn", "--eps", "0.1"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "--data is required" in one_error_line(stderr)
