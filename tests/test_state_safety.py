"""Reading state and data safely: damaged checkpoints are never trusted and never a traceback, a run killed before
its first checkpoint resumes from epoch 0, data files never run code (CIFAR pickles), and Hugging Face weights are
read from safetensors unless the caller opts in to pickles."""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli import run_main
from torch import Tensor, nn

from sparring.data import load_data
from sparring.data.safe_pickle import UnsafePickleError, safe_load
from sparring.errors import DataError, RunFolderError
from sparring.runtime.checkpoint import CheckpointDir

pytestmark = pytest.mark.usefixtures("single_thread")


def trained(tiny_mlp, digits) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A digits MLP after three Adam steps: the optimizer has per-parameter tensors and scalars to restore."""
    model = tiny_mlp(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = digits[0].x, digits[0].y
    for i in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[i * 32 : (i + 1) * 32]), y[i * 32 : (i + 1) * 32]).backward()
        optimizer.step()
    return model, optimizer


def save(ckpt: CheckpointDir, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: dict[int, bool],
         **meta: Any) -> None:
    for epoch, best in epochs.items():
        ckpt.save(epoch=epoch, model=model, optimizer=optimizer, meta=dict(meta), best=best)


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- checkpoint pointers
POINTER_DAMAGE = {
    "not_json": "{{ half",
    "truncated": '{"checkpoint": "epo',
    "empty": "",
    "not_an_object": "[1, 2]",
    "no_folder_name": '{"epoch": 2}',
    "outside_the_folder": '{"checkpoint": "../../elsewhere", "epoch": 2}',
    "missing_folder": '{"checkpoint": "epoch-0009", "epoch": 9}',
}


@pytest.mark.parametrize("damage", list(POINTER_DAMAGE))
def test_a_damaged_latest_pointer_falls_back_to_the_newest_complete_folder(tmp_path, tiny_mlp, digits, caplog,
                                                                             damage):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save(ckpt, model, optimizer, {1: True, 2: False})
    (tmp_path / "latest.json").write_text(POINTER_DAMAGE[damage])
    with caplog.at_level(logging.WARNING, logger="sparring.runtime.checkpoint"):
        assert ckpt.latest() == tmp_path / "epoch-0002"
    assert str(tmp_path / "latest.json") in caplog.text and "epoch-0002" in caplog.text
    assert ckpt.best() == tmp_path / "epoch-0001"  # best.json is intact


def test_a_damaged_latest_pointer_with_no_complete_folder_means_no_checkpoint(tmp_path, tiny_mlp, digits, caplog):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save(ckpt, model, optimizer, {0: False})
    (tmp_path / "epoch-0000" / "model.safetensors").write_bytes(b"")
    (tmp_path / "latest.json").write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="sparring.runtime.checkpoint"):
        assert ckpt.latest() is None
    assert "no complete epoch folder remains" in caplog.text


def test_without_a_latest_pointer_the_newest_complete_folder_is_used(tmp_path, tiny_mlp, digits):
    """A run killed after renaming epoch-0002 into place but before rewriting latest.json, or a user who deleted
    the pointer as the error message suggests."""
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save(ckpt, model, optimizer, {1: True, 2: False})
    (tmp_path / "latest.json").unlink()
    assert ckpt.latest() == tmp_path / "epoch-0002"


FOLDER_DAMAGE = {
    "meta_not_json": ("meta.json", lambda b: b[: len(b) // 2]),
    "meta_without_epoch": ("meta.json", lambda b: b'{"history": []}'),
    "model_truncated": ("model.safetensors", lambda b: b[:-7]),
    "model_longer": ("model.safetensors", lambda b: b + b"\0" * 5),
    "model_empty": ("model.safetensors", lambda b: b""),
    "optimizer_truncated": ("optimizer.safetensors", lambda b: b[: len(b) // 3]),
    "optimizer_missing": ("optimizer.safetensors", None),
}


@pytest.mark.parametrize("damage", list(FOLDER_DAMAGE))
def test_a_pointer_to_a_damaged_folder_falls_back_to_an_older_complete_one(tmp_path, tiny_mlp, digits, caplog,
                                                                         damage):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save(ckpt, model, optimizer, {1: True, 2: False})
    name, change = FOLDER_DAMAGE[damage]
    file = tmp_path / "epoch-0002" / name
    if change is None:
        file.unlink()
    else:
        file.write_bytes(change(file.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="sparring.runtime.checkpoint"):
        assert ckpt.latest() == tmp_path / "epoch-0001"
    assert "epoch-0002" in caplog.text and name in caplog.text


def test_a_damaged_best_pointer_uses_the_best_epoch_in_the_metadata_and_keeps_that_folder(tmp_path, tiny_mlp, digits,
                                                                                          caplog):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save(ckpt, model, optimizer, {1: True, 2: False}, best_epoch=1)
    (tmp_path / "best.json").write_text("not json")
    with caplog.at_level(logging.WARNING, logger="sparring.runtime.checkpoint"):
        assert ckpt.best() == tmp_path / "epoch-0001"
    assert str(tmp_path / "best.json") in caplog.text
    save(ckpt, model, optimizer, {3: False}, best_epoch=1)  # pruning must not take the best folder
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0001", "epoch-0003"]


def test_a_damaged_best_pointer_that_cannot_be_resolved_prunes_nothing(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save(ckpt, model, optimizer, {1: True, 2: False})  # no best_epoch in meta
    (tmp_path / "best.json").write_text('{"checkpoint": ')
    assert ckpt.best() is None
    save(ckpt, model, optimizer, {3: False})
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0001", "epoch-0002", "epoch-0003"]
    save(ckpt, model, optimizer, {4: True})  # a new best rewrites best.json; pruning resumes
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0004"]


# --------------------------------------------------------------------------- loading a damaged epoch folder
LOAD_DAMAGE = {
    "meta_not_json": ("meta.json", lambda b: b"{ not json"),
    "meta_truncated": ("meta.json", lambda b: b[: len(b) // 2]),
    "meta_not_an_object": ("meta.json", lambda b: b"[]"),
    "meta_optimizer_part": ("meta.json", lambda b: json.dumps({**json.loads(b), "optimizer": {"scalars": 5}}).encode()),
    "model_truncated": ("model.safetensors", lambda b: b[:-7]),
    "model_garbage": ("model.safetensors", lambda b: b"\x10" + b[1:]),
    "optimizer_truncated": ("optimizer.safetensors", lambda b: b[: len(b) // 2]),
    "optimizer_empty": ("optimizer.safetensors", lambda b: b""),
}


@pytest.mark.parametrize("damage", list(LOAD_DAMAGE))
def test_loading_a_damaged_checkpoint_file_is_one_line_naming_it_and_changes_nothing(tmp_path, tiny_mlp, digits,
                                                                                     damage):
    model, optimizer = trained(tiny_mlp, digits)
    folder = CheckpointDir(tmp_path).save(epoch=0, model=model, optimizer=optimizer, meta={}, best=True)
    name, change = LOAD_DAMAGE[damage]
    file = folder / name
    file.write_bytes(change(file.read_bytes()))
    fresh = tiny_mlp(seed=3)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(RunFolderError) as error:
        CheckpointDir.load(folder, model=fresh, optimizer=fresh_optimizer)
    message = one_line(error)
    assert str(file) in message and "--overwrite" in message and f"delete the folder {folder}" in message
    assert same_state(fresh.state_dict(), before)
    assert fresh_optimizer.state_dict()["state"] == {}


def test_a_complete_checkpoint_still_round_trips(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    folder = CheckpointDir(tmp_path).save(epoch=0, model=model, optimizer=optimizer, meta={"x": 1}, best=True)
    fresh = tiny_mlp(seed=3)
    meta = CheckpointDir.load(folder, model=fresh, optimizer=torch.optim.Adam(fresh.parameters(), lr=0.01))
    assert meta["x"] == 1 and meta["epoch"] == 0
    assert same_state(fresh.state_dict(), model.state_dict())


# --------------------------------------------------------------------------- resume from epoch 0 through the CLI
CLI_CONFIG = """\
name: tiny
seed: 0
data: {source: digits}
model: {name: mlp, hidden: [16]}
objective: {name: standard}
train: {epochs: 2, batch_size: 256, optimizer: adam, lr: 0.01, weight_decay: 0.0, schedule: constant,
        val_size: 32, val_attack_steps: 1}
