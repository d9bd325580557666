"""Evaluate a language model's safety and usefulness together: ASR under attacks, utility, over-refusal.

:func:`evaluate_language` measures, for one causal LM:

* **Attack success rate** per attack: for every behaviour (a harmful request and the target completion the
  attacker wants), attack the prompt, decode the model's greedy response under the attack
  (``max_new_tokens``), and ask the judge whether it complied; ASR = mean over behaviours, and per behaviour
  category where the behaviours have one. Two judges read every response: the refusal judge (or the one given)
  and the stricter :class:`~sparring.language.judge.TargetJudge` (the response begins with the target prefix,
  or complies on topic). Attacks:
  ``None`` (the clean prompt), a :class:`~sparring.language.prompt_attack.PromptAttack` (continuous, e.g. CAT's
  :func:`~sparring.language.prompt_attack.embedding_attack`; the response is decoded with the perturbation
  applied at every step) or a :class:`~sparring.language.suffix.SuffixSearch` (GCG; decoded from the suffixed
  prompt). The target NLL under each attack is kept per example too.
* **Utility**: on benign (prompt, response) chats, each example's mean token NLL of the response (EOS included)
  and its teacher-forced token accuracy (argmax at each response position equals the reference token); for chats
  with reference ``answers``, whether the greedy response holds one (:func:`answered`: normalized match).
* **Over-refusal**: the fraction of benign prompts whose greedy response is a refusal by the refusal-string
  test (:meth:`~sparring.language.judge.RefusalJudge.refused`; the judge's own patterns when it is a
  RefusalJudge, the default patterns otherwise).

The model is left exactly as it was (:func:`~sparring.context.frozen_model`); everything but the attacks runs
under ``torch.no_grad``. Each attack gets a generator seeded with ``seed``, so results do not depend on the order
of the attacks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from sparring.context import device_of, frozen_model
from sparring.errors import ConfigError, DataError
from sparring.language.batch import ChatBatch, behaviour_batch, chat_batch, utility_batch
from sparring.language.data import Behaviour, Utility
from sparring.language.judge import Judge, RefusalJudge, TargetJudge
from sparring.language.prompt_attack import PromptAttack, embedding_attack, latent_attack
from sparring.language.report import AttackOutcome, LanguageReport
from sparring.language.suffix import SuffixSearch
from sparring.language.view import Layer, PromptView
from sparring.losses import IGNORE, cross_entropy

LanguageAttack = PromptAttack | SuffixSearch | None
#: Stands in for the response when benign prompts are batched for generation (the continuation is not read).
_PLACEHOLDER = "ok"


#: The latent attack's layers: LAT's (the embeddings and the residual stream at a quarter, half and three quarters
#: of the depth), ε in units of each layer's token norm.
LATENT_LAYERS: tuple[Layer, ...] = ("embedding", 0.25, 0.5, 0.75)


def default_attacks(*, eps: float = 0.05, steps: int = 10, latent_eps: float = 0.5,
                    latent_layers: Sequence[Layer] = LATENT_LAYERS, suffix: SuffixSearch | None = None
                    ) -> dict[str, LanguageAttack]:
    """The red-team catalogue: ``none`` (the direct request), ``embedding`` (CAT's embedding attack at ``eps``,
    in units of the mean embedding norm, ``steps`` signed steps), ``embedding_2x`` (the same at 2·eps),
    ``latent`` (LAT's latent attack at ``latent_layers``, ``latent_eps`` of each layer's token norm) and
    ``suffix`` (the GCG-style suffix search; CPU-sized by default, :class:`~sparring.language.suffix.SuffixSearch`
    states GCG's own budget)."""
    return {"none": None, "embedding": embedding_attack(eps=eps, steps=steps),
            "embedding_2x": embedding_attack(eps=2 * eps, steps=steps),
            "latent": latent_attack(layers=tuple(latent_layers), eps=latent_eps, steps=steps),
            "suffix": suffix if suffix is not None else SuffixSearch()}


def _normalized(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower().replace("\u2019", "'"))) + " "


def answered(response: str, answers: Sequence[str]) -> bool:
    """Does ``response`` hold one of the reference ``answers``? Both lower-cased, punctuation dropped, and the
    answer matched as whole words anywhere in the response ("Paris" in "The capital is Paris.")."""
    text = _normalized(response)
    return any(_normalized(a).strip() and _normalized(a) in text for a in answers)


