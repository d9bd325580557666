"""``torch.compile`` for attack loops and training steps: a compiled model that sparring treats like any other.

``compiled(model)`` returns ``torch.compile(model)``, a ``torch._dynamo.eval_frame.OptimizedModule``. It is an
``nn.Module`` whose only child is the original (``compiled(model)._orig_mod is model``), so everything sparring
does to a model works on it unchanged:

* ``train()`` / ``eval()``, ``parameters()``, ``buffers()`` and ``modules()`` reach the original's own
  modules and tensors (the same objects, not copies), so :func:`sparring.context.frozen_model` freezes and
  restores the original's training flags, ``requires_grad``, ``.grad`` and buffers, and an optimizer built
  on either trains the same weights.
* Attacks, objectives and the Trainer only call ``model(x)``; the first call with a new combination of
  (train/eval mode, grad mode, parameters' ``requires_grad``, input shape, dtype) compiles a graph, later
  calls reuse it. An attack (eval mode, frozen weights, input gradient), its scoring forward (no grad) and
  a training step (train mode, weight gradients) are three graphs; each new batch size is one more when
  ``dynamic=False`` (the default: static shapes give the fastest kernels; use ``dynamic=None`` when batch
  sizes vary a lot, as with PGD restarts on the still-robust rows). Past dynamo's recompile limit a
  function silently falls back to eager.
* **State dicts are not clean**: ``compiled(model).state_dict()`` prefixes every key with ``_orig_mod.``.
  Save and load through :func:`uncompiled` (``save_weights(uncompiled(model), path)``); accelerate's
  ``unwrap_model(model, keep_torch_compile=False)`` does the same for prepared models.

When it helps: on a GPU and for models whose step is dominated by many small kernels (ResNets, wide
networks at moderate batch size), where inductor's fusion of BatchNorm / ReLU / residual adds and of the
backward saves memory traffic; ``mode="max-autotune"`` adds CUDA graphs and tuned matmuls for long runs.
When it does not: tiny models on a CPU (the small CNN on 8x8 digits), where a compile costs tens of
seconds per graph (minutes for a ResNet's forward and backward, cold cache) against steps of milliseconds,
and oneDNN's eager convolutions leave little to fuse; short runs never earn the compile time back.
``benchmarks/scaling.py`` measures both sides (compile time apart from the steady-state speed-up).
Inductor caches compiled kernels on disk (``/tmp/torchinductor_$USER``), so a second process with the
same model and shapes compiles in seconds.

Failures: :func:`compiled` raises a :class:`~sparring.errors.ConfigError` at once when ``torch.compile``
cannot run here (no dynamo support for this Python, an unknown mode or backend, no C++ compiler for
inductor on CPU). A backend that fails while building a graph only fails at the first call that compiles
it (``torch.compile`` is lazy); pass ``example=`` to compile one forward now and get that failure as a
ConfigError too.
"""

from __future__ import annotations

import shutil

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile``'d module (an ``OptimizedModule``)."""
    return isinstance(getattr(model, "_orig_mod", None), nn.Module) and type(model).__name__ == "OptimizedModule"


def uncompiled(model: nn.Module) -> nn.Module:
    """The original module behind a compiled one (``model`` itself when it is not compiled).

    Use it to save or load weights (clean ``state_dict`` keys) and to hand the model to code that must not
    trigger compilation. The original shares its parameters and buffers with the compiled module.
    """
    while is_compiled(model):
        model = model._orig_mod  # type: ignore[assignment]
    return model


def compiled(
    model: nn.Module,
    *,
    mode: str = "default",
    dynamic: bool | None = False,
    backend: str = "inductor",
    fullgraph: bool = False,
    example: Tensor | None = None,
) -> nn.Module:
    """``torch.compile(model)`` with sparring's checks; an already compiled model is returned as is.

    Args:
        model: any classifier; it is not copied (the compiled module wraps this very object).
        mode: ``"default"``, ``"reduce-overhead"`` (CUDA graphs), ``"max-autotune"`` or
            ``"max-autotune-no-cudagraphs"``.
        dynamic: ``False`` compiles one graph per input shape (fastest kernels); ``None`` lets dynamo
            switch to symbolic shapes after a second shape; ``True`` starts symbolic.
        backend: a dynamo backend name (``"inductor"``; ``"aot_eager"`` to debug without code generation).
        fullgraph: refuse graph breaks (raise at the first call instead of splitting the graph).
        example: a batch ``(B, ...)`` to compile one no-grad forward now, in the model's current mode, so
            that a backend failure is raised here as a ConfigError rather than at the first attack.

    Returns:
        An ``nn.Module`` (an ``OptimizedModule``) sharing ``model``'s parameters; see :func:`uncompiled`.
    """
    if is_compiled(model):
        return model
    if mode not in MODES:
        raise ConfigError(f"compile mode must be one of {', '.join(MODES)}, got {mode!r}")
    _check_available(model, backend)
    try:
        module = torch.compile(model, mode=mode, dynamic=dynamic, backend=backend, fullgraph=fullgraph)
    except Exception as exc:  # unknown backend names and bad option combinations raise here
        raise ConfigError(f"torch.compile(backend={backend!r}, mode={mode!r}) failed: {exc}") from exc
    if example is not None:
        try:
            with torch.no_grad():
                module(example)
        except Exception as exc:  # BackendCompilerFailed, InductorError, C++ build errors
            raise ConfigError(
                f"torch.compile could not build {type(model).__name__} with backend {backend!r}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; run without compile, "
                "or try backend='aot_eager' to tell a code-generation problem from a tracing one"
            ) from exc
    return module


def _check_available(model: nn.Module, backend: str) -> None:
    """Raise a ConfigError when torch.compile cannot run here with ``backend``."""
    if not hasattr(torch, "compile"):
        raise ConfigError(f"torch {torch.__version__} has no torch.compile; upgrade torch or run without compile")
    import torch._dynamo as dynamo

    if not dynamo.is_dynamo_supported():
        raise ConfigError("torch.compile is not supported on this Python / platform; run without compile")
    if backend not in dynamo.list_backends(exclude_tags=()):
        names = ", ".join(dynamo.list_backends())
        raise ConfigError(f"unknown torch.compile backend {backend!r}; available: {names}")
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    if backend == "inductor" and on_cpu and not _cpp_compiler():
        raise ConfigError(
            "torch.compile's inductor backend needs a C++ compiler for CPU models and none was found (set CXX or "
            "install g++/clang++), or run without compile"
        )


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU, if one is installed."""
    try:
        from torch._inductor import config as inductor_config

        configured = inductor_config.cpp.cxx
        candidates = [c for c in (configured if isinstance(configured, tuple | list) else (configured,)) if c]
    except Exception:  # inductor's config moved between versions; fall back to the usual names
        candidates = []
    for name in [*candidates, "g++", "clang++", "c++"]:
        found = shutil.which(str(name))
        if found:
            return found
    return None
