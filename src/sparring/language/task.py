"""The ``language`` run task: adversarial training of a causal LM from a YAML config, through the one run pipeline.

``sparring run examples/configs/language_cat.yaml``: config → data (behaviours, utility chats, benign prompts;
or the built-in toy safety task) → model (a local Hugging Face folder, or a tiny random Llama built in code) with
LoRA adapters (peft) → the core :class:`~sparring.train.Trainer` with a language objective (``cat``, ``capo``,
``lat``, ``warden``, ``localalign``) → :func:`~sparring.language.evaluate.evaluate_language` (ASR per attack,
utility, over-refusal) → the run folder (``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` with the adapter
and tokenizer, ``report.json``, ``report.html``); ``--resume`` continues from the newest checkpoint.

Why the core Trainer and not ``transformers.Trainer``: a run folder is the same for every domain (its resolved
config, ``metrics.jsonl``, atomic safetensors checkpoints, exact resume from ``(seed, epoch)``, the lock and the
marker), and it is the core Trainer that writes it; one loop for every domain means one resume logic to test and
one metrics format for ``sparring report`` / ``sparring compare``. The batches are what the Hugging Face adapter
(:mod:`sparring.language.hf_trainer`) builds, so both train the same thing; that adapter remains for users who
already drive ``transformers.Trainer`` (DeepSpeed, their own callbacks).

A config (every field below is optional unless said otherwise)::

    task: language
    name: language_cat
    seed: 0
    model: {source: smollm2}                  # or {path: models/llama}, or {tiny: true}; adapter: runs/refusal
                                              # (start from that run's LoRA adapter)
    lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: [q_proj, ...]}   # null: full fine-tuning
    data:
      behaviours: data/behaviours.jsonl       # prompt, target, refusal (required unless toy)
      utility: data/utility.jsonl             # prompt, response (required unless toy)
      benign: data/benign.txt                 # benign prompts for over-refusal (JSONL with "prompt", or lines)
      test_behaviours: data/test.jsonl        # else a seeded held-out split of test_fraction (0.25)
      injection: data/injection.jsonl         # prompt-injection tasks for localalign ("toy": built in code)
      toy: true                               # or {train: 32, test: 8, utility: 64, utility_test: 8, benign: 8}
      suite: redteam                          # or the built-in red-team suite (split: test | validation)
    objective: {name: cat, attack: {steps: 2}}   # attack: steps, eps, layers, relative; none: evaluate only
    train: {epochs: 1, batch_size: 4, lr: 2.0e-4, utility_ratio: 7, max_length: 256}
    eval: {attacks: [none, embedding, embedding_2x, latent, suffix], eps: 0.05, steps: 10, latent_eps: 0.5,
           latent_layers: [embedding, 0.25, 0.5, 0.75], suffix: {length: 8, steps: 20, top_k: 32, candidates: 64},
           max_new_tokens: 24, batch_size: 16, max_behaviours: null}

The defence ladder on a real chat model (``examples/configs/smollm2_*.yaml``): ``objective: none`` red-teams the
model as shipped; ``refusal`` tunes a LoRA adapter to refuse (the aligned baseline); ``cat``, ``warden`` and
``lat`` continue from that adapter (``model.adapter: runs/smollm2_refusal``). With LoRA, checkpoints hold the
trainable weights only (the adapter, a few MB), since the base is rebuilt from the config on resume.

LocalAlign trains on prompt-injection tasks (correct answers against near-target edits), not on behaviours:
``data.injection`` is then required (a JSONL of instruction, data, answer, injection, or ``toy``); the behaviours
are still what the ASR is measured on, and the held-out injection tasks add a near-target ASR to the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparring.errors import ConfigError, RunFolderError
from sparring.files import atomic_write_json
from sparring.language.pretrained import adapter_folder, pretrained_model, with_adapter
from sparring.language.prompt_attack import PromptAttack
from sparring.language.run_config import LanguageRunConfig, LoraSection, describe_objective
from sparring.language.run_data import LanguageEpochData, check_files, load_language_data
from sparring.objectives.base import walk
from sparring.tasks import TASKS, Job, Notify, Task
from sparring.train import Trainer, TrainResult

log = logging.getLogger(__name__)

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2}


def tiny_model(words: Sequence[str], *, seed: int, max_positions: int) -> tuple[nn.Module, Any]:
    """A tiny random Llama (:data:`TINY`) over a word tokenizer of ``words``, its weights drawn from ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparring.language.toy import word_tokenizer

    tokenizer = word_tokenizer(words)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY)
    return LlamaForCausalLM(config), tokenizer


