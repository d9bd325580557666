"""Loading Hugging Face models from local folders: safetensors weights only, unless the caller opts in.

``from_pretrained`` reads ``model.safetensors`` (plain tensors) or, failing that, ``pytorch_model.bin``, a pickle:
unpickling can run whatever code the file names. :func:`load_pretrained` passes ``use_safetensors=True`` and
``local_files_only=True``, so a folder whose weights exist only as a pickle is refused in one line that says how
to convert it; ``allow_pickle_weights=True`` lifts that for files from a source you trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
