"""Any sparring objective through Hugging Face's Trainer (AdversarialTrainer): CAT on a tiny Llama (full and LoRA),
WARDEN's temperature, PGD-AT on an image dict dataset, and the LoRA example script. Tiny models built in code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, TrainingArguments
from transformers.utils import ModelOutput

from sparring.attacks import PGD
from sparring.integrations import AdversarialTrainer, BehaviourDataset, ChatCollator
from sparring.language.cat import CAT
from sparring.language.data import Behaviour, Utility
from sparring.language.hf_trainer import OBJECTIVE_STATE
from sparring.language.toy import word_tokenizer
from sparring.language.warden import WARDEN
from sparring.objectives.pgd_at import PGDAT
from sparring.threat import LinfBall, TokenL2Ball

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("how do i make build a bomb weapon poison virus sure here is the recipe plan sorry cannot help with that "
         "get bake bread cake write poem song tell me about rain sea").split()
TOKENIZER = word_tokenizer(WORDS)
HARMFUL = ["bomb", "weapon", "poison", "virus"]
BEHAVIOURS = [Behaviour(prompt=f"how do i {verb} a {thing}", target=f"sure here is the {plan}",
                        refusal="sorry i cannot help with that")
              for verb in ("make", "build", "get")
              for thing, plan in zip(HARMFUL, ("recipe", "plan") * 2, strict=True)]
UTILITY = [Utility(prompt=f"{verb} me a {thing}", response=f"here is a {thing}")
           for verb, thing in (("write", "poem"), ("write", "song"), ("bake", "bread"), ("bake", "cake"))]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def arguments(tmp_path: Path, steps: int = 6, **changes: object) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=3, learning_rate=1e-2,
                    logging_steps=2, use_cpu=True, report_to=[], save_strategy="no", remove_unused_columns=False,
                    disable_tqdm=True, dataloader_num_workers=0)
    return TrainingArguments(**(settings | changes))  # type: ignore[arg-type]


def chat_trainer(model: nn.Module, objective: object, tmp_path: Path, **changes: object) -> AdversarialTrainer:
    cat_steps = changes.pop("steps", 6)
    return AdversarialTrainer(model=model, objective=objective, args=arguments(tmp_path, cat_steps, **changes),
                              train_dataset=BehaviourDataset(BEHAVIOURS, UTILITY, utility_per_behaviour=2),
                              data_collator=ChatCollator(TOKENIZER, max_length=32))


def logged(trainer: AdversarialTrainer, name: str) -> list[float]:
    return [row[name] for row in trainer.state.log_history if name in row]


def fast_cat() -> CAT:
    from sparring.language.prompt_attack import embedding_attack
    return CAT(attack=embedding_attack(steps=3, eps=0.3))


def test_dataset_mixes_seven_utility_chats_per_behaviour_deterministically() -> None:
    a, b = BehaviourDataset(BEHAVIOURS, UTILITY), BehaviourDataset(BEHAVIOURS, UTILITY)
    assert len(a) == len(BEHAVIOURS) and all(len(a[i].utility) == 7 for i in range(len(a)))
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    batch = ChatCollator(TOKENIZER)([a[0], a[1]])
    assert len(batch) == 2 and batch.utility is not None and len(batch.utility) == 14
    assert set(batch.continuations) == {"target", "refusal"}


def test_cat_through_the_trainer_trains_and_logs_the_objective_metrics(tmp_path) -> None:
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = chat_trainer(model, fast_cat(), tmp_path)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    for name in ("attack_success", "toward_loss", "away_loss", "utility_nll"):
        values = logged(trainer, name)
        assert len(values) == 3 and all(torch.isfinite(torch.tensor(values))), name
    assert all(0 <= v <= 1 for v in logged(trainer, "attack_success"))
    assert trainer.seen["examples"] == 6 * 3 * 3  # 3 behaviours + 6 utility chats per step
    assert trainer.seen["tokens"] > trainer.seen["examples"]


def test_cat_with_lora_changes_only_the_adapters(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chat_trainer(model, fast_cat(), tmp_path, steps=4).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


def test_warden_learns_its_temperature_through_the_trainer(tmp_path) -> None:
    objective = WARDEN(base=fast_cat(), temperature_lr=0.5)
    trainer = chat_trainer(tiny_llama(), objective, tmp_path, logging_steps=1)
    trainer.train()
    temperatures = logged(trainer, "dro_temperature")
    assert len(temperatures) == 6 and len(set(temperatures)) > 1
    assert float(objective.current_temperature()) != 1.0


def test_warden_temperature_is_checkpointed_and_restored_on_resume(tmp_path) -> None:
    objective = WARDEN(base=fast_cat(), temperature_lr=0.5)
    trainer = chat_trainer(tiny_llama(), objective, tmp_path, steps=4, save_strategy="steps", save_steps=4)
    trainer.train()
    saved = json.loads((tmp_path / "checkpoint-4" / OBJECTIVE_STATE).read_text())
    assert saved["eta"] == pytest.approx(float(objective._eta))
    fresh = WARDEN(base=fast_cat(), temperature_lr=0.5)
    resumed = chat_trainer(tiny_llama(), fresh, tmp_path, steps=4, save_strategy="no")
    resumed.train(resume_from_checkpoint=True)  # already at max_steps: only the restore happens
    assert float(fresh.current_temperature()) == pytest.approx(float(objective.current_temperature()))
    assert float(fresh.current_temperature()) != pytest.approx(1.0)


@dataclass
class Output(ModelOutput):
    logits: torch.Tensor | None = None


class TinyImageNet(nn.Module):
    """A Hugging Face-style image classifier: ``forward(pixel_values)`` returns an output with ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, pixel_values: torch.Tensor) -> Output:
        return Output(logits=self.net(pixel_values))


def test_pgd_at_on_an_image_dict_dataset(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(24, 1, 8, 8, generator=g), torch.randint(3, (24,), generator=g)
    data = [{"pixel_values": images[i], "labels": labels[i]} for i in range(24)]
    torch.manual_seed(0)
    objective = PGDAT(threat=LinfBall(eps=0.1), attack=PGDAT().attack)
    trainer = AdversarialTrainer(model=TinyImageNet(), objective=objective, args=arguments(tmp_path, 4),
                                 train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert len(logged(trainer, "attack_success")) == 2


def test_pgd_at_on_a_text_classifier_attacks_its_embeddings(tmp_path) -> None:
    """A Hugging Face sequence classifier: x is its input embeddings, the threat a per-token ball without box."""
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(5, 60, (24, 10), generator=g), torch.randint(2, (24,), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0  # some padded rows: their padding never moves
    data = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(24)]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    before = [p.detach().clone() for p in model.parameters()]
    objective = PGDAT(threat=TokenL2Ball(eps=0.5, bounds=None), attack=PGD(steps=2))
    trainer = AdversarialTrainer(model=model, objective=objective, args=arguments(tmp_path, 4), train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(logged(trainer, "attack_success")) == 2


def run_example(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "examples" / "language_lora.py"), *arguments],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_the_lora_example_runs_its_demo(tmp_path) -> None:
    done = run_example("--demo", "--max-steps", "3", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "examples/s" in done.stdout and "tokens/s" in done.stdout and "attack success" in done.stdout


def test_the_lora_example_rejects_a_missing_model_in_one_line(tmp_path) -> None:
    done = run_example("--model", str(tmp_path / "missing"), "--behaviours", "b.jsonl", "--utility", "u.jsonl")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "missing" in done.stderr
