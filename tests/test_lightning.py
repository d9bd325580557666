"""Lightning integration: any objective through the AdversarialTraining callback (PGD-AT beats standard training
under PGD, TRADES, DRO's temperature through a checkpoint) and RobustEvaluation at validation end. Lightning's CPU
trainer on scikit-learn digits with a small MLP."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from sparring.attacks import PGD  # noqa: E402
from sparring.data import load_data  # noqa: E402
from sparring.errors import ConfigError  # noqa: E402
from sparring.integrations.lightning import AdversarialTraining, RobustEvaluation  # noqa: E402
from sparring.models import build_model  # noqa: E402
from sparring.objectives.dro import DRO  # noqa: E402
from sparring.objectives.pgd_at import PGDAT  # noqa: E402
from sparring.objectives.trades import TRADES  # noqa: E402
from sparring.threat import LinfBall  # noqa: E402

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
              pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
              pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\)")]  # Lightning's, with torch 2.13
THREAT = LinfBall(eps=0.1)


class DigitsNet(L.LightningModule):
    """A plain classifier module: standard training_step, forward x → logits. Nothing adversarial in it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64,))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/accuracy", (self(x).argmax(1) == y).float().mean(), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class NoForward(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(64, 10)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.layer(batch[0].flatten(1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[Tensor, Tensor]]:
    train, test = load_data("digits")
    return {"train": (train.x, train.y), "test": (test.x[:256], test.y[:256])}


def loader(pair: tuple[Tensor, Tensor], *, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(*pair), batch_size=64, shuffle=shuffle, generator=generator)


def fit(module: L.LightningModule, data: dict[str, tuple[Tensor, Tensor]], *, epochs: int, callbacks: list,
        validate: bool = False, ckpt_path: str | None = None, **changes: Any) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    settings = dict(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    log_every_n_steps=1)
    trainer = L.Trainer(callbacks=callbacks, **(settings | changes))
    trainer.fit(module, loader(data["train"], shuffle=True), loader(data["test"]) if validate else None,
                ckpt_path=ckpt_path)
    return trainer


def pgd_accuracy(module: nn.Module, x: Tensor, y: Tensor) -> float:
    module.eval()
    result = PGD(steps=20)(module, x, y, THREAT, generator=torch.Generator().manual_seed(1))
    return float(result.robust.float().mean())


def test_pgd_at_through_the_callback_beats_standard_training(data: dict[str, tuple[Tensor, Tensor]]) -> None:
    standard = DigitsNet(seed=0)
    fit(standard, data, epochs=20, callbacks=[])
    adversarial = DigitsNet(seed=0)
    callback = AdversarialTraining(PGDAT(threat=THREAT, attack=PGD(steps=5, keep_best=False, score=False)))
    trainer = fit(adversarial, data, epochs=20, callbacks=[callback])
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss_epoch"]))
    assert 0.0 <= float(metrics["train/attack_success_epoch"]) <= 1.0
    assert "training_step" not in adversarial.__dict__  # the class's own step again after fit
    x, y = data["test"]
    robust_standard, robust_adversarial = pgd_accuracy(standard, x, y), pgd_accuracy(adversarial, x, y)
    assert robust_adversarial > robust_standard + 0.15, (robust_standard, robust_adversarial)


def test_trades_through_the_same_callback(data: dict[str, tuple[Tensor, Tensor]]) -> None:
    module = DigitsNet(seed=0)
    trainer = fit(module, data, epochs=1, callbacks=[AdversarialTraining(TRADES(threat=THREAT, beta=3.0, steps=3))],
                  limit_train_batches=6)
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss_epoch"])) and float(metrics["train/kl_epoch"]) >= 0
    assert "train/adv_accuracy_step" in metrics
    assert not any("kl_per_example" in name for name in metrics)  # per-example vectors are not logged


def test_the_same_seed_gives_the_same_run(data: dict[str, tuple[Tensor, Tensor]]) -> None:
    def run(seed: int) -> Tensor:
        module = DigitsNet(seed=0)
        objective = PGDAT(threat=THREAT, attack=PGD(steps=2, keep_best=False, score=False))
        fit(module, data, epochs=1, callbacks=[AdversarialTraining(objective, seed=seed)], limit_train_batches=3)
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    first = run(0)
    assert torch.equal(first, run(0))  # the attacks' random starts come from (seed, step, batch, rank)
    assert not torch.equal(first, run(1))


class OwnStep(DigitsNet):
    """A module that keeps its own training step and calls the callback from it."""

    def __init__(self, adversarial: AdversarialTraining) -> None:
        super().__init__()
        self.adversarial = adversarial

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.adversarial.loss(self, batch, batch_idx)