eval: {threat: {norm: linf, eps: 0.1}, max_samples: 32, attacks: [{name: fgsm}]}
"""


def run_cli(argv: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``sparring ARGV`` in process: (exit status, stderr)."""
    code, _, err = run_main(argv, cwd, monkeypatch, capsys)
    return code, err


def test_cli_resume_of_a_run_killed_before_its_first_checkpoint_starts_from_epoch_0(tmp_path, monkeypatch, capsys,
                                                                                    caplog):
    (tmp_path / "cfg.yaml").write_text(CLI_CONFIG)
    code, err = run_cli(["train", "cfg.yaml", "--out", "whole", "-q"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    killed = tmp_path / "killed"  # what a run killed before its first checkpoint leaves: marker, config, maybe a line
    killed.mkdir()
    for name in (".sparring-run.json", "config.yaml"):
        if (tmp_path / "whole" / name).is_file():
            shutil.copy(tmp_path / "whole" / name, killed / name)
    (killed / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 9.9}) + "\n")  # epoch 0, no checkpoint
    with caplog.at_level(logging.WARNING, logger="sparring.train"):
        code, err = run_cli(["train", "cfg.yaml", "--out", "killed", "--resume", "-q"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert "training starts from epoch 0" in caplog.text
    whole = load_file(tmp_path / "whole" / "checkpoints" / "model.safetensors")
    assert same_state(load_file(killed / "checkpoints" / "model.safetensors"), whole)
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]  # the killed run's line for epoch 0 was dropped, not kept twice
    assert [r["train_loss"] for r in lines] == [r["train_loss"] for r in reference]


# --------------------------------------------------------------------------- data files never run code
def cifar_batch(n: int, seed: int) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, size=n).tolist(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar10(folder: Path, protocol: int | None, *, test_batch: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    for i in (1, 2):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(6, seed=i), protocol=protocol))
    (folder / "test_batch").write_bytes(test_batch or pickle.dumps(cifar_batch(4, seed=9), protocol=protocol))
    names = [name.encode() for name in "plane car bird cat deer dog frog horse ship truck".split()]
    meta = {b"label_names": names, b"num_cases_per_batch": np.int64(6), b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [0, 2, None, 5], ids=["protocol0", "protocol2", "default", "protocol5"])
