"""The CLI's one error boundary (``sparring.cli.main``): a user-caused failure is one ``error:`` line and exit 2.

Every case goes through the real entry point in process (``run_main``: an exception escaping ``main`` would be the
traceback a user sees), and one through the installed ``sparring`` script in a subprocess. The classes: the user's
disk (``OSError``), their factory code, their data files, their config (types deep in model settings, bytes that
are not YAML text, duplicate keys, names that are not one path component). Only a bug in sparring shows a
traceback, followed by the one-line request to report it (exit 1); Ctrl-C is ``interrupted`` (exit 130).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import SPARRING, TIMEOUT_S, one_error_line, run_main

import sparring.classification
import sparring.experiment
from sparring import __version__
from sparring.config import load_any_config, load_config
from sparring.data import load_data
from sparring.data.npz import load_npz
from sparring.errors import ConfigError, DataError, SparringError

CONFIG = """\
name: NAME
data: {source: digits}
model: {name: mlp, hidden: [8]}
objective: {name: standard}
train: {epochs: 1, batch_size: 256, optimizer: adam, lr: 0.01, val_size: 32, val_attack_steps: 1}
eval: {threat: {norm: linf, eps: 0.1}, max_samples: 16, suite: fast, eps_curve: []}
"""

EVAL = ["--data", "digits", "--eps", "0.1", "--suite", "fast", "--max-samples", "8", "--eps-curve", "", "-q"]


def config(tmp_path: Path, text: str = CONFIG, *, file: str = "cfg.yaml", name: str = "tiny") -> str:
    (tmp_path / file).write_text(text.replace("NAME", name))
    return file


def fails(argv: list[str], cwd: Path, monkeypatch, capsys, *words: str) -> str:
    """Run ``sparring ARGV``; assert one ``error:`` line holding ``words`` and exit status 2; return the line."""
    code, _, err = run_main(argv, cwd, monkeypatch, capsys)
    assert code == 2, err
    line = one_error_line(err)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


# --------------------------------------------------------------------------- the boundary itself
def test_an_internal_bug_shows_the_traceback_and_asks_for_a_report(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sparring.experiment, "run_experiment", broken)
    code, _, err = run_main(["run", config(tmp_path), "-q"], tmp_path, monkeypatch, capsys)
    assert code == 1, err
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == (f"error: this is a bug in sparring {__version__}; please report it with the command you ran and "
                    "the traceback above")


def test_ctrl_c_is_interrupted_and_status_130(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sparring.experiment, "run_experiment", interrupted)
    code, _, err = run_main(["run", config(tmp_path), "-q"], tmp_path, monkeypatch, capsys)
    assert code == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted"]


def test_a_message_over_several_lines_is_printed_on_one(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise SparringError("the first part\n  and the second part\r\nand a third")

    monkeypatch.setattr(sparring.experiment, "run_experiment", refuse)
    line = fails(["run", config(tmp_path), "-q"], tmp_path, monkeypatch, capsys)
    assert line == "error: the first part and the second part and a third"


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")

    monkeypatch.setattr(sparring.experiment, "run_experiment", oom)
    fails(["run", config(tmp_path), "-q"], tmp_path, monkeypatch, capsys, "out of memory", "batch size")


def test_the_installed_script_prints_one_line_and_exits_2(tmp_path):
    assert SPARRING is not None, f"no sparring entry point next to {sys.executable}"
    config(tmp_path, CONFIG + "seed: 1\nseed: 2\n")
    result = subprocess.run([SPARRING, "run", "cfg.yaml", "-q"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert line == "error: cfg.yaml: duplicate key 'seed' at line 8 (first at line 7); keep one"
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the user's disk
def test_out_under_a_regular_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "somefile.txt").write_text("not a folder\n")
    line = fails(["run", config(tmp_path), "--out", "somefile.txt/run", "-q"], tmp_path, monkeypatch, capsys,
                 "somefile.txt", "Not a directory", "--out")
    assert (tmp_path / "somefile.txt").read_text() == "not a folder\n"
    assert "Traceback" not in line


@pytest.mark.parametrize(
    ("target", "error", "words"),
    [
        ("os.replace", PermissionError(errno.EACCES, "Permission denied", "ro/run/config.yaml.tmp",
                                       "ro/run/config.yaml"), ["ro/run/config.yaml", "Permission denied", "--out"]),
        ("os.replace", OSError(errno.ENOSPC, "No space left on device"), ["No space left on device", "free space"]),
        ("pathlib.Path.mkdir", OSError(errno.EROFS, "Read-only file system", "ro/run"),
         ["ro/run", "Read-only file system", "--out"]),
        ("pathlib.Path.mkdir", FileExistsError(errno.EEXIST, "File exists", "ro/run"), ["ro/run", "File exists"]),
    ],
    ids=["permission", "disk_full", "read_only", "exists"],
)
def test_disk_failures_are_one_line_naming_the_path(tmp_path, monkeypatch, capsys, target, error, words):
    """Simulated (tests run as root, where chmod does not stop writes): the first write of the run fails."""
    file = config(tmp_path)

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, refuse)
    fails(["run", file, "--out", "ro/run", "-q"], tmp_path, monkeypatch, capsys, *words)


def test_a_missing_parent_of_out_is_created(tmp_path, monkeypatch, capsys, single_thread):
    code, _, err = run_main(["train", config(tmp_path), "--out", "a/b/c/run", "-q"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "a" / "b" / "c" / "run" / "checkpoints" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- the user's factory code
FACTORIES = {
    "raises": ("def make():\n    raise RuntimeError('no weights at /data/w.bin')\n",
               ["factory raised", "RuntimeError", "no weights at /data/w.bin"]),
    "returns_a_number": ("def make():\n    return 42\n", ["returned int", "nn.Module"]),
    "syntax_error": ("def make(:\n    pass\n", ["importing", "SyntaxError"]),
    "module_level_exception": ("raise ValueError('top level\\nof the file')\n\ndef make():\n    pass\n",
                               ["importing", "ValueError", "top level of the file"]),
    "imports_a_missing_package": ("import sparring_no_such_package\n\ndef make():\n    pass\n",
                                  ["importing", "sparring_no_such_package"]),
    "no_such_function": ("def other():\n    pass\n", ["no callable 'make'"]),
}


@pytest.mark.parametrize("case", list(FACTORIES))
@pytest.mark.parametrize("form", ["file", "module"])
def test_a_failing_factory_is_one_line(tmp_path, monkeypatch, capsys, case, form):
    source, words = FACTORIES[case]
    module = f"sparring_test_factory_{case}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.delitem(sys.modules, module, raising=False)
    spec = f"{module}.py:make" if form == "file" else f"{module}:make"
    line = fails(["eval", "--model", spec, *EVAL, "--out", "ev"], tmp_path, monkeypatch, capsys, *words)
    assert module in line
    assert not (tmp_path / "ev").exists()
    monkeypatch.delitem(sys.modules, module, raising=False)


# --------------------------------------------------------------------------- the user's data files
def npz_bytes(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "good.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=np.arange(40) % 10)
    return (tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda good: good[: len(good) // 2], ["damaged or truncated", "numpy.savez"]),
        (lambda good: b"", ["is empty", "0 bytes"]),
        (lambda good: b"x,y\n0.1,3\n0.2,4\n", ["not a numpy .npz archive"]),
        (lambda good: b"\x93NUMPY" + good[6:], ["one numpy array (.npy)"]),
        (lambda good: good[:-22], ["damaged or truncated"]),  # the zip's end record cut off
    ],
    ids=["truncated_to_half", "zero_bytes", "text", "npy", "no_end_record"],
)
def test_a_broken_npz_is_one_line_naming_it(tmp_path, monkeypatch, capsys, make, words):
    (tmp_path / "data.npz").write_bytes(make(npz_bytes(tmp_path)))
    argv = ["eval", "--model", "mlp", "--data", "data.npz", "--eps", "0.1", "--out", "ev", "-q"]
    fails(argv, tmp_path, monkeypatch, capsys, "data.npz", *words)
    with pytest.raises(DataError):  # the same in Python
        load_npz(tmp_path / "data.npz")


# --------------------------------------------------------------------------- the user's config
@pytest.mark.parametrize(
    ("model", "words"),
    [
        ('{name: mlp, hidden: "abc"}', ["model.hidden", "'abc'"]),
        ("{name: mlp, hidden: [a, b]}", ["model.hidden", "valid integer"]),
        ("{name: mlp, hidden: 32}", ["model.hidden", "Sequence"]),
        ("{name: small_cnn, width: 2.5}", ["model.width", "integer"]),
        ("{name: small_cnn, width: wide}", ["model.width"]),
        ("{name: small_cnn, batch_norm: maybe}", ["model.batch_norm"]),
    ],
)
def test_a_wrong_type_in_model_settings_is_caught_at_load(tmp_path, monkeypatch, capsys, model, words):
    text = CONFIG.replace("{name: mlp, hidden: [8]}", model)
    fails(["run", config(tmp_path, text), "--out", "out", "-q"], tmp_path, monkeypatch, capsys, "cfg.yaml", *words)
    assert not (tmp_path / "out").exists()


def test_a_setting_the_model_refuses_when_built_is_one_line(tmp_path, monkeypatch, capsys):
    text = CONFIG.replace("{name: mlp, hidden: [8]}", "{name: small_cnn, width: -3}")  # the right type, no layer
    fails(["run", config(tmp_path, text), "--out", "out", "-q"], tmp_path, monkeypatch, capsys,
          "model: small_cnn(width=-3) failed")
    assert not (tmp_path / "out").exists()


def test_model_settings_are_converted_to_their_annotated_types(tmp_path):
    text = CONFIG.replace("{name: mlp, hidden: [8]}", '{name: small_cnn, width: "4", batch_norm: false}')
    cfg = load_config(tmp_path / config(tmp_path, text))
    net = sparring.classification.make_model(cfg, load_data("digits")[0])
    assert next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).out_channels == 4


def test_a_bool_setting_must_be_a_yaml_bool(tmp_path, monkeypatch, capsys):
    text = CONFIG.replace("{name: mlp, hidden: [8]}", '{name: small_cnn, batch_norm: "no"}')  # "no" is truthy
    fails(["run", config(tmp_path, text), "-q"], tmp_path, monkeypatch, capsys, "model.batch_norm", "'no'")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ["not a UTF-8 text YAML file", "byte 0"]),
        (np.random.default_rng(0).bytes(4096), ["not a UTF-8 text YAML file"]),
        (b"name: tiny\nseed: 0\nnote: caf\xe9\n", ["not a UTF-8 text YAML file", "line 3"]),
        (b"name: tiny\x00\x01\x02\n", ["not a UTF-8 text YAML file", "#x0000"]),
        (b"", ["is empty"]),
        (b"# only a comment\n", ["is empty"]),
        (b"- name: tiny\n- seed: 0\n", ["top level must be a mapping", "a list", "line 1"]),
        (b"# a comment\n\njust some words\n", ["top level must be a mapping", "'just some words'", "line 3"]),
        (b"name: tiny\n---\nseed: 0\n", ["more than one YAML document", "line 2"]),
        (b"name: tiny\nmodel: {name: mlp\n", ["not valid YAML", "line"]),
    ],
    ids=["png", "random_bytes", "latin1", "control_characters", "empty", "only_comments", "list", "scalar",
         "two_documents", "malformed"],
)
def test_a_config_that_is_not_a_yaml_mapping_is_one_line(tmp_path, monkeypatch, capsys, content, words):
    (tmp_path / "cfg.yaml").write_bytes(content)
    fails(["run", "cfg.yaml", "-q"], tmp_path, monkeypatch, capsys, "cfg.yaml", *words)
    assert not (tmp_path / "runs").exists()


def test_a_binary_given_as_the_config(tmp_path, monkeypatch, capsys):
    binary = Path(sys.executable).resolve()
    fails(["run", str(binary), "-q"], tmp_path, monkeypatch, capsys, str(binary), "not a UTF-8 text YAML file")


def test_a_folder_given_as_the_config(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    fails(["run", "configs", "-q"], tmp_path, monkeypatch, capsys, "configs", "is a folder")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CONFIG + "seed: 1\nseed: 2\n", "duplicate key 'seed' at line 8 (first at line 7)"),
        (CONFIG.replace("eval: {threat: {norm: linf, eps: 0.1},", "eval:\n  threat: {norm: linf, eps: 0.1}\n"
                        "  suite: fast\n  threat: {norm: l2, eps: 0.5}\n  other: {"),
         "duplicate key 'threat' at line 9 (first at line 7)"),
        (CONFIG.replace("eps: 0.1}", "eps: 0.1, eps: 0.2}"), "duplicate key 'eps' at line 6, column 39 (first at "
                                                             "column 29)"),
        ("objective:\n  name: pgd_at\n  threat:\n    eps: 0.1\n    norm: linf\n    eps: 0.2\n",
         "duplicate key 'eps' at line 6 (first at line 4)"),
    ],
    ids=["top_level", "section", "flow_mapping", "deep"],
)
def test_a_duplicate_key_at_any_depth_names_it_and_both_lines(tmp_path, monkeypatch, capsys, text, message):
    line = fails(["run", config(tmp_path, text), "-q"], tmp_path, monkeypatch, capsys)
    assert line == f"error: cfg.yaml: {message}; keep one"


def test_a_merge_key_may_be_overridden(tmp_path):
    text = ("base: &threat {norm: linf, eps: 0.1}\n"
            "objective: {name: pgd_at, threat: {<<: *threat, eps: 0.2}}\n")
    (tmp_path / "cfg.yaml").write_text(text)
    with pytest.raises(ConfigError, match="base: unknown field"):  # the anchor is not a section; no duplicate
        load_config(tmp_path / "cfg.yaml")


def test_yaml_tags_stay_safe(tmp_path, monkeypatch, capsys):
    text = "name: !!python/object/apply:os.system ['touch pwned']\n"
    fails(["run", config(tmp_path, text), "-q"], tmp_path, monkeypatch, capsys, "cfg.yaml", "not valid YAML")
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- names are one path component
@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "'..'", "'.'", "''", "'a b'", "'a\\\\b'"])
def test_a_name_that_is_not_one_path_component_is_refused(tmp_path, monkeypatch, capsys, name):
    line = fails(["run", config(tmp_path, name=name), "-q"], tmp_path, monkeypatch, capsys,
                 "cfg.yaml: name: must be one path component (letters, digits, - _ .), got")
    assert "Traceback" not in line
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


def test_a_recsys_name_is_one_path_component_too(tmp_path):
    (tmp_path / "rec.yaml").write_text("task: recsys\nname: ../escape\n")
    with pytest.raises(ConfigError, match=r"name: must be one path component .*'\.\./escape'"):
        load_any_config(tmp_path / "rec.yaml")


def test_names_people_write_are_accepted(tmp_path):
    for name in ("tiny", "pgd-at_v2.1", "cifar10.wrn34", "..hidden", "résumé"):
        assert load_config(tmp_path / config(tmp_path, name=name)).name == name


def test_a_config_file_name_that_is_no_folder_name_asks_for_out(tmp_path, monkeypatch, capsys):
    text = CONFIG.replace("name: NAME\n", "")
    fails(["run", config(tmp_path, text, file="..yaml"), "-q"], tmp_path, monkeypatch, capsys,
          "..yaml", "'.'", "one path component", "--out")
    assert not (tmp_path / "runs").exists()
