"""Checkpoints: atomic epoch folders, latest/best pointers, pruning, exact round trips, clear errors,
safetensors only (no pickle)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import Tensor, nn

from sparring.errors import SparringError
from sparring.models import build_model
from sparring.runtime.checkpoint import CheckpointDir, load_weights, save_weights

pytestmark = pytest.mark.usefixtures("single_thread")


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99), weight_decay=1e-4)


def take_steps(model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, n: int, start: int = 0) -> None:
    x, y = data.x, data.y
    for i in range(start, start + n):
        xb, yb = x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()


def trained(tiny_mlp, digits, kind: str = "sgd", steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = tiny_mlp(seed=0)
    optimizer = make_optimizer(kind, model)
    take_steps(model, optimizer, digits[0], steps)
    return model, optimizer


def save_epochs(ckpt: CheckpointDir, model: nn.Module, optimizer: torch.optim.Optimizer, best: dict[int, bool]) -> None:
    for epoch, is_best in best.items():
        ckpt.save(epoch=epoch, model=model, optimizer=optimizer, meta={"note": f"epoch {epoch}"}, best=is_best)


def hidden_entries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    # JSON stores tuples (Adam's betas) as lists; torch accepts either, so compare the JSON forms
    assert json.loads(json.dumps(a["param_groups"])) == json.loads(json.dumps(b["param_groups"]))
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        sa, sb = a["state"][index], b["state"][index]
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], Tensor):
                assert isinstance(sb[key], Tensor), key
                assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
            else:
                assert sa[key] == sb[key], key


# --------------------------------------------------------------------------- layout, pointers, pruning
def test_save_writes_epoch_folder_and_latest_pointer(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    path = ckpt.save(epoch=3, model=model, optimizer=optimizer, meta={"history": [1, 2]}, best=False)
    assert path == tmp_path / "checkpoints" / "epoch-0003"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "optimizer.safetensors", "meta.json"}
    assert json.loads((ckpt.root / "latest.json").read_text()) == {"checkpoint": "epoch-0003", "epoch": 3}
    assert not (ckpt.root / "best.json").exists()
    assert ckpt.latest() == path
    assert ckpt.best() is None
    meta = json.loads((path / "meta.json").read_text())
    assert meta["epoch"] == 3 and meta["history"] == [1, 2]


def test_save_prunes_old_epochs_but_keeps_best(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save_epochs(ckpt, model, optimizer, {0: True, 1: False, 2: False})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch-0000", "epoch-0002"]
    assert ckpt.best() == tmp_path / "epoch-0000"
    assert ckpt.latest() == tmp_path / "epoch-0002"
    save_epochs(ckpt, model, optimizer, {3: True})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch-0003"]
    assert ckpt.best() == ckpt.latest() == tmp_path / "epoch-0003"
    assert json.loads((tmp_path / "best.json").read_text()) == {"checkpoint": "epoch-0003", "epoch": 3}


def test_save_leaves_no_temporary_files(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save_epochs(ckpt, model, optimizer, {0: True, 1: False, 2: True, 3: False})
    assert hidden_entries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "epoch-0002", "epoch-0003", "latest.json"]


def test_saving_the_same_epoch_twice_replaces_it(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    ckpt.save(epoch=1, model=model, optimizer=optimizer, meta={"v": 1}, best=False)
    ckpt.save(epoch=1, model=model, optimizer=optimizer, meta={"v": 2}, best=False)
    assert json.loads((tmp_path / "epoch-0001" / "meta.json").read_text())["v"] == 2
    assert hidden_entries(tmp_path) == []


def test_leftover_half_written_folder_does_not_break_latest(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    save_epochs(ckpt, model, optimizer, {3: True, 4: False})
    junk = tmp_path / ".epoch-0005.xyz"  # a run killed while writing epoch 5
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\x00\x01 half a tensor")
    (junk / "meta.json").write_text('{"epoch": 5, "hist')
    assert ckpt.latest() == tmp_path / "epoch-0004"
    assert ckpt.best() == tmp_path / "epoch-0003"
    restored = tiny_mlp(seed=7)
    meta = CheckpointDir.load(ckpt.latest(), model=restored)
    assert meta["epoch"] == 4
    assert_same_state(restored.state_dict(), model.state_dict())
    ckpt.save(epoch=5, model=model, optimizer=optimizer, meta={}, best=False)  # the next save sweeps it away
    assert not junk.exists()
    assert ckpt.latest() == tmp_path / "epoch-0005"


def test_pointer_to_an_incomplete_folder_is_ignored(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    assert ckpt.latest() is None  # empty folder
    save_epochs(ckpt, model, optimizer, {0: False})
    (tmp_path / "epoch-0000" / "meta.json").unlink()
    assert ckpt.latest() is None


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_model_and_optimizer_state_round_trip_exactly(tmp_path, tiny_mlp, digits, kind):
    model, optimizer = trained(tiny_mlp, digits, kind)
    ckpt = CheckpointDir(tmp_path)
    ckpt.save(epoch=0, model=model, optimizer=optimizer, meta={"k": "v"}, best=True)

    restored = tiny_mlp(seed=123)  # what resuming does: fresh objects, then load
    restored_opt = make_optimizer(kind, restored)
    assert any(not torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items())
    meta = CheckpointDir.load(ckpt.latest(), model=restored, optimizer=restored_opt)
    assert meta["k"] == "v" and meta["epoch"] == 0
    assert_same_state(restored.state_dict(), model.state_dict())
    assert_same_optimizer_state(restored_opt.state_dict(), optimizer.state_dict())

    take_steps(model, optimizer, digits[0], 2, start=3)  # and training continues identically
    take_steps(restored, restored_opt, digits[0], 2, start=3)
    assert_same_state(restored.state_dict(), model.state_dict())


def test_optimizer_without_state_round_trips(tmp_path, tiny_mlp):
    model = tiny_mlp()
    optimizer = make_optimizer("adam", model)  # never stepped: empty state
    CheckpointDir(tmp_path).save(epoch=0, model=model, optimizer=optimizer, meta={}, best=False)
    fresh = make_optimizer("adam", model)
    CheckpointDir.load(tmp_path / "epoch-0000", model=model, optimizer=fresh)
    assert fresh.state_dict()["state"] == {}
    assert_same_optimizer_state(fresh.state_dict(), optimizer.state_dict())


def test_save_and_load_weights(tmp_path, tiny_mlp):
    model = tiny_mlp(seed=1)
    save_weights(model, tmp_path / "sub" / "model.safetensors", metadata={"format": "pt"})
    assert hidden_entries(tmp_path) == []
    restored = tiny_mlp(seed=2)
    load_weights(restored, tmp_path / "sub" / "model.safetensors")
    assert_same_state(restored.state_dict(), model.state_dict())


# --------------------------------------------------------------------------- errors
def test_load_weights_into_another_architecture_raises(tmp_path, tiny_mlp):
    save_weights(tiny_mlp(), tmp_path / "model.safetensors")
    cnn = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(SparringError, match="does not match"):
        load_weights(cnn, tmp_path / "model.safetensors")


def test_load_weights_into_a_model_with_more_layers_raises(tmp_path, tiny_mlp):
    save_weights(tiny_mlp(hidden=(32,)), tmp_path / "model.safetensors")
    with pytest.raises(SparringError, match="model.safetensors"):
        load_weights(tiny_mlp(hidden=(32, 32)), tmp_path / "model.safetensors")


def test_load_weights_into_a_model_with_other_shapes_raises(tmp_path, tiny_mlp):
    """Same parameter names, different widths: must be a SparringError, not torch's RuntimeError."""
    save_weights(tiny_mlp(hidden=(32,)), tmp_path / "model.safetensors")
    with pytest.raises(SparringError, match="model.safetensors"):
        load_weights(tiny_mlp(hidden=(16,)), tmp_path / "model.safetensors")


