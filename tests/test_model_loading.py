"""Models and checkpoints users already have: ``load_weights`` on every file layout, ``load_model`` on every
``--model`` form, and the CLI end to end on a run folder, a registry name with a checkpoint, and a factory."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_cli import one_error_line, run_main
from torch import Tensor, nn

from sparring.data import Dataset
from sparring.errors import SparringError
from sparring.models import build_model, with_normalization
from sparring.models.loading import load_model
from sparring.runtime.checkpoint import load_weights, save_weights

SHAPE = (1, 8, 8)
MEAN, STD = [0.25], [0.5]


def cnn(seed: int = 0, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", input_shape=SHAPE, num_classes=num_classes).eval()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=SHAPE, num_classes=10).eval()


def probe() -> Tensor:
    return torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(7))


def same_outputs(a: nn.Module, b: nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(probe()), b.eval()(probe()))


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def prefixed(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v for k, v in sd.items()}


def one_line(exc: pytest.ExceptionInfo[SparringError]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def tiny_data() -> Dataset:
    return Dataset(x=torch.rand(12, *SHAPE), y=torch.arange(12) % 10, num_classes=10)


# --------------------------------------------------------------------------- load_weights: every layout
LAYOUTS: dict[str, Callable[[dict[str, Tensor]], object]] = {
    "plain.pt": lambda sd: sd,
    "nested.pth": lambda sd: {"state_dict": sd, "epoch": 3, "best_acc": 0.91},
    "model.bin": lambda sd: {"model": sd},
    "net.pt": lambda sd: {"net": sd, "args": {"lr": 0.1, "arch": "small_cnn"}},
    "model_state_dict.pt": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"state": {}, "lr": 0.1}},
    "dataparallel.pt": lambda sd: prefixed(sd, "module."),
    "compiled.pt": lambda sd: prefixed(sd, "_orig_mod."),
    "ddp_of_compiled.pt": lambda sd: {"state_dict": prefixed(sd, "module._orig_mod.")},
    "lightning.ckpt": lambda sd: {
        "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.6.6", "state_dict": prefixed(sd, "model."),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "hyper_parameters": {"lr": 0.1, "width": 32}, "loops": {}, "callbacks": {},
    },
    "lightning_with_loss_buffers.ckpt": lambda sd: {
        "state_dict": {**prefixed(sd, "model."), "criterion.weight": torch.ones(10)}
    },
    "ema_only.pt": lambda sd: {"model_ema": prefixed(sd, "module."), "epoch": 5},
    "backbone.pt": lambda sd: prefixed(sd, "encoder.backbone."),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_torch_save_layouts_load_exactly(tmp_path, name):
    source, target = cnn(seed=0), cnn(seed=1)
    assert not same_outputs(source, target)
    torch.save(LAYOUTS[name](state(source)), tmp_path / name)
    load_weights(target, tmp_path / name)
    assert same_outputs(source, target)


def test_legacy_torch_save_and_prefixed_safetensors_load(tmp_path):
    source = cnn(seed=0)
    torch.save(state(source), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(prefixed(state(source), "module."), str(tmp_path / "ddp.safetensors"))
    for name in ("legacy.pt", "ddp.safetensors"):
        target = cnn(seed=1)
        load_weights(target, tmp_path / name)
        assert same_outputs(source, target), name


def test_main_weights_win_over_ema(tmp_path):
    main, ema = cnn(seed=0), cnn(seed=2)
    torch.save({"state_dict_ema": state(ema), "state_dict": state(main)}, tmp_path / "both.pth")
    target = cnn(seed=1)
    load_weights(target, tmp_path / "both.pth")
    assert same_outputs(main, target)


def test_compiled_model_takes_a_plain_checkpoint(tmp_path):
    """The other direction: the model carries ``_orig_mod.`` (a module wrapper), the checkpoint does not."""
    source = cnn(seed=0)
    torch.save(state(source), tmp_path / "plain.pt")

    class Wrapper(nn.Module):  # what torch.compile's OptimizedModule looks like to state_dict
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

        def forward(self, x: Tensor) -> Tensor:
            return self._orig_mod(x)

    target = Wrapper(cnn(seed=1))
    load_weights(target, tmp_path / "plain.pt")
    assert same_outputs(source, target)


def test_bare_checkpoint_into_a_normalized_model_keeps_the_models_normalization(tmp_path):
    inner = cnn(seed=0)
    torch.save({"state_dict": prefixed(state(inner), "module.")}, tmp_path / "bare.pt")
    target = with_normalization(cnn(seed=1), MEAN, STD)
    load_weights(target, tmp_path / "bare.pt")
    assert target[0].mean.tolist() == MEAN and target[0].std.tolist() == STD
    assert same_outputs(with_normalization(inner, MEAN, STD), target)


def test_normalized_checkpoint_into_a_bare_model_loads_the_inner_model_and_says_so(tmp_path, caplog):
    inner = cnn(seed=0)
    torch.save(state(with_normalization(inner, MEAN, STD)), tmp_path / "wrapped.pt")
    target = cnn(seed=1)
    with caplog.at_level(logging.WARNING, logger="sparring.runtime.checkpoint"):
        load_weights(target, tmp_path / "wrapped.pt")
    assert same_outputs(inner, target)
    assert "with_normalization" in caplog.text and "0.25" in caplog.text


def test_normalized_lightning_checkpoint_into_a_normalized_model(tmp_path):
    source = with_normalization(cnn(seed=0), MEAN, STD)
    torch.save({"state_dict": prefixed(state(source), "model.")}, tmp_path / "x.ckpt")
    target = with_normalization(cnn(seed=1), [0.0], [1.0])
    load_weights(target, tmp_path / "x.ckpt")
    assert same_outputs(source, target) and target[0].mean.tolist() == MEAN  # the checkpoint's own normalization


# --------------------------------------------------------------------------- no full unpickle, ever
class RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: the harmless stand-in for code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class Hyper:
    lr = 0.1


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": state(cnn()), "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil_plain.pkl", "wb") as f:
        pickle.dump({"x": RunsCode(marker)}, f)
    for name in ("evil.pt", "evil_plain.pkl"):
        target = cnn(seed=1)
        before = state(target)
        with pytest.raises(SparringError) as info:
            load_weights(target, tmp_path / name)
        line = one_line(info)
        assert not marker.exists(), f"unpickling {name} ran code"
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
        if name == "evil.pt":
            assert "full unpickle" in line and "mkdir" in line and "state_dict()" in line and "safetensors" in line


def test_class_instances_and_whole_pickled_models_are_refused(tmp_path):
    torch.save({"state_dict": state(cnn()), "hparams": Hyper()}, tmp_path / "hparams.pt")
    torch.save(cnn(), tmp_path / "whole.pt")
    for name, global_name in (("hparams.pt", "Hyper"), ("whole.pt", "SmallCNN")):
        with pytest.raises(SparringError) as info:
            load_weights(cnn(seed=1), tmp_path / name)
        line = one_line(info)
        assert "full unpickle" in line and global_name in line and "torch.save(model.state_dict()" in line
    with pytest.raises(SparringError) as info:  # as --model: not TorchScript, and refused for the same reason
        load_model(str(tmp_path / "whole.pt"))
    assert "full unpickle" in one_line(info) and "torch.jit.script" in str(info.value)


# --------------------------------------------------------------------------- mismatches: one line with the fix
def test_other_class_count_names_the_fix_and_changes_nothing(tmp_path):
    torch.save({"state_dict": state(cnn(num_classes=10))}, tmp_path / "ten.pt")
    target = cnn(seed=1, num_classes=100)
    before = state(target)
    with pytest.raises(SparringError) as info:
        load_weights(target, tmp_path / "ten.pt")
    line = one_line(info)
    assert "does not match" in line and "2 with other shapes" in line
    assert "head.weight (10, 1024) vs (100, 1024)" in line
    assert "10 classes in head.weight but the model has 100" in line and "num_classes" in line
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_partial_prefix_names_the_prefix(tmp_path):
    sd = state(cnn())
    mixed = {(f"backbone.{k}" if k.startswith("features.") else k): v for k, v in sd.items()}
    mixed["backbone.extra.weight"] = torch.zeros(3)  # so dropping "backbone." alone does not fit either
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(SparringError) as info:
        load_weights(cnn(seed=1), tmp_path / "mixed.pt")
    line = one_line(info)
    assert "(read with the 'backbone.' prefix dropped where present): 1 unexpected (extra.weight)" in line
    assert "look like they carry a 'backbone.' prefix" in line and "build the architecture" in line


def test_another_architecture_lists_counts_and_suggests_rebuilding(tmp_path):
    torch.save(state(mlp()), tmp_path / "mlp.pt")
    with pytest.raises(SparringError) as info:
        load_weights(cnn(), tmp_path / "mlp.pt")
    line = one_line(info)
    assert "8 missing" in line and "6 unexpected" in line and "build the architecture" in line


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"epoch": 3, "lr": 0.1}, ["holds no state dict", "epoch, lr", "state_dict()"]),
        (b"PK\x03\x04 not really a zip", ["cannot read", "torch.save"]),
        (b"\x80\x02 truncated pickle", ["cannot read", "safetensors"]),
    ],
)
def test_unreadable_checkpoints_say_what_they_expected(tmp_path, content, words):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(SparringError) as info:
        load_weights(cnn(), path)
    line = one_line(info)
    assert all(word in line for word in words), line


# --------------------------------------------------------------------------- TorchScript: a whole model
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("suffix", [".pt", ".ts"])
def test_torchscript_is_a_model_not_a_checkpoint(tmp_path, how, suffix):
    source = cnn(seed=0)
    scripted = torch.jit.script(source) if how == "script" else torch.jit.trace(source, probe())
    path = tmp_path / f"model{suffix}"
    scripted.save(str(path))
    loaded = load_model(str(path))
    assert isinstance(loaded, nn.Module) and same_outputs(source, loaded)
    with pytest.raises(SparringError) as info:
        load_weights(cnn(seed=1), path)
    assert "TorchScript" in one_line(info) and f"--model {path}" in str(info.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_checkpoint_loads_into_a_torchscript_model(tmp_path):
    torch.jit.script(cnn(seed=0)).save(str(tmp_path / "arch.ts"))
    other = cnn(seed=3)
    torch.save({"model": prefixed(state(other), "module.")}, tmp_path / "weights.pth")
    assert same_outputs(other, load_model(str(tmp_path / "arch.ts"), checkpoint=tmp_path / "weights.pth"))


def test_weights_file_as_model_says_to_pass_it_as_checkpoint(tmp_path):
    torch.save(state(cnn()), tmp_path / "weights.pt")
    save_weights(cnn(), tmp_path / "weights.safetensors")
    for name in ("weights.pt", "weights.safetensors"):
        with pytest.raises(SparringError) as info:
            load_model(str(tmp_path / name))
        assert "--checkpoint" in one_line(info) and "small_cnn" in str(info.value)


# --------------------------------------------------------------------------- load_model: the --model forms
def write_run(folder: Path, model: nn.Module, *, name: str, settings: dict, normalize: dict | None) -> None:
    ckpt = folder / "checkpoints"
    save_weights(model, ckpt / "model.safetensors")
    (ckpt / "model.json").write_text(json.dumps({
        "name": name, "settings": settings, "normalize": normalize, "input_shape": list(SHAPE), "num_classes": 10,
    }))


def test_run_folder_and_its_checkpoints_folder(tmp_path, tiny_data):
    torch.manual_seed(0)
    source = with_normalization(build_model("mlp", input_shape=SHAPE, num_classes=10, hidden=(16,)), MEAN, STD)
    write_run(tmp_path / "run", source, name="mlp", settings={"hidden": [16]}, normalize={"mean": MEAN, "std": STD})
    for spec in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        loaded = load_model(str(spec), data=tiny_data)
        assert same_outputs(source, loaded)
    other = with_normalization(build_model("mlp", input_shape=SHAPE, num_classes=10, hidden=(16,)), MEAN, STD)
    save_weights(other, tmp_path / "other.safetensors")
    assert same_outputs(other, load_model(str(tmp_path / "run"), checkpoint=tmp_path / "other.safetensors"))


def test_run_folder_on_other_data_names_both(tmp_path):
    write_run(tmp_path / "run", cnn(), name="small_cnn", settings={}, normalize=None)
    data = Dataset(x=torch.rand(6, 3, 8, 8), y=torch.arange(6) % 5, num_classes=5)
    with pytest.raises(SparringError) as info:
        load_model(str(tmp_path / "run"), data=data)
    line = one_line(info)
    assert "(1, 8, 8) with 10 classes" in line and "(3, 8, 8) with 5 classes" in line


def test_registry_name_is_sized_by_the_data(tmp_path, tiny_data):
    source = cnn(seed=0)
    torch.save({"state_dict": state(source)}, tmp_path / "x.pt")
    assert same_outputs(source, load_model("small_cnn", checkpoint=tmp_path / "x.pt", data=tiny_data))
    with pytest.raises(SparringError) as info:
        load_model("small_cnn")
    assert "--data" in one_line(info)


MODULE = """\
from sparring.models import build_model


