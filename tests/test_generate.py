"""Adversarial examples at scale: the output file, resuming an interrupted run, the ``sparring attack`` CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from sparring.attacks import FGSM, PGD
from sparring.errors import ConfigError, RunFolderError
from sparring.generate import generate
from sparring.threat import LinfBall


@pytest.fixture(scope="module")
def problem(trained_mlp, digits, single_thread):
    _, test = digits
    return trained_mlp, test.x[:50], test.y[:50]


class Stop(Exception):
    pass


def test_output_holds_every_point_inside_the_threat_set(problem, tmp_path) -> None:
    model, x, y = problem
    result = generate(model, (x, y), PGD(steps=5), LinfBall(eps=0.1), tmp_path / "adv.npz", batch_size=16)
    with np.load(tmp_path / "adv.npz", allow_pickle=False) as out:
        x_adv, success, loss = (torch.from_numpy(out[k]) for k in ("x_adv", "success", "loss"))
        meta = json.loads(str(out["meta"]))
    assert x_adv.shape == x.shape and success.shape == (50,) and loss.shape == (50,)
    assert LinfBall(eps=0.1).contains(x_adv, x).all()
    with torch.no_grad():
        assert torch.equal(success, model(x_adv).argmax(1) != y)
    assert meta["attack"]["name"] == "pgd" and result.n == 50 and result.throughput > 0
    assert not (tmp_path / "adv.state").exists()  # the resume state is gone once the file is complete


def test_interrupted_run_resumes_with_the_same_file(problem, tmp_path) -> None:
    model, x, y = problem
    settings = {"batch_size": 16, "seed": 3}
    generate(model, (x, y), PGD(steps=5), LinfBall(eps=0.1), tmp_path / "whole.npz", **settings)

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        generate(model, (x, y), PGD(steps=5), LinfBall(eps=0.1), tmp_path / "cut.npz", progress=stop_after_two,
                 **settings)
    assert not (tmp_path / "cut.npz").exists() and len(list((tmp_path / "cut.state").glob("batch-*.npz"))) == 2
    resumed = generate(model, (x, y), PGD(steps=5), LinfBall(eps=0.1), tmp_path / "cut.npz", **settings)
    assert resumed.resumed_batches == 2
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "cut.npz") as b:
        for key in ("x_adv", "y", "success", "loss"):
            assert np.array_equal(a[key], b[key]), key


def test_existing_output_and_unscored_attacks_are_refused(problem, tmp_path) -> None:
    model, x, y = problem
    (tmp_path / "adv.npz").write_bytes(b"the user's file")
    with pytest.raises(RunFolderError, match="already exists"):
        generate(model, (x, y), FGSM(), LinfBall(eps=0.1), tmp_path / "adv.npz")
    assert (tmp_path / "adv.npz").read_bytes() == b"the user's file"
    with pytest.raises(ConfigError, match="score=False"):
        generate(model, (x, y), FGSM(score=False), LinfBall(eps=0.1), tmp_path / "other.npz")


FACTORY = """\
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
"""


@pytest.mark.parametrize("gradients", ["autograd", "predicted"])
def test_cli_attack_writes_the_file(problem, tmp_path, monkeypatch, capsys, gradients) -> None:
    from sparring.cli import main
    from sparring.runtime.checkpoint import save_weights

    model, x, y = problem
    (tmp_path / "factory.py").write_text(FACTORY)
    save_weights(model, tmp_path / "w.safetensors")
    monkeypatch.chdir(tmp_path)
    args = ["sparring", "attack", "--model", "factory.py:make", "--checkpoint", "w.safetensors", "--data", "digits",
            "--attack", "fgsm", "--eps", "0.1", "--out", "adv.npz", "--gradients", gradients, "-q"]
    if gradients == "predicted":
        args += ["--layer", "2"]
    monkeypatch.setattr(sys, "argv", args)
    main()
    with np.load(tmp_path / "adv.npz") as out:
        assert out["x_adv"].shape == (451, 1, 8, 8) and 0 < out["success"].mean() < 1
    assert "adversarial examples" in capsys.readouterr().out
    if gradients == "predicted":
        assert (tmp_path / "adv.predictor.safetensors").exists()


def test_cli_attack_predicted_without_a_predictor_exits_2(tmp_path, monkeypatch, capsys) -> None:
    from sparring.cli import main

    (tmp_path / "factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sparring", "attack", "--model", "factory.py:make", "--data", "digits", "--eps",
                                      "0.1", "--out", "adv.npz", "--gradients", "predicted"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "--predictor" in capsys.readouterr().err


def test_overwrite_never_deletes_a_folder_that_is_not_a_state(problem, tmp_path) -> None:
    model, x, y = problem
    (tmp_path / "adv.state").mkdir()
    (tmp_path / "adv.state" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="was not created by sparring"):
        generate(model, (x, y), FGSM(), LinfBall(eps=0.1), tmp_path / "adv.npz", overwrite=True)
    assert (tmp_path / "adv.state" / "notes.txt").read_text() == "mine"
