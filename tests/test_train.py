"""The training loop: learning, PGD-AT, metrics.jsonl, LR schedules, accumulation, mixed precision,
early stopping with best-weight restore, config validation and exact resume."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from sparring.attacks import PGD
from sparring.errors import ConfigError, RunFolderError, SparringError
from sparring.losses import cross_entropy
from sparring.models import build_model
from sparring.objectives import PGDAT, TRADES, Objective, ObjectiveOutput, Standard
from sparring.runtime.checkpoint import CheckpointDir
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer, lr_factor

pytestmark = pytest.mark.usefixtures("single_thread")

METRIC_KEYS = {
    "epoch", "step", "lr", "train_loss", "train_accuracy", "time_s", "val_clean_accuracy", "val_robust_accuracy",
}


def fast_config(**overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        epochs=2, batch_size=64, optimizer="adam", lr=0.01, weight_decay=0.0, schedule="constant",
        val_size=64, val_attack_steps=2, progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def subset(ds: Any, n: int) -> tuple[Tensor, Tensor]:
    return ds.x[:n], ds.y[:n]


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key


def states_differ(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return any(not torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@dataclass(kw_only=True)
class LearnThenUnlearn(Objective):
    """CE descent in epoch 0, then CE *ascent*: validation accuracy peaks after epoch 0 (not registered)."""

    name = "learn_then_unlearn"
    sign: float = 1.0

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: Any = None) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(loss=self.sign * cross_entropy(logits, y), logits=logits)

    def on_epoch_end(self, model: nn.Module, *, epoch: int, holdout: Any, generator: Any = None) -> dict[str, Any]:
        self.sign = -1.0
        return {}


# --------------------------------------------------------------------------- learning
def test_standard_training_reduces_loss_and_improves_accuracy(digits, tiny_mlp):
    train, test = digits
    model = tiny_mlp()
    result = Trainer(
        model=model, objective=Standard(), train=subset(train, 512), val=subset(test, 128),
        config=fast_config(epochs=4, val_size=128),
    ).fit()
    first, last = result.history[0], result.history[-1]
    assert len(result.history) == 4
    assert last["train_loss"] < 0.6 * first["train_loss"]
    assert last["train_accuracy"] > first["train_accuracy"] + 0.2
    assert last["val_clean_accuracy"] > 0.75
    assert "val_robust_accuracy" not in last  # standard objective, no val_threat: no robust pass
    assert not result.stopped_early


def test_pgd_at_runs_and_logs_attack_success(digits, tiny_mlp, tmp_path):
    train, test = digits
    objective = PGDAT(threat=LinfBall(eps=0.1), attack=PGD(steps=2))
    result = Trainer(
        model=tiny_mlp(), objective=objective, train=subset(train, 256), val=subset(test, 64),
        config=fast_config(epochs=2), out_dir=tmp_path,
    ).fit()
    for record in result.history:
        assert 0.0 < record["train_attack_success"] <= 1.0
        assert 0.0 <= record["val_robust_accuracy"] <= 1.0  # the objective's threat is the default val threat
        assert math.isfinite(record["train_loss"])
    assert [r["train_attack_success"] for r in read_metrics(tmp_path)] == [
        r["train_attack_success"] for r in result.history
    ]


def test_trades_with_a_short_last_batch_logs_only_scalar_metrics(digits, tiny_mlp):
    train, _ = digits
    objective = TRADES(threat=LinfBall(eps=0.1), steps=2)
    result = Trainer(model=tiny_mlp(), objective=objective, train=subset(train, 100),
                     config=fast_config(epochs=1, batch_size=64)).fit()  # batches of 64 and 36
    record = result.history[0]
    assert math.isfinite(record["train_kl"]) and "train_kl_per_example" not in record


def test_metrics_jsonl_one_line_per_epoch_with_documented_keys(digits, tiny_mlp, tmp_path):
    train, test = digits
    trainer = Trainer(
        model=tiny_mlp(), objective=Standard(), train=subset(train, 256), val=subset(test, 64),
        config=fast_config(epochs=3, lr=0.02), val_threat=LinfBall(eps=0.1), out_dir=tmp_path,
    )
    result = trainer.fit()
    lines = read_metrics(tmp_path)
    assert len(lines) == 3
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert trainer.steps_per_epoch == 4
    assert [r["step"] for r in lines] == [4, 8, 12]
    for record in lines:
        assert METRIC_KEYS <= record.keys()
        assert record["lr"] == pytest.approx(0.02)
        assert record["time_s"] > 0
        for key in ("train_accuracy", "val_clean_accuracy", "val_robust_accuracy"):
            assert 0.0 <= record[key] <= 1.0
    assert lines == json.loads(json.dumps(result.history))


def test_no_out_dir_writes_nothing(digits, tiny_mlp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, _ = digits
    Trainer(model=tiny_mlp(), objective=Standard(), train=subset(train, 128), config=fast_config(epochs=1)).fit()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    ("schedule", "points"),
    [
        ("constant", {0.0: 1.0, 0.5: 1.0, 0.99: 1.0}),
        ("multistep", {0.0: 1.0, 0.49: 1.0, 0.5: 0.1, 0.74: 0.1, 0.75: 0.01, 1.0: 0.01}),
        ("cosine", {0.0: 1.0, 0.25: 0.5 + 0.5 * math.cos(math.pi / 4), 0.5: 0.5, 1.0: 0.0}),
        ("cyclic", {0.0: 0.0, 0.2: 0.5, 0.4: 1.0, 0.7: 0.5, 1.0: 0.0}),
    ],
)
def test_lr_factor(schedule, points):
    for progress, expected in points.items():
        assert lr_factor(schedule, progress, (0.5, 0.75), 0.1) == pytest.approx(expected, abs=1e-12), progress


def test_cyclic_schedule_peaks_at_two_fifths():
    grid = [i / 1000 for i in range(1001)]
    values = [lr_factor("cyclic", p, (), 0.1) for p in grid]
    assert grid[values.index(max(values))] == pytest.approx(0.4)
    assert max(values) == pytest.approx(1.0)
    assert min(values) == pytest.approx(0.0)


def test_unknown_schedule_raises():
    with pytest.raises(ConfigError, match="linear"):
        lr_factor("linear", 0.5, (), 0.1)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("cyclic", [0.5, 1.0, 2 / 3, 1 / 3, 0.0]),  # 4 steps per epoch, 20 in all: the peak after step 8
        ("cosine", [0.5 + 0.5 * math.cos(math.pi * e / 5) for e in range(1, 6)]),
        ("multistep", [1.0, 1.0, 0.1, 0.01, 0.01]),  # epochs end at 20%, 40%, ...: milestones 50% and 75%
    ],
)
def test_trainer_follows_the_schedule(digits, tiny_mlp, schedule, expected):
    train, _ = digits
    trainer = Trainer(
        model=tiny_mlp(), objective=Standard(), train=subset(train, 256),
        config=fast_config(epochs=5, optimizer="sgd", momentum=0.0, lr=0.05, schedule=schedule),
    )
    result = trainer.fit()
    assert [r["lr"] for r in result.history] == pytest.approx([0.05 * f for f in expected], abs=1e-9)


# --------------------------------------------------------------------------- accumulation, precision
def test_gradient_accumulation_counts_optimizer_steps(digits, tiny_mlp):
    train, _ = digits
    trainer = Trainer(
        model=tiny_mlp(), objective=Standard(), train=subset(train, 256),
        config=fast_config(epochs=2, grad_accumulation=2, schedule="cosine"),
    )
    result = trainer.fit()
    assert trainer.steps_per_epoch == 2  # 4 batches of 64, one optimizer step per 2
    assert [r["step"] for r in result.history] == [2, 4]
    assert result.history[0]["lr"] == pytest.approx(0.005)  # cosine at half of training
    steps = {float(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == {4.0}  # Adam stepped 4 times, not once per micro-batch (8)


def test_gradient_accumulation_matches_the_large_batch(digits, tiny_mlp):
    """Two accumulated micro-batches of 32 give the same SGD update as one batch of 64."""
    train, _ = digits
    states = []
    for batch, accumulation in ((64, 1), (32, 2)):
        model = tiny_mlp(seed=3)
        Trainer(
            model=model, objective=Standard(), train=subset(train, 256),
            config=fast_config(epochs=2, optimizer="sgd", momentum=0.0, lr=0.1, batch_size=batch,
                               grad_accumulation=accumulation),
        ).fit()
        states.append(model.state_dict())
    untrained = tiny_mlp(seed=3).state_dict()
    assert states_differ(states[0], untrained)
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-4, atol=1e-5)


def test_bf16_mixed_precision_runs_on_cpu(digits, tiny_mlp):
    train, test = digits
    model = tiny_mlp()
    seen: list[torch.dtype] = []
    model.net[1].register_forward_hook(lambda module, args, out: seen.append(out.dtype))  # first Linear
    result = Trainer(
        model=model, objective=Standard(), train=subset(train, 256), val=subset(test, 64),
        config=fast_config(epochs=2, mixed_precision="bf16", cpu=True), val_threat=LinfBall(eps=0.1),
    ).fit()
    assert seen and set(seen) == {torch.bfloat16}  # autocast really ran (training and validation)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_trainers_with_different_precisions_in_one_process(digits, tiny_mlp):
    """A notebook user trains in fp32, then in bf16, then in fp32 again: each Trainer gets its own setting."""
    train, _ = digits
    for precision in ("no", "bf16", "no"):
        model = tiny_mlp()
        seen: list[torch.dtype] = []
        model.net[1].register_forward_hook(lambda module, args, out, seen=seen: seen.append(out.dtype))
        Trainer(
            model=model, objective=Standard(), train=subset(train, 64),
            config=fast_config(epochs=1, mixed_precision=precision, cpu=True),
        ).fit()
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}, precision


def test_fp16_on_cpu_raises_config_error(digits, tiny_mlp):
    train, _ = digits
    with pytest.raises(ConfigError, match="fp16"):
        Trainer(
            model=tiny_mlp(), objective=Standard(), train=subset(train, 64),
            config=fast_config(mixed_precision="fp16", cpu=True),
        )


# --------------------------------------------------------------------------- early stopping
def _early_stopping_run(digits, tiny_mlp, out: Path, **overrides: Any):
    train, test = digits
    model = tiny_mlp()
    result = Trainer(
        model=model, objective=LearnThenUnlearn(), train=subset(train, 512), val=subset(test, 128),
        config=fast_config(epochs=6, early_stopping_patience=2, monitor="val_clean_accuracy", val_size=128,
                           **overrides),
        out_dir=out,
    ).fit()
    return model, result


def test_early_stopping_stops_and_restores_best_weights(digits, tiny_mlp, tmp_path):
    model, result = _early_stopping_run(digits, tiny_mlp, tmp_path)
    scores = [r["val_clean_accuracy"] for r in result.history]
    assert result.stopped_early
    assert len(result.history) == 3, scores  # best at epoch 0, then 2 epochs without improvement
    assert result.best_epoch == 0
    assert len(read_metrics(tmp_path)) == 3
    checkpoints = CheckpointDir(tmp_path / "checkpoints")
    assert checkpoints.best() == tmp_path / "checkpoints" / "epoch-0000"
    assert checkpoints.latest() == tmp_path / "checkpoints" / "epoch-0002"
    best = load_file(str(checkpoints.best() / "model.safetensors"))
    last = load_file(str(checkpoints.latest() / "model.safetensors"))
    assert states_differ(best, last)
    assert_same_state(model.state_dict(), best)  # restore_best defaults to on with early stopping


def test_early_stopping_without_restore_keeps_last_weights(digits, tiny_mlp, tmp_path):
    model, result = _early_stopping_run(digits, tiny_mlp, tmp_path, restore_best=False)
    assert result.stopped_early and result.best_epoch == 0
    last = load_file(str(CheckpointDir(tmp_path / "checkpoints").latest() / "model.safetensors"))
    assert_same_state(model.state_dict(), last)


# --------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0), ("batch_size", 0), ("grad_accumulation", 0), ("val_attack_steps", 0),
        ("lr", 0.0), ("lr", -0.1), ("early_stopping_patience", 0),
    ],
)
def test_invalid_train_config_raises(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_valid_train_config_is_accepted():
    cfg = TrainConfig(epochs=1, batch_size=1, grad_accumulation=1, lr=1e-6, early_stopping_patience=1)
    assert cfg.restore_best is None and cfg.schedule == "cosine"


# --------------------------------------------------------------------------- resume
RESUME_EPOCHS = 4


def _resume_trainer(digits, tiny_mlp, out: Path) -> tuple[nn.Module, Trainer]:
    """What a user builds for each attempt: a fresh model (same seed), objective and trainer."""
    train, test = digits
    model = tiny_mlp(seed=1)
    objective = PGDAT(threat=LinfBall(eps=0.1), attack=PGD(steps=1))  # random start: seeded randomness matters
    config = fast_config(
        epochs=RESUME_EPOCHS, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
        val_attack_steps=1, seed=5,
    )
    trainer = Trainer(
        model=model, objective=objective, train=subset(train, 192), val=subset(test, 64), config=config, out_dir=out
    )
    return model, trainer


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")

    def make(seed: int = 0) -> nn.Module:  # tiny_mlp is function-scoped
        torch.manual_seed(seed)
        return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))

    model, trainer = _resume_trainer(digits, make, out)
    trainer.fit()
    return model.state_dict(), read_metrics(out)


class Killed(Exception):
    """Stands in for the process dying."""


def _without_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.mark.parametrize("where", ["epoch_start", "after_train_steps", "before_checkpoint"])
def test_resume_reproduces_the_uninterrupted_run(digits, tiny_mlp, tmp_path, monkeypatch, uninterrupted, where):
    reference_state, reference_metrics = uninterrupted
    calls = {"n": 0}
    with monkeypatch.context() as patch:
        if where == "before_checkpoint":  # epoch 3's metrics line is written, its checkpoint is not
            real_save = CheckpointDir.save

            def save(self: CheckpointDir, **kwargs: Any) -> Path:
                calls["n"] += 1
                if calls["n"] == 3:
                    raise Killed
                return real_save(self, **kwargs)

            patch.setattr(CheckpointDir, "save", save)
        else:
            real_epoch = Trainer._train_epoch

            def train_epoch(self: Trainer, epoch: int, tick: Any) -> dict[str, Any]:
                calls["n"] += 1
                if calls["n"] == 3:
                    if where == "after_train_steps":  # the weights in memory moved on, nothing was saved
                        real_epoch(self, epoch, tick)
                    raise Killed
                return real_epoch(self, epoch, tick)

            patch.setattr(Trainer, "_train_epoch", train_epoch)
        _, first = _resume_trainer(digits, tiny_mlp, tmp_path)
        with pytest.raises(Killed):
            first.fit()
    assert len(read_metrics(tmp_path)) == (3 if where == "before_checkpoint" else 2)
    assert CheckpointDir(tmp_path / "checkpoints").latest() == tmp_path / "checkpoints" / "epoch-0001"

    model, second = _resume_trainer(digits, tiny_mlp, tmp_path)
    result = second.fit(resume=True)

    assert_same_state(model.state_dict(), reference_state)
    metrics = read_metrics(tmp_path)
    assert [r["epoch"] for r in metrics] == list(range(RESUME_EPOCHS))
    assert _without_time(metrics) == _without_time(reference_metrics)
    assert [r["epoch"] for r in result.history] == list(range(RESUME_EPOCHS))


@pytest.mark.parametrize("killed", ["before_the_first_epoch", "before_the_first_checkpoint"])
def test_resume_before_the_first_checkpoint_starts_from_epoch_0(
    digits, tiny_mlp, tmp_path, monkeypatch, caplog, uninterrupted, killed
):
    reference_state, reference_metrics = uninterrupted
    if killed == "before_the_first_checkpoint":  # epoch 0's metrics line is written, its checkpoint is not
        with monkeypatch.context() as patch:
            def save(self: CheckpointDir, **kwargs: Any) -> Path:
                raise Killed

            patch.setattr(CheckpointDir, "save", save)
            _, first = _resume_trainer(digits, tiny_mlp, tmp_path)
            with pytest.raises(Killed):
                first.fit()
        assert [r["epoch"] for r in read_metrics(tmp_path)] == [0]
    model, second = _resume_trainer(digits, tiny_mlp, tmp_path)
    with caplog.at_level(logging.WARNING, logger="sparring.train"):
        result = second.fit(resume=True)
    assert "training starts from epoch 0" in caplog.text
    assert_same_state(model.state_dict(), reference_state)
    assert _without_time(read_metrics(tmp_path)) == _without_time(reference_metrics)  # epoch 0 once, not twice
    assert [r["epoch"] for r in result.history] == list(range(RESUME_EPOCHS))


def _kill_after_two_epochs(digits, tiny_mlp, out: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_epoch = Trainer._train_epoch

    def train_epoch(self: Trainer, epoch: int, tick: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return real_epoch(self, epoch, tick)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_epoch", train_epoch)
        _, first = _resume_trainer(digits, tiny_mlp, out)
        with pytest.raises(Killed):
            first.fit()


@pytest.mark.parametrize("damage", ["latest_not_json", "latest_truncated", "latest_names_a_missing_folder",
                                    "latest_folder_truncated", "everything"])
def test_resume_past_a_damaged_checkpoint_reproduces_the_uninterrupted_run(
    digits, tiny_mlp, tmp_path, monkeypatch, caplog, uninterrupted, damage
):
    """A damaged pointer or epoch folder is not trusted: the newest complete epoch folder (or epoch 0) is used,
    with a warning, and since all randomness derives from (seed, epoch) the run still ends where it would have."""
    reference_state, reference_metrics = uninterrupted
    _kill_after_two_epochs(digits, tiny_mlp, tmp_path, monkeypatch)
    root = tmp_path / "checkpoints"
    pointer = root / "latest.json"
    if damage == "latest_not_json":
        pointer.write_text("{{{ not json")
    elif damage == "latest_truncated":
        pointer.write_text(pointer.read_text()[:9])
    elif damage == "latest_names_a_missing_folder":
        pointer.write_text(json.dumps({"checkpoint": "epoch-0042", "epoch": 42}))
    elif damage == "latest_folder_truncated":
        weights = root / "epoch-0001" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
    else:  # every epoch folder damaged: nothing complete is left, training restarts from epoch 0
        for folder in root.glob("epoch-*"):
            (folder / "optimizer.safetensors").write_bytes(b"")
    model, second = _resume_trainer(digits, tiny_mlp, tmp_path)
    with caplog.at_level(logging.WARNING):
        second.fit(resume=True)
    assert str(pointer) in caplog.text
    assert_same_state(model.state_dict(), reference_state)
    assert _without_time(read_metrics(tmp_path)) == _without_time(reference_metrics)


def test_resume_from_a_checkpoint_with_a_damaged_optimizer_part_is_one_line(digits, tiny_mlp, tmp_path, monkeypatch):
    _kill_after_two_epochs(digits, tiny_mlp, tmp_path, monkeypatch)
    meta_file = tmp_path / "checkpoints" / "epoch-0001" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["optimizer"]["param_groups"] = "lost"  # valid JSON, valid safetensors beside it: only loading can tell
    meta_file.write_text(json.dumps(meta))
    model, second = _resume_trainer(digits, tiny_mlp, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RunFolderError) as error:
        second.fit(resume=True)
    message = str(error.value)
    assert "\n" not in message and "epoch-0001" in message and "--overwrite" in message
    assert_same_state(model.state_dict(), before)  # nothing half-restored


def test_resume_without_out_dir_raises(digits, tiny_mlp):
    train, _ = digits
    trainer = Trainer(model=tiny_mlp(), objective=Standard(), train=subset(train, 64), config=fast_config())
    with pytest.raises(SparringError, match="run folder"):
        trainer.fit(resume=True)