def test_a_plain_cifar_batch_loads_with_the_restricted_unpickler(tmp_path, protocol):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", protocol)
    train, test = load_data("cifar10", root=str(folder))
    assert len(train) == 12 and len(test) == 4 and train.class_names[-1] == "truck"
    expected = cifar_batch(6, seed=1)
    assert torch.equal(train.x[0], torch.from_numpy(expected[b"data"][0].reshape(3, 32, 32)).float() / 255)
    assert train.y[:6].tolist() == expected[b"labels"]


class _Touch:
    """A pickle that, once loaded by plain ``pickle.load``, creates ``marker`` through the callable it names."""

    def __init__(self, call: Any, marker: Path) -> None:
        self.call, self.marker = call, marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.call is os.system:
            return os.system, (f"touch {self.marker}",)
        return builtins.open, (str(self.marker), "w")


@pytest.mark.parametrize("call", [os.system, builtins.open], ids=["os.system", "open"])
@pytest.mark.parametrize("protocol", [2, None], ids=["protocol2", "default"])
def test_a_malicious_cifar_pickle_is_refused_and_never_runs(tmp_path, call, protocol):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Touch(call, marker)]}, protocol=protocol)
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", protocol, test_batch=evil)
    with pytest.raises(DataError) as error:
        load_data("cifar10", root=str(folder))
    message = one_line(error)
    assert "'test_batch'" in message and "is not a plain CIFAR batch" in message
    assert "data files never run code" in message
    name = "system" if call is os.system else "open"
    assert f"asks to load {call.__module__}.{name}" in message  # posix.system / builtins.open
    assert not marker.exists()


