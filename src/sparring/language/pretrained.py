"""Loading Hugging Face models from local folders: safetensors weights only, unless the caller opts in.

``from_pretrained`` reads ``model.safetensors`` (plain tensors) or, failing that, ``pytorch_model.bin``, a pickle:
unpickling can run whatever code the file names. :func:`load_pretrained` passes ``use_safetensors=True`` and
``local_files_only=True``, so a folder whose weights exist only as a pickle is refused in one line that says how
to convert it; ``allow_pickle_weights=True`` lifts that for files from a source you trust.

:func:`pretrained_model` loads a causal LM and its tokenizer from such a folder; :func:`adapter_folder` and
:func:`with_adapter` find and attach a saved LoRA adapter (``model.adapter`` of a language run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from sparring.errors import DataError

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_safetensors(path: str | Path, *, allow_pickle_weights: bool = False) -> None:
    """Raise :class:`DataError` if the local folder ``path`` holds its weights only as a pickle (and that is not
    allowed); a folder with no weights at all is left to ``from_pretrained``'s own error."""
    folder = Path(path)
    if allow_pickle_weights or not folder.is_dir():
        return
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if pickled:
        raise DataError(
            f"{folder} holds its weights only as a pickle ({pickled[0]}), and unpickling can run arbitrary code: "
            "convert it to safetensors (where you trust the file: from_pretrained(folder).save_pretrained(folder)) "
            "or pass allow_pickle_weights=True"
        )


def pretrained_kwargs(path: str | Path, *, allow_pickle_weights: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained(path, ...)``: local files only and safetensors weights only, unless
    ``allow_pickle_weights``; checks the folder first (:func:`check_safetensors`)."""
    check_safetensors(path, allow_pickle_weights=allow_pickle_weights)
    return {"local_files_only": True, "use_safetensors": None if allow_pickle_weights else True}


def load_pretrained(auto_class: Any, path: str | Path, *, allow_pickle_weights: bool = False, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(path, local_files_only=True, use_safetensors=True, **kwargs)``, after
    :func:`check_safetensors`; ``allow_pickle_weights=True`` also reads ``pytorch_model.bin`` (a pickle)."""
    return auto_class.from_pretrained(path, **pretrained_kwargs(path, allow_pickle_weights=allow_pickle_weights),
                                      **kwargs)


def pretrained_model(path: str, *, allow_pickle_weights: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_safetensors(path, allow_pickle_weights=allow_pickle_weights)
    try:  # transformers says "not a model folder" with OSError or ValueError
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = load_pretrained(AutoModelForCausalLM, path, allow_pickle_weights=allow_pickle_weights)
    except (OSError, ValueError) as error:
        raise DataError(f"model.path: {path}: cannot load a causal LM and its tokenizer: "
                        f"{' '.join(str(error).split())[:300]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer




def adapter_folder(path: str | Path) -> Path:
    """The LoRA adapter folder ``path`` names: a sparring run folder (``checkpoints/adapter``), its
    ``checkpoints`` folder, or a folder ``save_pretrained`` wrote (``adapter_config.json``)."""
    path = Path(path)
    for folder in (path / "checkpoints" / "adapter", path / "adapter", path):
        if (folder / "adapter_config.json").is_file():
            return folder
    raise DataError(f"model.adapter: {path} holds no LoRA adapter (a finished sparring language run with LoRA, or "
                    "a folder with adapter_config.json)")


def with_adapter(model: nn.Module, path: str | Path, *, trainable: bool) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with the LoRA adapter saved at ``path`` (:func:`adapter_folder`), trainable if asked; and the
    adapter's settings (r, alpha, dropout, target modules), which then apply to the run."""
    from peft import PeftModel

    folder = adapter_folder(path)
    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    try:
        model = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    except (ValueError, RuntimeError, KeyError) as error:
        raise DataError(f"model.adapter: {folder}: cannot load it onto this base model: "
                        f"{' '.join(str(error).split())[:300]}") from None
    lora = {"r": settings.get("r"), "alpha": settings.get("lora_alpha"), "dropout": settings.get("lora_dropout"),
            "target_modules": sorted(settings.get("target_modules") or [])}
    return model, lora


__all__ = ["adapter_folder", "check_safetensors", "load_pretrained", "pretrained_kwargs", "pretrained_model",
           "with_adapter"]
