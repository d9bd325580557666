"""The ``language`` run task: a YAML config through the one run pipeline (train with LoRA on the core Trainer,
evaluate ASR / utility / over-refusal, write the run folder), resume, config errors, every language objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparring.config import load_any_config
from sparring.errors import ConfigError, DataError, RunFolderError
from sparring.experiment import run_experiment
from sparring.language.run_config import LanguageRunConfig
from sparring.language.run_data import LanguageEpochData
from sparring.report.views import VIEWS
from sparring.runtime.checkpoint import CheckpointDir
from sparring.tasks import TASKS

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one intra-op thread (conftest)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "configs" / "language_cat.yaml"


def parse(raw: dict) -> LanguageRunConfig:
    return TASKS.get("language")().parse(raw, source="test.yaml")


def small(objective: dict, **data: object) -> dict:
    """A tiny config: 4 toy behaviours, one batch of 4, one epoch."""
    return {"task": "language", "name": "small", "model": {"tiny": True}, "lora": {"r": 4},
            "data": {"toy": {"train": 4, "test": 1, "utility": 4, "utility_test": 1, "benign": 1}, **data},
            "objective": objective, "train": {"epochs": 1, "batch_size": 4, "utility_ratio": 1, "max_length": 48},
            "eval": {"max_new_tokens": 2}}


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("language") / "run"
    report = run_experiment(load_any_config(EXAMPLE), out, progress=False)
    assert report is not None
    return out, report


def test_example_config_writes_the_run_folder(example_run: tuple[Path, dict]) -> None:
    out, report = example_run
    for name in ("config.yaml", "metrics.jsonl", "report.json", "report.html", "checkpoints/model.json",
                 "checkpoints/adapter/adapter_model.safetensors", "checkpoints/adapter/tokenizer.json"):
        assert (out / name).is_file(), name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert "train_attack_success" in json.loads(lines[0])
    saved = json.loads((out / "report.json").read_text())
    assert saved["task"] == "language" and saved["run_name"] == "language_cat" and "schema_version" in saved
    assert set(saved["language"]["summary"]["asr"]) == {"none", "embedding"}
    assert saved["threat"]["space"] == "embedding" and saved["data"]["test_behaviours"] == 6
    assert json.loads((out / "checkpoints" / "model.json").read_text())["kind"] == "lora_adapter"
    assert "ASR" in (out / "report.html").read_text()
    view = VIEWS.get("language")
    loaded = view.load(out)
    assert set(view.headline(loaded)) == {"ASR none", "ASR embedding", "utility accuracy", "over-refusal"}
    assert view.summary_table(loaded).row_count == 5
    # the resolved config.yaml is itself a valid config that rebuilds the run
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert parse(resolved).objective["attack"]["steps"] == 2


def test_view_refuses_another_task(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"task": "recsys"}))
    with pytest.raises(RunFolderError, match="not a language-model run report"):
        VIEWS.get("language").load(tmp_path)


def test_resume_ends_with_the_same_adapter(example_run: tuple[Path, dict], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after epoch 0's checkpoint and resumed: the same adapter weights as the uninterrupted run, bitwise
    (everything random derives from (seed, epoch); CPU kernels are deterministic)."""
    reference, _ = example_run
    save = CheckpointDir.save

    def save_then_die(self: CheckpointDir, **kwargs: object) -> Path:
        save(self, **kwargs)
        raise KeyboardInterrupt

    config = load_any_config(EXAMPLE)
    out = tmp_path / "run"
    monkeypatch.setattr(CheckpointDir, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, progress=False)
    monkeypatch.setattr(CheckpointDir, "save", save)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    run_experiment(load_any_config(EXAMPLE), out, resume=True, evaluate_after=False, progress=False)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    got = load_file(out / "checkpoints" / "adapter" / "adapter_model.safetensors")
    want = load_file(reference / "checkpoints" / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys() and got
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"objective": {"name": "nope"}}, ConfigError, r"objective\.name: unknown objective 'nope'"),
    ({"objective": {"name": "pgd_at"}}, ConfigError, "'pgd_at' is not a language-model objective"),
    ({"data": {"behaviours": "missing.jsonl", "utility": "missing.jsonl"}}, DataError,
     r"data\.behaviours: no such file"),
    ({"objective": {"name": "cat", "attack": {"steps": 0}}}, ConfigError, r"objective\.attack\.steps"),
    ({"eval": {"attacks": ["none", "gcg"]}}, ConfigError, r"eval\.attacks: unknown attack 'gcg'"),
    ({"model": {"tiny": True, "path": "x"}}, ConfigError, "model: give one of path"),
    ({"train": {"utility_ratio": -1}}, ConfigError, r"train\.utility_ratio"),
    ({"train": {"optimiser": "adamw"}}, ConfigError, r"train\.optimiser: unknown field"),
    ({"objective": {"name": "localalign"}}, ConfigError, r"data\.injection: localalign"),
    ({"lora": {"rank": 4}}, ConfigError, r"lora\.rank: unknown field"),
])
def test_bad_configs_are_one_line(change: dict, error: type[Exception], match: str) -> None:
    raw = {**small({"name": "cat"}), **change}
    with pytest.raises(error, match=match) as caught:
        parse(raw)
    assert "\n" not in str(caught.value)


def test_epoch_data_mixes_utility_chats_by_seed_and_epoch() -> None:
    from sparring.language import safety_task, word_tokenizer

    task = safety_task(seed=0, train=6, test=1, utility=10, utility_test=1, benign=1)
    data = LanguageEpochData(word_tokenizer(task.words), task.train, task.utility, utility_ratio=3, seed=1)
    batch, y = data.batch([0, 2])
    assert y is None and len(batch) == 2 and batch.utility is not None and len(batch.utility) == 6
    assert set(batch.continuations) == {"target", "refusal"} and len(data) == 6 and data.class_counts() == [6]
    first = [data.chats(i) for i in range(6)]
    data.set_epoch(1)
    assert [data.chats(i) for i in range(6)] != first
    data.set_epoch(0)
    assert [data.chats(i) for i in range(6)] == first


@pytest.mark.parametrize("objective", [
    {"name": "cat", "attack": {"steps": 1}},
    {"name": "capo", "attack": {"steps": 1}},
    {"name": "lat", "attack": {"steps": 1, "layers": ["embedding", 0.5]}},
    {"name": "warden", "attack": {"steps": 1}},
    {"name": "localalign"},
])
def test_each_language_objective_trains_an_epoch(objective: dict, tmp_path: Path) -> None:
    extra = {"injection": "toy", "rejected": 2} if objective["name"] == "localalign" else {}
    config = parse(small(objective, **extra))
    run_experiment(config, tmp_path / "run", evaluate_after=False, progress=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["epoch"] == 0 and torch.isfinite(torch.tensor(record["train_loss"]))
    assert (tmp_path / "run" / "checkpoints" / "adapter" / "adapter_model.safetensors").is_file()
