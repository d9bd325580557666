"""Adversarial training of a causal LM with LoRA: CAT or WARDEN through Hugging Face's Trainer.

    python examples/language_lora.py --model PATH --behaviours behaviours.jsonl --utility utility.jsonl
    python examples/language_lora.py --demo --max-steps 3            # a tiny random Llama, seconds on a CPU

Every batch holds B behaviours (harmful prompt, harmful target, refusal) and 7B utility chats (CAT's 12.5% /
87.5% mix). CAT attacks each prompt's embeddings toward the harmful target, then trains, under that attack, to
refuse and not comply while the utility chats keep the model useful; WARDEN reweights the behaviours toward the
ones the attack breaks most. Only LoRA adapters (r 16 on the attention and MLP projections) are trained.

The Trainer is transformers' own (``AdversarialTrainer`` only swaps the loss), so ``accelerate launch`` or
``torchrun`` runs this script on several GPUs unchanged. At the end it prints the training throughput
(examples/s, tokens/s, measured around ``trainer.train()``) and the attack success rate: the share of the
behaviours for which the training attack made the model produce the target, averaged over the logged steps.

Inputs are read from files only (``local_files_only``): a checkpoint folder (``--model``) or, without one, a
config folder to build random weights from (``--random-init``, for throughput measurements).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sparring.errors import DataError, SparringError

WORDS = ("how do i make build get a bomb weapon poison virus sure here is the recipe plan sorry cannot help with "
         "that write bake me poem song bread cake").split()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face causal-LM checkpoint folder")
    source.add_argument("--random-init", metavar="ARCH_CONFIG_DIR", help="random weights from a config folder")
    source.add_argument("--demo", action="store_true", help="write a tiny random Llama and data, train on them")
    parser.add_argument("--behaviours", help="JSONL: prompt, target, refusal")
    parser.add_argument("--utility", help="JSONL: prompt, response")
    parser.add_argument("--objective", choices=("cat", "warden"), default="cat")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4, help="behaviours per batch (plus 7x utility chats)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", default="runs/language_lora")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="also read pytorch_model.bin (a pickle: it can run code) when --model has no safetensors")
    args = parser.parse_args(argv)
    if not args.demo and not (args.behaviours and args.utility):
        parser.error("--behaviours and --utility are needed (or --demo)")
    return args


def write_demo(folder: Path) -> tuple[Path, Path, Path]:
    """A tiny random Llama (hidden 64, 2 layers), its word tokenizer and small behaviour/utility files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparring.language.toy import word_tokenizer

    tokenizer = word_tokenizer(WORDS)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    behaviours = [{"prompt": f"how do i {verb} a {thing}", "target": f"sure here is the {plan}",
                   "refusal": "sorry i cannot help with that"}
                  for verb in ("make", "build", "get")
                  for thing, plan in (("bomb", "recipe"), ("weapon", "plan"), ("poison", "recipe"), ("virus", "plan"))]
    utility = [{"prompt": f"{verb} me a {thing}", "response": f"here is a {thing}"}
               for verb, thing in (("write", "poem"), ("write", "song"), ("bake", "bread"), ("bake", "cake"))]
    for name, rows in (("behaviours", behaviours), ("utility", utility)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "model", folder / "behaviours.jsonl", folder / "utility.jsonl"


def model_folder(args: argparse.Namespace) -> Path:
    folder = Path(args.model or args.random_init)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (pass a Hugging Face model or config folder)")
    return folder


def load_model(args: argparse.Namespace):  # noqa: ANN201 (transformers types)
    """(model, tokenizer) from a checkpoint folder, or random weights from a config folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sparring.language.pretrained import check_safetensors, load_pretrained

    folder = model_folder(args)
    allow_pickle = getattr(args, "allow_pickle_weights", False)
    if args.model:
        check_safetensors(folder, allow_pickle_weights=allow_pickle)  # safetensors only, unless allowed
    try:  # transformers says "not a model folder" with OSError or ValueError
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if args.model:
            model = load_pretrained(AutoModelForCausalLM, folder, allow_pickle_weights=allow_pickle)
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError) as error:
        raise DataError(f"{folder}: cannot load a causal LM and its tokenizer: {str(error).strip()}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def train(args: argparse.Namespace) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from sparring.integrations import AdversarialTrainer, BehaviourDataset, ChatCollator
    from sparring.language.cat import CAT
    from sparring.language.data import read_jsonl
    from sparring.language.warden import WARDEN

    model_folder(args)  # fail fast, before reading the data
    behaviours = read_jsonl(args.behaviours, "behaviour")
    utility = read_jsonl(args.utility, "utility")
    model, tokenizer = load_model(args)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    objective = CAT() if args.objective == "cat" else WARDEN()

    trainer = AdversarialTrainer(
        model=model,
        objective=objective,
        args=TrainingArguments(
            output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, bf16=args.bf16, logging_steps=1, save_strategy="no", report_to=[],
            remove_unused_columns=False,  # the collator needs the records themselves
            disable_tqdm=True,
        ),
        train_dataset=BehaviourDataset(behaviours, utility, utility_per_behaviour=7),
        data_collator=ChatCollator(tokenizer, max_length=args.max_length),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start

    seen = trainer.seen  # this process's examples (behaviours + utility chats) and non-padding tokens
    world = trainer.args.world_size
    success = [row["attack_success"] for row in trainer.state.log_history if "attack_success" in row]
    asr = sum(success) / len(success) if success else float("nan")
    print(f"objective {args.objective}, {trainer.state.global_step} steps in {seconds:.1f} s on "
          f"{world} x {trainer.args.device}")
    print(f"throughput: {world * seen['examples'] / seconds:.1f} examples/s, "
          f"{world * seen['tokens'] / seconds:.0f} tokens/s")
    print(f"attack success rate: {asr:.3f} (mean over {len(success)} logged steps)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.demo:
            with tempfile.TemporaryDirectory() as tmp:
                args.model, args.behaviours, args.utility = write_demo(Path(tmp))
                train(args)
        else:
            train(args)
    except (SparringError, OSError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