def test_a_module_keeping_its_own_step_calls_the_callback(data: dict[str, tuple[Tensor, Tensor]]) -> None:
    callback = AdversarialTraining(PGDAT(threat=THREAT, attack=PGD(steps=2, keep_best=False, score=False)),
                                   replace_training_step=False, log_prefix="adv")
    module = OwnStep(callback)
    trainer = fit(module, data, epochs=1, callbacks=[callback], limit_train_batches=3)
    assert "training_step" not in module.__dict__ and "adv/attack_success_epoch" in trainer.callback_metrics


class Probe(L.Callback):
    """Records the module's modes, requires_grad flags and grads at validation end."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[bool], list[bool], list[bool]]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(([m.training for m in pl_module.modules()], [p.requires_grad for p in pl_module.parameters()],
                          [p.grad is None for p in pl_module.parameters()]))


def test_robust_evaluation_logs_accuracies_and_leaves_the_module_alone(
        data: dict[str, tuple[Tensor, Tensor]], tmp_path: Path) -> None:
    module = DigitsNet(seed=0)
    module.net.net[1].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    before, after = Probe(), Probe()
    evaluation = RobustEvaluation(THREAT, max_samples=96)  # the "fast" suite: APGD-CE
    fit(module, data, epochs=2, callbacks=[before, evaluation, after], validate=True, limit_train_batches=4,
        logger=L.loggers.CSVLogger(tmp_path, name="run"), num_sanity_val_steps=1)  # skipped by the callback
    assert before.seen == after.seen and len(after.seen) == 3  # the sanity check, then 2 epochs
    assert evaluation.last is not None and len(evaluation.last.labels) == 96
    with (tmp_path / "run" / "version_0" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    logged = [(float(r["robust/clean_accuracy"]), float(r["robust/robust_accuracy"]))
              for r in rows if r.get("robust/robust_accuracy")]
    assert len(logged) == 2
    for clean, robust in logged:
        assert 0.0 <= robust <= clean <= 1.0
    assert logged[-1][0] > 0.5  # the module learned something: the held points are real validation points


def test_robust_evaluation_on_given_tensors(data: dict[str, tuple[Tensor, Tensor]]) -> None:
    x, y = data["test"]
    evaluation = RobustEvaluation(THREAT, suite=[PGD(steps=5)], data=(x[:32], y[:32]), every_n_epochs=2)
    trainer = fit(DigitsNet(seed=0), data, epochs=2, callbacks=[evaluation], validate=True, limit_train_batches=2,
                  limit_val_batches=1)
    assert evaluation.last is not None and len(evaluation.last.labels) == 32  # evaluated once, at epoch 2
    assert 0.0 <= float(trainer.callback_metrics["robust/robust_accuracy"]) <= 1.0


def test_dro_temperature_survives_a_lightning_checkpoint(
        data: dict[str, tuple[Tensor, Tensor]], tmp_path: Path) -> None:
    def dro() -> DRO:
        return DRO(base=PGDAT(threat=THREAT, attack=PGD(steps=2, keep_best=False, score=False)), temperature_lr=0.5)

    objective = dro()
    initial = float(objective.current_temperature())
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fit(DigitsNet(seed=0), data, epochs=2, callbacks=[AdversarialTraining(objective), checkpoint],
                  enable_checkpointing=True, limit_train_batches=5)
    learned = float(objective.current_temperature())
    assert learned != pytest.approx(initial)
    assert float(trainer.callback_metrics["train/dro_temperature_epoch"]) > 0

    fresh = dro()
    resumed = [AdversarialTraining(fresh), L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    fit(DigitsNet(seed=1), data, epochs=2, callbacks=resumed, enable_checkpointing=True, limit_train_batches=5,
        ckpt_path=str(tmp_path / "last.ckpt"))  # training already done: Lightning only restores
    assert float(fresh.current_temperature()) == pytest.approx(learned, rel=1e-6)


def test_misuse_is_one_line_config_errors(data: dict[str, tuple[Tensor, Tensor]]) -> None:
    with pytest.raises(ConfigError, match="no forward"):
        fit(NoForward(), data, epochs=1, callbacks=[AdversarialTraining(PGDAT(threat=THREAT))])
    with pytest.raises(ConfigError, match="not an nn.Module"):
        fit(DigitsNet(), data, epochs=1, callbacks=[AdversarialTraining(PGDAT(threat=THREAT), model="missing")])
    module = DigitsNet()
    def as_dict(rows: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        return {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}

    dicts = DataLoader(TensorDataset(*data["test"]), batch_size=8, collate_fn=as_dict)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[AdversarialTraining(PGDAT(threat=THREAT))])
    with pytest.raises(ConfigError, match="batch_to_xy"):
        trainer.fit(module, dicts)
    assert "training_step" not in module.__dict__  # removed even when fit failed
    with pytest.raises(ConfigError, match="sparring Objective"):
        AdversarialTraining(object())  # type: ignore[arg-type]
