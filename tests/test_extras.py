"""A missing optional extra is one line naming the ``pip install 'sparring[...]'`` to run."""

from __future__ import annotations

import sys

import pytest
from test_cli import one_error_line, run_main

from sparring.extras import MissingExtraError, install_hint, installed, require


def test_install_hint_names_the_extra() -> None:
    assert install_hint("transformers") == "pip install 'sparring[hf]'"
    assert install_hint("lightning.pytorch") == "pip install 'sparring[scale]'"
    assert install_hint("somethingelse") == "pip install somethingelse"


def test_require_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    assert not installed("peft")
    with pytest.raises(MissingExtraError, match=r"LoRA: peft is not installed; run pip install 'sparring\[hf\]'"):
        require("peft", what="LoRA")


def test_integrations_without_their_extra(monkeypatch) -> None:
    import sparring.integrations as integrations

    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "sparring.integrations.lightning", raising=False)
    with pytest.raises(MissingExtraError, match=r"Lightning callbacks: lightning is not installed.*sparring\[scale\]"):
        integrations.AdversarialTraining  # noqa: B018


def test_language_tokenizer_without_transformers(monkeypatch) -> None:
    from sparring.language import word_tokenizer

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"sparring\[hf\]"):
        word_tokenizer(["a", "b"])


def test_cli_run_with_a_tracker_whose_extra_is_missing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    (tmp_path / "cfg.yaml").write_text(
        "data: {source: digits}\nmodel: {name: mlp}\nobjective: {name: standard}\n"
        "train: {epochs: 1, trackers: [tensorboard]}\neval: {threat: {norm: linf, eps: 0.1}}\n")
    code, _, err = run_main(["run", "cfg.yaml", "--out", "r", "-q"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "pip install 'sparring[scale]'" in one_error_line(err)
    assert not (tmp_path / "r").exists()