def raw_pickle(module: str, name: str, arg: str = "x") -> bytes:
    """Protocol 0: ``module.name(arg)``: GLOBAL, MARK, UNICODE, TUPLE, REDUCE, STOP."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize(("module", "name"), [
    ("numpy", "load"),  # a module that is allowed, a name that is not
    ("numpy.testing", "assert_equal"),
    ("numpy._core.multiarray", "array"),
    ("numpy.core.multiarray", "_reconstruct_anything"),
    ("builtins", "eval"),
    ("subprocess", "Popen"),
])
def test_safe_load_refuses_every_global_outside_the_allow_list(module, name):
    with pytest.raises(UnsafePickleError) as error:
        safe_load(io.BytesIO(raw_pickle(module, name)))
    assert error.value.what == f"{module}.{name}"


def test_safe_load_admits_latin1_bytes_only_through_codecs_encode():
    assert safe_load(io.BytesIO(pickle.dumps(b"\x00\xffabc", protocol=2))) == b"\x00\xffabc"
    rot13 = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(UnsafePickleError):
        safe_load(io.BytesIO(rot13))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_load_round_trips_plain_data_and_numpy_arrays(protocol):
    data = {"a": [1, 2.5, None, True], b"k": (b"bytes", "text"), "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
            "scalar": np.int64(7), "f": np.float32(0.5)}
    back = safe_load(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert back["a"] == data["a"] and back[b"k"] == data[b"k"] and back["scalar"] == 7 and back["f"] == 0.5
    assert back["arr"].dtype == np.float32 and np.array_equal(back["arr"], data["arr"])


def test_a_damaged_cifar_pickle_is_one_line(tmp_path):
    good = pickle.dumps(cifar_batch(4, seed=9), protocol=2)
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", 2, test_batch=good[: len(good) // 2])
    with pytest.raises(DataError) as error:
        load_data("cifar10", root=str(folder))
    assert "'test_batch'" in one_line(error)


# --------------------------------------------------------------------------- Hugging Face weights: safetensors
@pytest.fixture(scope="module")
def judge_folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT sequence classifier (a few thousand parameters) saved with safetensors and as a pickle only."""
    from transformers import BertConfig, BertForSequenceClassification

    from sparring.language.toy import word_tokenizer

    tokenizer = word_tokenizer(["how", "do", "i", "bake", "bread", "sorry"])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, max_position_embeddings=32, num_labels=2)
    net = BertForSequenceClassification(config).eval()
    root = tmp_path_factory.mktemp("judges")
    safe, pickled = root / "safetensors", root / "pickle"
    net.save_pretrained(safe)
    tokenizer.save_pretrained(safe)
    pickled.mkdir()
    config.save_pretrained(pickled)  # what save_pretrained(safe_serialization=False) wrote in transformers 4
    torch.save(net.state_dict(), pickled / "pytorch_model.bin")
    tokenizer.save_pretrained(pickled)
    return {"safetensors": safe, "pickle": pickled}


def test_hugging_face_weights_load_from_safetensors_by_default(judge_folders):
    from sparring.language.judge import ClassifierJudge

    judge = ClassifierJudge.from_path(judge_folders["safetensors"])
    assert judge.scores(["how do i bake bread"], ["sorry"]).shape == (1,)


def test_pickled_hugging_face_weights_are_refused_unless_allowed(judge_folders):
    from transformers import AutoModelForSequenceClassification

    from sparring.language.judge import ClassifierJudge
    from sparring.language.pretrained import load_pretrained

    folder = judge_folders["pickle"]
    with pytest.raises(DataError) as error:
        ClassifierJudge.from_path(folder)
    message = one_line(error)
    assert str(folder) in message and "pytorch_model.bin" in message and "allow_pickle_weights=True" in message
    with pytest.raises(DataError, match="safetensors"):
        load_pretrained(AutoModelForSequenceClassification, folder)
    allowed = ClassifierJudge.from_path(folder, allow_pickle_weights=True)
    reference = ClassifierJudge.from_path(judge_folders["safetensors"])
    prompts, responses = ["how do i bake bread", "bake"], ["sorry", "bread"]
    assert torch.allclose(allowed.scores(prompts, responses), reference.scores(prompts, responses))