def with_lora(model: nn.Module, spec: LoraSection, *, seed: int) -> nn.Module:
    """``model`` with LoRA adapters (peft); only the adapters train. Their initialization is drawn from ``seed``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, task_type="CAUSAL_LM",
                        target_modules=list(spec.target_modules))
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(f"lora.target_modules: {' '.join(str(error).split())[:300]}") from None


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


# --------------------------------------------------------------------------- the job
class LanguageJob(Job):
    """One language run: data, model (LoRA-wrapped), objective and settings, prepared before the folder is
    touched; trains through the core :class:`~sparring.train.Trainer` (see the module doc for why)."""

    def __init__(self, config: LanguageRunConfig) -> None:
        self.config = config
        self.objective = config.build_objective()
        self.train_cfg, self.utility_ratio, self.max_length = config.build_train()
        self.injection = self.objective is not None and any(inner.name == "localalign"
                                                             for inner in walk(self.objective))
        self.data = load_language_data(config, injection=self.injection)
        max_positions = self.max_length + config.eval.max_new_tokens + 16
        if config.model.tiny:
            self.model, self.tokenizer = tiny_model(self.data.words, seed=config.seed, max_positions=max_positions)
        elif config.model.source is not None:
            from sparring.language.builtin import load_builtin

            self.model, self.tokenizer = load_builtin(config.model.source, notify=lambda m: log.info("%s", m))
        else:
            assert config.model.path is not None
            self.model, self.tokenizer = pretrained_model(config.model.path,
                                                          allow_pickle_weights=config.model.allow_pickle_weights)
        self.lora: dict[str, Any] | None = None
        if config.model.adapter is not None:
            self.model, self.lora = with_adapter(self.model, config.model.adapter, trainable=self.objective is not None)
        elif config.lora is not None and self.objective is not None:
            self.model = with_lora(self.model, config.lora, seed=config.seed)
            self.lora = config.lora.model_dump()
        rows = self.data.injection if self.injection else self.data.train
        self.train_data = LanguageEpochData(self.tokenizer, rows, self.data.utility, utility_ratio=self.utility_ratio,
                                            max_length=self.max_length, seed=config.seed,
                                            rejected=config.data.rejected)
        self.trainer: Trainer | None = None
        self.result: TrainResult | None = None

    def resolved(self) -> dict[str, Any]:
        resolved = self.config.model_dump(mode="json")
        resolved["objective"] = describe_objective(self.objective) if self.objective is not None else "none"
        if self.config.model.adapter is not None:
            resolved["lora"] = self.lora  # the adapter's own settings
        train = {k: v for k, v in self.train_cfg.settings().items() if k != "seed"}  # the seed is the config's
        resolved["train"] = {**train, "utility_ratio": self.utility_ratio, "max_length": self.max_length}
        return resolved

    def headline(self) -> str:
        model = "a tiny random Llama" if self.config.model.tiny else self.config.model.describe()
        if self.config.model.adapter is not None:
            model += f" + the adapter of {self.config.model.adapter}"
        if self.objective is None:
            return f"red-teaming {model} on {self.data.source} (no training)"
        how = f"LoRA r {self.lora['r']}" if self.lora is not None else "full fine-tuning"
        return f"training {model} ({how}) with {self.objective.name} on {self.data.source}"

    def train(self, out: Path, *, resume: bool, progress: bool) -> None:
        if self.objective is None:
            return
        self.train_cfg.progress = progress
        self.trainer = Trainer(model=self.model, objective=self.objective, train=self.train_data, val=None,
                               config=self.train_cfg, out_dir=out,
                               checkpoint_weights="trainable" if self.lora is not None else "all")
        self.result = self.trainer.fit(resume=resume)
        self.model = self.trainer.accelerator.unwrap_model(self.trainer.model, keep_torch_compile=False)

    def save_model(self, folder: Path) -> None:
        """The LoRA adapter (``adapter/``), the whole model (``model/``) or, for a run that did not train, nothing
        but ``model.json``, with the tokenizer; ``model.json`` says which. Nothing is written outside ``folder``."""
        folder = Path(folder)
        if self.lora is not None:
            kind = "lora_adapter"
        else:
            kind = "full_model" if self.objective is not None else "base"
        if kind != "base":
            target = folder / ("adapter" if kind == "lora_adapter" else "model")
            target.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(target)  # peft saves the adapter only; a plain model its safetensors weights
            self.tokenizer.save_pretrained(target)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.config.model
        base: dict[str, Any] = ({"tiny": True, "seed": self.config.seed, "settings": TINY} if model.tiny
                                else {"source": model.source} if model.source is not None
                                else {"path": str(Path(model.path or "").resolve())})
        atomic_write_json(folder / "model.json", {
            "kind": kind, "folder": {"lora_adapter": "adapter", "full_model": "model"}.get(kind), "base": base,
            "lora": self.lora, "parameters": count_parameters(self.model),
            "load": {"lora_adapter": "peft.PeftModel.from_pretrained(base_model, folder)",
                     "full_model": "AutoModelForCausalLM.from_pretrained(folder)",
                     "base": "the base model as the config builds it"}[kind],
        })

    def load_trained(self, folder: Path) -> None:
        """The adapter (or whole model) :meth:`save_model` wrote, onto the base this config builds."""
        if self.objective is None:
            return  # nothing was trained: the config's own model (and adapter) is the model
        if self.lora is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            path = Path(folder) / "adapter" / "adapter_model.safetensors"
            if not path.is_file():
                raise RunFolderError(f"{path}: no saved adapter; the run did not finish training")
            set_peft_model_state_dict(self.model, load_file(path))
        else:
            path = Path(folder) / "model"
            if not path.is_dir():
                raise RunFolderError(f"{path}: no saved model; the run did not finish training")
            self.model = type(self.model).from_pretrained(path, local_files_only=True, use_safetensors=True)

    def evaluate(self, out: Path, *, progress: bool, notify: Notify) -> dict[str, Any] | None:
        from sparring.language.evaluate import evaluate_language

        config = self.config
        if self.trainer is None and not self.train_cfg.cpu and torch.cuda.is_available():
            self.model.to("cuda")  # nothing trained here (objective none, or eval --model): evaluate on the GPU
        attacks = config.eval.build_attacks()
        test = self.data.test[: config.eval.max_behaviours] if config.eval.max_behaviours else self.data.test
        report = evaluate_language(
            self.model, self.tokenizer, behaviours=test, utility=self.data.utility_test, benign=self.data.benign,
            attacks=attacks, max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
            max_length=self.max_length, seed=config.seed, progress=progress,
        )
        body: dict[str, Any] = {
            "language": report.to_dict(),
            "model": {"source": config.model.describe(), "adapter": config.model.adapter, "lora": self.lora,
                      "parameters": count_parameters(self.model)},
            "objective": describe_objective(self.objective) if self.objective is not None else "none",
            "data": {"source": self.data.source, "train_behaviours": len(self.data.train),
                     "test_behaviours": len(test), "utility": len(self.data.utility),
                     "utility_test": len(self.data.utility_test), "benign": len(self.data.benign),
                     "injection": len(self.data.injection), "injection_test": len(self.data.injection_test),
                     "utility_ratio": self.utility_ratio},
        }
        if self.result is not None:
            body["training"] = self.result.summary()
        if self.data.injection_test:
            from sparring.language.localalign import injection_batch, near_target_asr

            batch = injection_batch(self.tokenizer, self.data.injection_test, rejected=config.data.rejected,
                                    seed=config.seed, max_length=self.max_length)
            hits = near_target_asr(self.model, batch.to(next(self.model.parameters()).device))
            body["injection"] = {"near_target_asr": float(hits.float().mean()), "n": len(hits)}
        return body

    def threat(self) -> dict[str, Any] | None:
        if "embedding" not in self.config.eval.attacks:
            return None
        attack = self.config.eval.build_attacks()["embedding"]
        assert isinstance(attack, PromptAttack)
        return {"norm": "l2", "eps": attack.eps, "space": "embedding", "per": "token",
                "relative_to": "mean embedding-row norm" if attack.relative else None,
                "steps": getattr(attack.optimizer, "steps", None)}


@TASKS.register("language")
class LanguageTask(Task):
    """Causal language models: LoRA adversarial training with a language objective, ASR / utility / over-refusal."""

    name = "language"
    config_type = LanguageRunConfig
    view = "language"

    def check(self, config: LanguageRunConfig) -> None:
        objective = config.build_objective()
        config.build_train()
        localalign = objective is not None and any(inner.name == "localalign" for inner in walk(objective))
        if config.data.injection is None and localalign:
            raise ConfigError("data.injection: localalign trains on prompt-injection tasks; give a JSONL file "
                              "(instruction, data, answer, injection) or injection: toy")
        check_files(config)

    def prepare(self, config: LanguageRunConfig) -> LanguageJob:
        return LanguageJob(config)


__all__ = ["LanguageJob", "LanguageTask", "adapter_folder", "count_parameters", "pretrained_model", "tiny_model",
           "with_adapter", "with_lora"]
