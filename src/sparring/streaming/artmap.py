"""Fuzzy ARTMAP (Carpenter, Grossberg, Markuzon, Reynolds & Rosen, IEEE TNN 1992) as a torch module that learns on
a stream, one sample at a time, with no replay.

For an input a ∈ [0, 1]^d (x min-max scaled by ``bounds`` and clipped), with categories w_j ∈ [0, 1]^{2d}, each
mapped to one class c(j) (the map field):

    complement coding   I = [a, 1 − a]                         (|I| = d for every input)
    choice              T_j = |I ∧ w_j| / (α + |w_j|)          (∧ = element-wise min, |·| = L1 norm)
    match               M_j = |I ∧ w_j| / |I|
    prediction          ŷ = c(J),  J = argmax_j T_j            (winner-take-all; no vigilance at test time)

Learning one labelled sample (I, y), starting from the baseline vigilance ρ̄: among the categories that pass
vigilance (M_j ≥ ρ) take the one with the highest choice J. If c(J) = y it learns (resonance)

    w_J ← β (I ∧ w_J) + (1 − β) w_J                            (β = 1: fast learning, w_J ← I ∧ w_J)

otherwise match tracking raises the vigilance just above J's match, ρ ← M_J + ε, and the search goes on among the
categories that still pass. When none passes, a new category w = I is committed for class y (fast commit, also
when β < 1). ρ returns to ρ̄ for the next sample.

Defaults (the Fuzzy ARTMAP paper's and the WB-Softmax paper's streaming setting, arXiv 2605.06902; methods.md
§9.1): α = 1e-3 (choice), ρ̄ = 0 (baseline vigilance), β = 1 (fast learning), ε = 1e-3 (match tracking, "MT+").

Vectorised as far as the rule allows: the choice and match of one sample against every category is one tensor op
over the (n, 2d) weight matrix; each match-tracking reset is one masked argmax; only the loop over the samples of
the stream is sequential (the rule is). Prediction is batched (chunked so that a (b, n, 2d) minimum stays small).

As an ``nn.Module`` classifier, :meth:`FuzzyARTMAP.forward` returns the *decision* as logits (B, K): 1 for the
predicted class plus, as a tie-free readout of the runner-up classes, each class's best choice value (T < 1;
classes with no category get −1). Its argmax is exactly the ARTMAP prediction. A winner-take-all decision is
piecewise constant, so the input gradient through ``forward`` is exactly zero: autograd-based attacks get nothing
from it (and ``sparring.evaluate``'s masked-gradient check says so). White-box attacks go through the
differentiable surrogate of :mod:`sparring.streaming.wb_softmax` instead; every attack is judged on this
decision. The weights are buffers (they are never trained by gradient), so ``.to(device)`` moves them and an
attack's restoring context leaves them untouched.

**artlib** (PyPI ``artlib``, 0.1.12) ships a Fuzzy ARTMAP (C++ and torch backends). It is not used by this module:
the attack needs a torch module with the weights as tensors (for the surrogate), a logits ``forward`` and
save/load in the project's safetensors format, and artlib's default dependencies (numba, llvmlite) have no place in
the core. It is the reference in ``benchmarks/streaming.py`` (the ``bench`` extra): same stream, same α, ρ̄, β,
ε; the benchmark reports both accuracies, the agreement of the predictions and fit / predict times.
:meth:`FuzzyARTMAP.from_weights` builds our module from any fitted ARTMAP's weights and category classes (artlib's
``module_a.W`` and ``map``), so an artlib model can be attacked with WB-Softmax too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparring.errors import ConfigError, DataError, SparringError
from sparring.files import atomic_write_json

#: Elements of one (b, n, 2d) minimum in batched prediction (chunks of the batch keep it under this).
CHUNK_ELEMENTS = 1 << 22
WEIGHTS_FILE, CONFIG_FILE = "artmap.safetensors", "artmap.json"


@dataclass(frozen=True, kw_only=True)
class ARTMAPConfig:
    """Settings of a Fuzzy ARTMAP (keyword-only; the defaults are the paper's).

    Attributes:
        input_shape: shape of one input (flattened to d features).
        num_classes: K, the width of the logits.
        alpha: choice parameter α > 0 (small: prefers the category that covers the input with the smallest box).
        rho: baseline vigilance ρ̄ ∈ [0, 1] (0: categories as coarse as the labels allow).
        beta: learning rate β ∈ (0, 1] (1: fast learning).
        epsilon: match-tracking increment ε ≥ 0 (ρ ← M_J + ε after a wrong-class winner).
        bounds: the input range mapped to [0, 1] before complement coding (inputs outside it are clipped).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    alpha: float = 1e-3
    rho: float = 0.0
    beta: float = 1.0
    epsilon: float = 1e-3
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "bounds", (float(self.bounds[0]), float(self.bounds[1])))
        if not self.input_shape or math.prod(self.input_shape) < 1:
            raise ConfigError(f"artmap needs a non-empty input_shape, got {self.input_shape}")
        if self.num_classes < 2:
            raise ConfigError(f"artmap needs num_classes >= 2, got {self.num_classes}")
        if not self.alpha > 0:
            raise ConfigError(f"artmap alpha must be > 0, got {self.alpha}")
        if not 0 <= self.rho <= 1:
            raise ConfigError(f"artmap rho (vigilance) must be in [0, 1], got {self.rho}")
        if not 0 < self.beta <= 1:
            raise ConfigError(f"artmap beta (learning rate) must be in (0, 1], got {self.beta}")
        if not self.epsilon >= 0:
            raise ConfigError(f"artmap epsilon (match tracking) must be >= 0, got {self.epsilon}")
        if not self.bounds[1] > self.bounds[0]:
            raise ConfigError(f"artmap bounds must be (low, high) with low < high, got {self.bounds}")

    @property
    def features(self) -> int:
        """d, the number of input features (the complement-coded input has 2d)."""
        return math.prod(self.input_shape)