def make(input_shape, num_classes):
    return build_model("small_cnn", input_shape=input_shape, num_classes=num_classes)


def make_fixed():
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10)


def broken():
    raise RuntimeError("no GPU found")


def not_a_model():
    return {"weights": 1}
"""


def test_module_factory_from_the_current_folder(tmp_path, monkeypatch, tiny_data):
    module = "sparring_test_mymodels_cwd"
    (tmp_path / f"{module}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    path_before = list(sys.path)
    source = cnn(seed=0)
    torch.save(state(source), tmp_path / "w.pt")
    assert same_outputs(source, load_model(f"{module}:make", checkpoint="w.pt", data=tiny_data))
    assert isinstance(load_model(f"{module}:make_fixed"), nn.Module)
    assert sys.path == path_before
    monkeypatch.delitem(sys.modules, module, raising=False)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("FILE:broken", ["broken", "RuntimeError: no GPU found"]),
        ("FILE:not_a_model", ["not_a_model", "returned dict", "nn.Module"]),
        ("SYNTAX:make", ["syntax_error.py", "SyntaxError"]),
        ("sparring_no_such_module_here:make", ["sparring_no_such_module_here", "current folder"]),
        ("RAISES:make", ["raises_on_import.py", "ZeroDivisionError"]),
        ("small_cn", ["not something sparring can load", "small_cnn", "MODULE:FACTORY", "run folder", "TorchScript"]),
        ("nowhere/model.pt", ["not found"]),
        ("FILE", ["factories.py:FACTORY"]),
    ],
)
def test_model_spec_errors_are_one_line(tmp_path, monkeypatch, spec, words):
    (tmp_path / "factories.py").write_text(MODULE)
    (tmp_path / "syntax_error.py").write_text("def make(:\n    pass\n")
    (tmp_path / "raises_on_import.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    files = {"FILE": "factories.py", "SYNTAX": "syntax_error.py", "RAISES": "raises_on_import.py"}
    head, sep, tail = spec.partition(":")
    spec = files.get(head, head) + sep + tail
    with pytest.raises(SparringError) as info:
        load_model(spec, data=Dataset(x=torch.rand(2, *SHAPE), y=torch.zeros(2, dtype=torch.long), num_classes=10))
    line = one_line(info)
    assert all(word in line for word in words), line


def test_unfinished_run_points_at_its_latest_checkpoint(tmp_path):
    from sparring.runtime.checkpoint import CheckpointDir

    model = cnn()
    CheckpointDir(tmp_path / "run" / "checkpoints").save(
        epoch=2, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), meta={}, best=False
    )
    with pytest.raises(SparringError) as info:
        load_model(str(tmp_path / "run"))
    assert "not finished" in one_line(info) and "epoch-0002" in str(info.value)


# --------------------------------------------------------------------------- the CLI end to end
EVAL = ["--data", "digits", "--eps", "0.1", "--suite", "fast", "--max-samples", "20", "--eps-curve", "0,0.1", "-q"]


def eval_ok(argv: list[str], cwd: Path, monkeypatch, capsys) -> dict:
    code, _, err = run_main(["eval", *argv, *EVAL], cwd, monkeypatch, capsys)
    assert code == 0, err
    out = cwd / argv[argv.index("--out") + 1]
    return json.loads((out / "report.json").read_text())


def test_cli_eval_run_folder(tmp_path, monkeypatch, capsys, single_thread):
    write_run(tmp_path / "run", cnn(), name="small_cnn", settings={}, normalize={"mean": MEAN, "std": STD})
    report = eval_ok(["--model", "run", "--out", "ev"], tmp_path, monkeypatch, capsys)
    assert sum(row["n"] for row in report["per_class"]) == 20


def test_cli_eval_registry_name_with_a_torch_checkpoint(tmp_path, monkeypatch, capsys, single_thread):
    torch.save({"state_dict": prefixed(state(cnn()), "module.")}, tmp_path / "x.pt")
    report = eval_ok(["--model", "small_cnn", "--checkpoint", "x.pt", "--out", "ev"], tmp_path, monkeypatch, capsys)
    assert 0.0 <= report["clean_accuracy"] <= 1.0


def test_cli_eval_module_factory_in_the_current_folder(tmp_path, monkeypatch, capsys, single_thread):
    module = "sparring_test_mymod_cli"
    (tmp_path / f"{module}.py").write_text(MODULE)
    monkeypatch.delitem(sys.modules, module, raising=False)
    eval_ok(["--model", f"{module}:make_fixed", "--out", "ev"], tmp_path, monkeypatch, capsys)
    monkeypatch.delitem(sys.modules, module, raising=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cli_checkpoint_that_is_torchscript_or_a_pickle_is_one_line(tmp_path, monkeypatch, capsys):
    torch.jit.script(cnn()).save(str(tmp_path / "model.ts"))
    torch.save(cnn(), tmp_path / "whole.pt")
    for name, word in (("model.ts", "--model model.ts"), ("whole.pt", "full unpickle")):
        argv = ["eval", "--model", "small_cnn", "--checkpoint", name, "--out", "ev", *EVAL]
        code, _, err = run_main(argv, tmp_path, monkeypatch, capsys)
        assert code == 2 and word in one_error_line(err), err