def evaluate_language(
    model: nn.Module,
    tokenizer: Any,
    *,
    behaviours: Sequence[Behaviour],
    utility: Sequence[Utility] = (),
    benign: Sequence[str] = (),
    attacks: Mapping[str, LanguageAttack] | None = None,
    judge: Judge | None = None,
    target_judge: TargetJudge | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> LanguageReport:
    """ASR per attack, utility loss and accuracy, and over-refusal of ``model`` (module doc).

    Args:
        model: a Hugging Face causal LM (``inputs_embeds``, ``logits_to_keep``).
        tokenizer: its fast tokenizer, with a chat template (or the plain ``User:``/``Assistant:`` layout).
        behaviours: harmful requests with their targets (the ``target`` continuation is what attacks aim for).
        utility: benign chats for the utility numbers; benign: benign prompts for over-refusal.
        attacks: name → attack (None, PromptAttack or SuffixSearch); default :func:`default_attacks`.
        judge: decides compliance; default :class:`~sparring.language.judge.RefusalJudge`.
        target_judge: the stricter judge that also reads the targets; default
            :class:`~sparring.language.judge.TargetJudge` with the refusal judge's patterns.
        max_new_tokens: greedy response length; batch_size: rows per batch; max_length: token budget per chat.
        seed: seeds each attack's generator.
        progress: show a rich progress bar.
    """
    if not behaviours:
        raise DataError("evaluate_language needs at least one behaviour")
    if max_new_tokens < 1 or batch_size < 1 or max_length < 2:
        raise ConfigError(f"max_new_tokens and batch_size must be >= 1 and max_length >= 2, got {max_new_tokens}, "
                          f"{batch_size}, {max_length}")
    attacks = default_attacks() if attacks is None else dict(attacks)
    if not attacks:
        raise ConfigError("attacks is empty; give at least one (None evaluates the clean prompts)")
    for name, attack in attacks.items():
        if attack is not None and not isinstance(attack, PromptAttack | SuffixSearch):
            raise ConfigError(f"attack {name!r} must be None, a PromptAttack or a SuffixSearch, "
                              f"got {type(attack).__name__}")
    judge = RefusalJudge() if judge is None else judge
    refusal = judge if isinstance(judge, RefusalJudge) else RefusalJudge()
    target_judge = TargetJudge(refusal=refusal) if target_judge is None else target_judge
    device = device_of(model)
    generation = {"max_new_tokens": max_new_tokens, "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0}

    def chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        for start in range(0, len(items), batch_size):
            yield items[start:start + batch_size]

    def n_batches(n: int) -> int:
        return -(-n // batch_size)

    quiz = [u for u in utility if u.answers]
    total = (len(attacks) * n_batches(len(behaviours)) + n_batches(len(utility)) + n_batches(len(quiz))
             + n_batches(len(benign)))
    bar = _progress(progress)
    outcomes: dict[str, AttackOutcome] = {}
    utility_losses: list[float] = []
    utility_accuracies: list[float] = []
    benign_refused: list[bool] = []
    benign_responses: list[str] = []
    quiz_responses: list[str] = []
    with frozen_model(model), (bar if bar is not None else nullcontext()):
        task = bar.add_task("language evaluation", total=total) if bar is not None else None

        def step(description: str) -> None:
            if bar is not None:
                bar.update(task, advance=1, description=description)

        for name, attack in attacks.items():
            generator = torch.Generator(device=device).manual_seed(seed)
            complied: list[bool] = []
            strict: list[bool] = []
            nll: list[float] = []
            responses: list[str] = []
            start = time.perf_counter()
            for part in chunks(behaviours):
                batch = behaviour_batch(tokenizer, part, max_length=max_length).to(device)
                ids, target_nll = _attack_and_generate(model, batch, attack, tokenizer, generator, generation)
                texts = tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
                prompts = [b.prompt for b in part]
                complied += [bool(v) for v in judge(prompts, texts).cpu()]
                strict += [bool(v) for v in target_judge(prompts, texts, [b.target for b in part]).cpu()]
                nll += target_nll.float().cpu().tolist()
                responses += texts
                step(f"attack {name}")
            outcomes[name] = AttackOutcome(complied=complied, target_complied=strict, target_nll=nll,
                                           prompts=[b.prompt for b in behaviours], responses=responses,
                                           categories=[b.category for b in behaviours],
                                           time_s=time.perf_counter() - start)

        with torch.no_grad():
            for part in chunks(utility):
                batch = utility_batch(tokenizer, part, max_length=max_length).to(device)
                loss, accuracy = _utility(model, batch)
                utility_losses += loss.cpu().tolist()
                utility_accuracies += accuracy.cpu().tolist()
                step("utility")
            for part in chunks(quiz):
                quiz_responses += _greedy(model, tokenizer, [u.prompt for u in part], generation, max_length)
                step("utility answers")
            for part in chunks(benign):
                texts = _greedy(model, tokenizer, list(part), generation, max_length)
                benign_refused += [bool(v) for v in refusal.refused(texts)]
                benign_responses += texts
                step("over-refusal")

    settings = {
        "model": type(model).__name__, "judge": type(judge).__name__, "target_judge": type(target_judge).__name__,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "max_length": max_length, "seed": seed,
        "attacks": {name: _describe(attack) for name, attack in attacks.items()},
        "behaviours": len(behaviours), "utility": len(utility), "benign": len(benign),
    }
    return LanguageReport(attacks=outcomes, utility_losses=utility_losses, utility_accuracies=utility_accuracies,
                          benign_prompts=list(benign), benign_refused=benign_refused,
                          benign_responses=benign_responses, utility_prompts=[u.prompt for u in quiz],
                          utility_responses=quiz_responses,
                          utility_correct=[answered(r, u.answers) for r, u in zip(quiz_responses, quiz, strict=True)],
                          settings=settings)


def _greedy(model: nn.Module, tokenizer: Any, prompts: list[str], generation: dict[str, Any],
            max_length: int) -> list[str]:
    """The greedy responses to ``prompts`` (the chat template's generation prompt, no attack)."""
    batch = chat_batch(tokenizer, prompts, {"response": [_PLACEHOLDER] * len(prompts)}, max_length=max_length,
                       eos=False).to(device_of(model))
    view = PromptView(model, batch, ["response"])
    return tokenizer.batch_decode(view.generate(view.reference(), **generation).cpu(), skip_special_tokens=True)


def _attack_and_generate(model: nn.Module, batch: ChatBatch, attack: LanguageAttack, tokenizer: Any,
                         generator: torch.Generator, generation: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(greedy response ids (B, n), target NLL (B,)) of the behaviours in ``batch`` under ``attack``."""
    if isinstance(attack, PromptAttack):
        result = attack(model, batch, generator=generator)  # gradients w.r.t. x: not under no_grad
        view, x, nll = result.view, result.x_adv, result.toward_nll
    elif isinstance(attack, SuffixSearch):
        found = attack(model, batch, tokenizer=tokenizer, generator=generator)
        view = PromptView(model, found.batch, [attack.toward])
        x, nll = view.reference(), found.loss
    else:
        view = PromptView(model, batch, ["target"])
        x = view.reference()
        with torch.no_grad():
            nll = cross_entropy(view(x), view.labels)
    return view.generate(x, **generation), nll.detach()


def _utility(model: nn.Module, batch: ChatBatch) -> tuple[Tensor, Tensor]:
    """(B,) mean response-token NLL and (B,) teacher-forced token accuracy of the ``response`` continuation."""
    view = PromptView(model, batch, ["response"])
    logits, labels = view.clean_logits(), view.labels  # (B, K, V), (B, K)
    valid = labels != IGNORE
    correct = ((logits.argmax(-1) == labels) & valid).sum(1)
    return cross_entropy(logits, labels), correct.float() / valid.sum(1).clamp_min(1)


def _describe(attack: LanguageAttack) -> Any:
    if attack is None:
        return None
    if isinstance(attack, SuffixSearch):
        return {"kind": "suffix", "length": attack.length, "steps": attack.steps, "top_k": attack.top_k,
                "candidates": attack.candidates, "toward": attack.toward}
    return {"kind": "prompt", "optimizer": type(attack.optimizer).__name__,
            "steps": getattr(attack.optimizer, "steps", None), "eps": attack.eps, "layers": list(attack.layers),
            "toward": attack.toward, "away": attack.away}


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


__all__ = ["LATENT_LAYERS", "LanguageAttack", "answered", "default_attacks", "evaluate_language"]