def test_load_weights_missing_file_raises(tmp_path, tiny_mlp):
    with pytest.raises(SparringError, match="not found"):
        load_weights(tiny_mlp(), tmp_path / "nope.safetensors")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors_raises(tmp_path, tiny_mlp, damage):
    path = tmp_path / "model.safetensors"
    save_weights(tiny_mlp(), path)
    good = path.read_bytes()
    path.write_bytes({"garbage": b"this is not a tensor file at all" * 8, "truncated": good[: len(good) // 2],
                      "empty": b""}[damage])
    with pytest.raises(SparringError, match="cannot read"):
        load_weights(tiny_mlp(), path)


def test_corrupt_checkpoint_folder_raises_on_load(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits)
    ckpt = CheckpointDir(tmp_path)
    path = ckpt.save(epoch=0, model=model, optimizer=optimizer, meta={}, best=False)
    (path / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(SparringError):
        CheckpointDir.load(path, model=tiny_mlp())


# --------------------------------------------------------------------------- format: safetensors, no pickle
def test_checkpoint_files_are_safetensors_and_json(tmp_path, tiny_mlp, digits):
    model, optimizer = trained(tiny_mlp, digits, "adam")
    path = CheckpointDir(tmp_path).save(epoch=0, model=model, optimizer=optimizer, meta={}, best=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        raw = (path / name).read_bytes()
        assert not raw.startswith(b"PK") and not raw.startswith(b"\x80")  # neither torch.save zip nor pickle
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_len])  # the safetensors layout: u64 length + JSON header
        assert all("dtype" in v and "shape" in v for k, v in header.items() if k != "__metadata__")
        with safe_open(str(path / name), framework="pt") as f:
            assert len(list(f.keys())) > 0
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    json.loads((path / "meta.json").read_text())
    for pointer in ("latest.json", "best.json"):
        json.loads((tmp_path / pointer).read_text())


def test_failed_load_leaves_the_model_unchanged(tmp_path, tiny_mlp):
    """hidden (32,) → (32, 10): the first two layers fit, the third is missing; nothing may be half-loaded."""
    save_weights(tiny_mlp(seed=0, hidden=(32,)), tmp_path / "model.safetensors")
    target = tiny_mlp(seed=1, hidden=(32, 10))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(SparringError, match="does not match"):
        load_weights(target, tmp_path / "model.safetensors")
    assert_same_state(target.state_dict(), before)