class FuzzyARTMAP(nn.Module):
    """Fuzzy ARTMAP with incremental :meth:`partial_fit`, batched :meth:`predict` and a decision-logits ``forward``.

    Buffers: ``weights`` (n, 2d) the category prototypes, ``category_class`` (n,) the map field (class of each
    category). ``n`` grows as the stream commits categories.
    """

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, alpha: float = 1e-3, rho: float = 0.0,
                 beta: float = 1.0, epsilon: float = 1e-3, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.config = ARTMAPConfig(input_shape=input_shape, num_classes=num_classes, alpha=alpha, rho=rho, beta=beta,
                                   epsilon=epsilon, bounds=bounds)
        width = 2 * self.config.features
        self.register_buffer("weights", torch.empty(0, width))
        self.register_buffer("category_class", torch.empty(0, dtype=torch.int64))

    # ------------------------------------------------------------------------------------------- encoding
    @property
    def num_categories(self) -> int:
        return int(self.weights.shape[0])

    def code(self, x: Tensor) -> Tensor:
        """Complement coding (B, ...) → (B, 2d): I = [a, 1 − a] with a = clip((x − low) / (high − low), 0, 1).

        Differentiable (the surrogate reuses it); the clip's gradient is zero outside the bounds."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.config.features:
            raise DataError(f"artmap expects inputs of shape (B, {', '.join(map(str, self.config.input_shape))}), "
                            f"got {tuple(x.shape)}")
        low, high = self.config.bounds
        a = ((x.flatten(1).to(self.weights.dtype) - low) / (high - low)).clamp(0.0, 1.0)
        return torch.cat([a, 1.0 - a], dim=1)

    def choice(self, coded: Tensor) -> Tensor:
        """T (B, n) for complement-coded inputs (B, 2d): |I ∧ w_j| / (α + |w_j|), chunked over B."""
        self._check_fitted()
        denominator = self.config.alpha + self.weights.sum(1)  # (n,)
        rows = max(1, CHUNK_ELEMENTS // max(1, self.weights.numel()))
        parts = [torch.minimum(chunk.unsqueeze(1), self.weights.unsqueeze(0)).sum(2) / denominator
                 for chunk in coded.split(rows)]
        return torch.cat(parts) if parts else coded.new_empty(0, self.num_categories)

    # ------------------------------------------------------------------------------------------ inference
    def winner(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(J, T) : the winning category (B,) and the choice values (B, n), without gradient."""
        with torch.no_grad():
            t = self.choice(self.code(x))
        return t.argmax(1), t

    def predict(self, x: Tensor) -> Tensor:
        """(B,) class predictions c(argmax_j T_j)."""
        j, _ = self.winner(x)
        return self.category_class[j]

    def forward(self, x: Tensor) -> Tensor:
        """Decision logits (B, K): 1[k = ŷ] + max_{j: c(j) = k} T_j (−1 for a class with no category).

        No gradient flows through the decision (a winner-take-all is piecewise constant): the output is tied to
        ``x`` with an exact zero so that autograd returns zero input gradients instead of failing."""
        j, t = self.winner(x)
        k = self.config.num_classes
        best = t.new_full((t.shape[0], k), -1.0)
        best.scatter_reduce_(1, self.category_class.expand(t.shape[0], -1), t, reduce="amax", include_self=True)
        logits = best + nn.functional.one_hot(self.category_class[j], k).to(best.dtype)
        if x.requires_grad:
            logits = logits + 0.0 * x.flatten(1).sum(1, keepdim=True).to(logits.dtype)
        return logits

    # ------------------------------------------------------------------------------------------- learning
    @torch.no_grad()
    def partial_fit(self, x: Tensor, y: Tensor, *, rho: float | None = None) -> FuzzyARTMAP:
        """Learn the samples of ``x`` (B, ...) with labels ``y`` (B,) in order, one pass, no replay.

        Inputs must lie in ``bounds`` (up to 1e-6) and be finite; labels in 0..K−1. ``rho`` overrides the baseline
        vigilance for these samples (a defence may learn adversarial examples into tighter categories)."""
        self._check_stream(x, y)
        if rho is not None and not 0 <= rho <= 1:
            raise ConfigError(f"artmap rho (vigilance) must be in [0, 1], got {rho}")
        baseline = self.config.rho if rho is None else float(rho)
        coded = self.code(x)  # (B, 2d)
        b, width = coded.shape
        n = self.num_categories
        # Room for one new category per sample: the loop works in place, then the buffers are cut to size.
        w = torch.cat([self.weights, coded.new_zeros(b, width)])
        norms = torch.cat([self.weights.sum(1), coded.new_zeros(b)])
        classes = torch.cat([self.category_class, self.category_class.new_full((b,), -1)])
        labels = y.tolist()
        for i in range(b):
            n = self._learn(coded[i], labels[i], w, norms, classes, n, baseline)
        self.weights = w[:n].clone()
        self.category_class = classes[:n].clone()
        return self

    def _learn(self, inp: Tensor, label: int, w: Tensor, norms: Tensor, classes: Tensor, n: int, rho: float) -> int:
        """One sample: search with match tracking, resonate or commit; returns the new number of categories."""
        cfg = self.config
        if n:
            overlap = torch.minimum(inp, w[:n]).sum(1)  # (n,) |I ∧ w_j|
            choice = overlap / (cfg.alpha + norms[:n])
            match = overlap / inp.sum()
            while True:
                best, index = torch.where(match >= rho, choice, -math.inf).max(0)
                if best.item() == -math.inf:  # no category passes vigilance
                    break
                j = int(index)
                if int(classes[j]) == label:
                    if cfg.beta == 1.0:
                        torch.minimum(inp, w[j], out=w[j])
                    else:
                        w[j] = cfg.beta * torch.minimum(inp, w[j]) + (1 - cfg.beta) * w[j]
                    norms[j] = w[j].sum()
                    return n
                rho = float(match[j]) + cfg.epsilon  # match tracking
                choice[j] = -math.inf  # reset: J is out of this search (also when ε = 0)
        w[n] = inp
        norms[n] = inp.sum()
        classes[n] = label
        return n + 1

    # -------------------------------------------------------------------------------------- construction
    @classmethod
    def from_weights(cls, weights: Tensor, category_class: Tensor, **config: Any) -> FuzzyARTMAP:
        """A fitted ARTMAP from its category weights (n, 2d, complement-coded) and their classes (n,) (e.g.
        artlib's ``module_a.W`` and ``map``); ``config`` as for the constructor (``input_shape`` defaults to (d,))."""
        weights = torch.as_tensor(weights, dtype=torch.float32)
        category_class = torch.as_tensor(category_class, dtype=torch.int64)
        if weights.dim() != 2 or weights.shape[1] % 2 or category_class.shape != (weights.shape[0],):
            raise DataError(f"weights must be (n, 2d) and category_class (n,), got {tuple(weights.shape)} and "
                            f"{tuple(category_class.shape)}")
        config.setdefault("input_shape", (weights.shape[1] // 2,))
        model = cls(**config)
        if weights.shape[1] != 2 * model.config.features:
            raise DataError(f"weights have {weights.shape[1]} columns, expected 2 x {model.config.features}")
        k = model.config.num_classes
        if len(category_class) and not 0 <= int(category_class.min()) <= int(category_class.max()) < k:
            raise DataError(f"category classes must lie in 0..{model.config.num_classes - 1}")
        model.weights, model.category_class = weights.clone(), category_class.clone()
        return model

    def save(self, folder: Path | str) -> Path:
        """``folder/artmap.safetensors`` (weights, map field) and ``folder/artmap.json`` (the config)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_FILE}.tmp"
        try:
            save_file({"weights": self.weights.detach().contiguous().cpu(),
                       "category_class": self.category_class.detach().contiguous().cpu()}, str(tmp),
                      metadata={"format": "sparring.fuzzy_artmap"})
            tmp.replace(folder / WEIGHTS_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        config = asdict(self.config)
        atomic_write_json(folder / CONFIG_FILE, {"model": "fuzzy_artmap", **config,
                                                 "input_shape": list(config["input_shape"]),
                                                 "bounds": list(config["bounds"])})
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> FuzzyARTMAP:
        """The ARTMAP saved by :meth:`save` in ``folder``."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise DataError(f"{folder} holds no saved ARTMAP (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config.pop("model", None)
            state = load_file(str(weights_path))
        except Exception as error:  # JSON, OS and safetensors' own error types
            raise DataError(f"cannot read the ARTMAP in {folder}: {error}") from None
        if "weights" not in state or "category_class" not in state:
            raise DataError(f"{weights_path} is not a sparring ARTMAP (no weights / category_class)")
        try:
            return cls.from_weights(state["weights"], state["category_class"], **config)
        except TypeError as error:
            raise DataError(f"{config_path}: {error}") from None

    # -------------------------------------------------------------------------------------------- checks
    def _check_fitted(self) -> None:
        if self.num_categories == 0:
            raise SparringError("the ARTMAP has no categories yet: call partial_fit on some labelled data first")

    def _check_stream(self, x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise DataError("partial_fit needs torch tensors x (B, ...) and y (B,)")
        if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
            raise DataError(f"partial_fit needs x (B, ...) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if not torch.isfinite(x).all():
            raise DataError("x contains NaN or infinite values")
        low, high = self.config.bounds
        if len(x) and (x.min() < low - 1e-6 or x.max() > high + 1e-6):
            raise DataError(f"x lies outside the ARTMAP's bounds {self.config.bounds} (min {x.min().item():.3g}, "
                            f"max {x.max().item():.3g}): rescale the data or set bounds")
        if len(y) and (y.min() < 0 or y.max() >= self.config.num_classes):
            raise DataError(f"labels must lie in 0..{self.config.num_classes - 1}")
