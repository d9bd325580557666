"""SAEgis-style detection: a TopK sparse autoencoder on clean activations, and the latents attacks move.

A TopK sparse autoencoder (SAE) is trained only to reconstruct a model's clean activations h ∈ ℝᵈ (one token of
one layer; see :func:`sparring.detectors.base.as_tokens`)::

    z = TopK_k(ReLU(W_encᵀ (h − b_dec) + b_enc))     sparse codes, exactly k non-zeros when ≥ k are positive
    ĥ = W_decᵀ z + b_dec                             ‖W_dec[i]‖₂ = 1 for every latent i (renormalised each step)
    L = mean over tokens of ‖h − ĥ‖²,                NMSE = Σ‖h − ĥ‖² / Σ‖h − h̄‖² (reported)

No adversarial training: the detector then reads the latents. Per input x, a latent's pooled activation is
a_f(x) = pool_t z_{t,f} (mean or max over tokens). On a calibration split of clean and attacked inputs::

    t_f = Q_q(a_f on clean)                                         the latent "fires" when a_f > t_f
    r_f = E_adv[log(1 + a_f)] − E_clean[log(1 + a_f)] + P_adv(a_f > t_f) − P_clean(a_f > t_f)
    S   = the top_features latents with the largest r_f > 0

and an input is scored by how many of them fire, with a tie-break below the integer part::

    score(x) = Σ_{f∈S} 1[a_f > t_f] + σ(mean_{f∈S} (a_f − t_f) / s_f) / (|S| + 1)
    soft(x)  = Σ_{f∈S} σ((a_f − t_f) / (τ·s_f))                     (differentiable; gradients pass the kept TopK
                                                                      entries)

where s_f is the spread (standard deviation) of a_f over the calibration inputs, clean and attacked together
(floor 1e-6), and τ the ``temperature``. ``floor(score)`` is the count; the tie-break (< 1/(|S|+1)) only orders
inputs with equal counts, so AUROC is not decided by ties. Flag when score > threshold: the threshold is set at
``fpr`` (5%) on the clean calibration scores, or is ``min_fire − ½`` (count ≥ min_fire) when ``min_fire`` is given.

Paper: "SAEgis" (arXiv 2605.07447). Its defaults: an SAE on one layer of Qwen2.5-VL-3B with 32768 latents and
top-64 active, the top-20 most attack-relevant latents kept; AUROC, max-F1 and recall at fixed FPR reported. The
layer is a required argument here. Our reading, not the paper's letter: the relevance formula r_f above, "fires"
meaning above the clean ``fire_quantile`` (0.95) quantile, and the tie-break term. Our defaults scale with the
layer: n = 8·d latents, k = round(n·64/32768) (the paper's ratio) clamped to [4, n // 4] (so k = 4 for small
layers; the upper cap wins for n < 16). The spread s_f covers both splits because the latents that matter most
are often silent on clean inputs, where a clean-only spread would make the sigmoid a step with no gradient.
Not done: dead-latent auxiliary loss (AuxK), removing the decoder-parallel gradient, attention masks (every token
is pooled).

sae-lens: its ``SAETrainer`` can be fed any iterator of activation batches (its "extending SAELens" guide), so a
plain nn.Module layer would work, but the package hard-depends on transformer-lens, datasets, plotly and nltk and
its runner is built around TransformerLens hook names, so the ~100 lines of TopK SAE below are cheaper than the
dependency.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparring.context import device_of, frozen_model
from sparring.detectors.base import DETECTORS, ActivationTap, Detector, as_tokens
from sparring.errors import ConfigError, DataError

#: The paper's SAE width and number of active latents (the ratio sets our default k).
PAPER_FEATURES, PAPER_K = 32768, 64
SAE_FILE, SELECTION_FILE, CONFIG_FILE = "sae.safetensors", "selection.safetensors", "detector.json"
POOLS = ("mean", "max")


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder ℝᵈ → ℝⁿ → ℝᵈ with k active latents (equations in the module docstring).

    Shapes: ``W_enc`` (d, n), ``b_enc`` (n,), ``W_dec`` (n, d) with unit-norm rows (row i is latent i's direction,
    a column of the d×n decoder), ``b_dec`` (d,). Initialised with random unit decoder directions and the encoder
    as their transpose; ``generator`` makes the initialisation reproducible.
    """

    def __init__(self, *, d: int, n: int, k: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if d < 1 or n < 1 or not 1 <= k <= n:
            raise ConfigError(f"a TopK SAE needs d >= 1, n >= 1 and 1 <= k <= n; got d={d}, n={n}, k={k}")
        self.d, self.n, self.k = d, n, k
        directions = torch.randn(n, d, generator=generator)
        directions = directions / directions.norm(dim=1, keepdim=True)
        self.W_enc = nn.Parameter(directions.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(directions)
        self.b_dec = nn.Parameter(torch.zeros(d))

    def encode(self, h: Tensor) -> Tensor:
        """Sparse codes z (..., n) of activations h (..., d): the k largest ReLU pre-activations, the rest zero."""
        pre = torch.relu((h - self.b_dec) @ self.W_enc + self.b_enc)
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, values)  # gradients reach the kept entries only

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction ĥ (..., d) of codes z (..., n)."""
        return z @ self.W_dec + self.b_dec

    def forward(self, h: Tensor) -> Tensor:
        """Reconstruction ĥ (..., d) of h (..., d)."""
        return self.decode(self.encode(h))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder direction to unit norm (the codes' scale lives in the encoder)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def save(self, path: str | Path) -> None:
        """Write the weights to a safetensors file, with d, n and k in its metadata."""
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"format": "sparring.topk_sae", "d": str(self.d),
                                                "n": str(self.n), "k": str(self.k)})

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str | None = None) -> TopKSAE:
        """An SAE saved by :meth:`save`."""
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != "sparring.topk_sae":
            raise DataError(f"{path} is not a sparring TopK SAE file (no 'format: sparring.topk_sae' metadata)")
        sae = cls(d=int(meta["d"]), n=int(meta["n"]), k=int(meta["k"]))
        sae.load_state_dict(load_file(str(path)))
        return sae.to(device) if device is not None else sae


@dataclass
class SAEFit:
    """What :func:`fit_sae` measured: steps taken, and per step the batch's MSE (mean ‖h − ĥ‖²) and NMSE."""

    steps: int
    mse: list[float]
    nmse: list[float]


def fit_sae(
    sae: TopKSAE,
    activations: Tensor | Iterable[Tensor],
    *,
    steps: int = 1000,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    init_bias: bool = True,
) -> SAEFit:
    """Train ``sae`` with Adam on the MSE reconstruction loss, renormalising decoder directions after each step.

    Args:
        activations: a tensor (..., d) of tokens, or an iterable of such tensors (streamed: it is read again
            for each epoch, through a shuffling buffer; a one-shot iterator ends training when it runs out).
        steps: optimizer steps (fewer if a one-shot iterator runs out first).
        batch_size: tokens per step.
        seed: seeds the shuffling (the initialisation is the SAE's own ``generator``): a seed gives the same SAE.
        init_bias: set ``b_dec`` to the mean of the first batch (a cheap stand-in for the geometric median).
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"fit_sae needs steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    generator = torch.Generator().manual_seed(seed)
    device = sae.W_dec.device
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    mse, nmse = [], []
    sae.train()
    for step, batch in enumerate(itertools.islice(_batches(activations, batch_size, generator), steps)):
        h = batch.detach().to(device, torch.float32)
        if h.shape[-1] != sae.d:
            raise DataError(f"activations have width {h.shape[-1]}, the SAE expects d={sae.d}")
        if step == 0 and init_bias:
            with torch.no_grad():
                sae.b_dec.copy_(h.mean(0))
        error = (sae(h) - h).pow(2).sum(-1)  # (batch,)
        loss = error.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalize_decoder()
        mse.append(loss.detach())
        nmse.append(error.sum().detach() / (h - h.mean(0)).pow(2).sum().clamp_min(1e-12))
    if not mse:
        raise DataError("no activations to train the SAE on: the activation source was empty")
    return SAEFit(steps=len(mse), mse=torch.stack(mse).tolist(), nmse=torch.stack(nmse).tolist())


def _batches(source: Tensor | Iterable[Tensor], batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled (≤ batch_size, d) token batches, epoch after epoch, from a tensor or a (re-)iterable of tensors."""
    if isinstance(source, Tensor):
        data = source.reshape(-1, source.shape[-1])
        while len(data):
            order = torch.randperm(len(data), generator=generator).to(data.device)
            for start in range(0, max(len(data) - batch_size, 0) + 1, batch_size):
                yield data[order[start:start + batch_size]]
        return
    one_shot = iter(source) is source
    while True:
        # tokens of one input are correlated: mix several incoming chunks before cutting batches
        buffer: list[Tensor] = []
        held, emitted = 0, False
        for chunk in source:
            buffer.append(chunk.detach().reshape(-1, chunk.shape[-1]))
            held += len(buffer[-1])
            if held >= 4 * batch_size:
                pool = torch.cat(buffer)
                pool = pool[torch.randperm(len(pool), generator=generator).to(pool.device)]
                full = len(pool) // batch_size * batch_size
                for start in range(0, full, batch_size):
                    yield pool[start:start + batch_size]
                    emitted = True
                buffer, held = [pool[full:]], len(pool) - full
        if held:
            pool = torch.cat(buffer)
            pool = pool[torch.randperm(len(pool), generator=generator).to(pool.device)]
            for start in range(0, len(pool), batch_size):
                yield pool[start:start + batch_size]
                emitted = True
        if one_shot or not emitted:
            return


def default_sizes(d: int, *, n_features: int | None, k: int | None, expansion: int) -> tuple[int, int]:
    """(n, k) for a layer of width d: n = expansion·d; k = round(n·64/32768) clamped to [4, n // 4] (min 1)."""
    n = n_features if n_features is not None else expansion * d
    if k is None:
        k = max(1, min(max(4, round(n * PAPER_K / PAPER_FEATURES)), n // 4))
    return n, k


def _quantile(values: Tensor, q: float) -> Tensor:
    """Column quantiles of values (N, n), linear interpolation (torch.quantile refuses more than 2²⁴ elements)."""
    ordered = values.sort(dim=0).values
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


@DETECTORS.register("sae")
@dataclass(kw_only=True, eq=False)
class SAEDetector(Detector):
    """Counts the attack-relevant latents of a clean-trained TopK SAE that fire on an input (module docstring).

    Use: ``fit(clean_train)`` trains the SAE, ``select(clean_cal, adv_cal)`` picks the latents and the threshold,
    then ``score`` / ``flag`` / ``soft_score``; ``save`` / ``load`` keep it.

    Attributes:
        model: the model whose activations are read; called as ``model(x)`` (wrap a Hugging Face LM so that x is
            its ``inputs_embeds``). Never modified.
        layer: module path of the tapped layer (``"features.3"``, ``"model.layers.1"``).
        n_features: SAE width n (default ``expansion``·d). k: active latents (default in :func:`default_sizes`).
            A layer with one token per input ((B, d)) has at most k active latents per input, so the count is at
            most k: raise k there (the default 4 leaves the count little room).
        top_features: latents kept (paper: 20; fewer if fewer have a positive relevance).
        fire_quantile: a kept latent fires when its pooled activation exceeds this quantile of its clean
            calibration values (our reading of the paper).
        min_fire: flag when at least this many kept latents fire; None: threshold at ``fpr`` on clean scores.
        fpr: target false-positive rate of the calibrated threshold.
        pool: ``"mean"`` or ``"max"`` over tokens.
        temperature: τ of ``soft_score``, relative to each latent's spread.
        relaxation: ``"softplus"`` (default) or ``"sigmoid"``: how ``soft_score`` relaxes the count.
        stop_early: end the forward pass at the layer in ``score`` and ``soft_score`` (nothing after it runs).
        seed: SAE initialisation and shuffling.
        threshold: flag when score > threshold (set by :meth:`select`).
    """

    name: ClassVar[str] = "sae"
    model: nn.Module = field(repr=False)
    layer: str
    n_features: int | None = None
    expansion: int = 8
    k: int | None = None
    top_features: int = 20
    fire_quantile: float = 0.95
    min_fire: int | None = None
    fpr: float = 0.05
    pool: str = "mean"
    temperature: float = 1.0
    relaxation: str = "softplus"
    stop_early: bool = True
    seed: int = 0
    threshold: float | None = None
    sae: TopKSAE | None = field(default=None, repr=False)
    features: Tensor | None = field(default=None, repr=False)  # (m,) long: the kept latents S
    fire_thresholds: Tensor | None = field(default=None, repr=False)  # (m,) t_f
    scales: Tensor | None = field(default=None, repr=False)  # (m,) s_f
    relevance: Tensor | None = field(default=None, repr=False)  # (m,) r_f

    def __post_init__(self) -> None:
        if self.relaxation not in ("softplus", "sigmoid"):
            raise ConfigError(f"relaxation must be 'softplus' or 'sigmoid', got {self.relaxation!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if not 0.0 < self.fire_quantile < 1.0:
            raise ConfigError(f"fire_quantile must be in (0, 1), got {self.fire_quantile}")
        if self.top_features < 1 or self.expansion < 1:
            raise ConfigError(f"top_features and expansion must be >= 1, got {self.top_features}, {self.expansion}")
        if self.min_fire is not None and not 1 <= self.min_fire <= self.top_features:
            raise ConfigError(f"min_fire must be in [1, top_features={self.top_features}], got {self.min_fire}")
        if not 0.0 <= self.fpr < 1.0 or self.temperature <= 0:
            raise ConfigError(f"need 0 <= fpr < 1 and temperature > 0, got fpr={self.fpr}, τ={self.temperature}")
        ActivationTap(self.model, self.layer)  # a wrong layer path fails here, with the valid names

    # -- activations ------------------------------------------------------------------------------------------

    def _layer_tokens(self, x: Tensor, *, stop: bool) -> Tensor:
        """(B, T, d) float32 tokens of the tapped layer at inputs x (grad mode as the caller's)."""
        with ActivationTap(self.model, self.layer, stop=stop) as tap:
            return as_tokens(tap(x)).float()

    def _pooled(self, x: Tensor) -> Tensor:
        """(B, n) pooled SAE codes a(x); differentiable when grad mode is on."""
        sae = self._fitted_sae()
        codes = sae.encode(self._layer_tokens(x, stop=self.stop_early).to(sae.W_dec.device))  # (B, T, n)
        return codes.mean(1) if self.pool == "mean" else codes.amax(1)

    def _pooled_all(self, x: Tensor, batch_size: int) -> Tensor:
        """(N, n) pooled codes of inputs x (N, ...), batch by batch, without gradients."""
        with torch.no_grad(), frozen_model(self.model):
            return torch.cat([self._pooled(chunk) for chunk in x.split(batch_size)])

    def _fitted_sae(self) -> TopKSAE:
        if self.sae is None:
            raise ConfigError("the SAE detector is not fitted: call fit(clean_x) (then select) or SAEDetector.load")
        return self.sae

    def _selection(self) -> tuple[Tensor, Tensor, Tensor]:
        self._fitted_sae()
        if self.features is None or self.fire_thresholds is None or self.scales is None:
            raise ConfigError("no latents selected yet: call select(clean_x, adv_x) on a calibration split")
        return self.features, self.fire_thresholds, self.scales

    # -- fitting ----------------------------------------------------------------------------------------------

    def fit(
        self, clean_x: Tensor, *, batch_size: int = 64, steps: int = 1000, sae_batch_size: int = 512,
        lr: float = 1e-3,
    ) -> SAEFit:
        """Train a fresh SAE on the layer's activations at clean inputs ``clean_x`` (N, ...).

        The activations stream from the model ``batch_size`` inputs at a time (recomputed each epoch, never all
        held); the SAE takes ``steps`` steps of ``sae_batch_size`` tokens. Clears any earlier selection.
        """
        if len(clean_x) == 0:
            raise DataError("fit needs at least one clean input")
        with torch.no_grad(), frozen_model(self.model):
            d = self._layer_tokens(clean_x[:1], stop=True).shape[-1]
        n, k = default_sizes(d, n_features=self.n_features, k=self.k, expansion=self.expansion)
        generator = torch.Generator().manual_seed(self.seed)
        self.sae = TopKSAE(d=d, n=n, k=k, generator=generator).to(device_of(self.model))
        self.features = self.fire_thresholds = self.scales = self.relevance = None
        self.threshold = None
        report = fit_sae(self.sae, _CleanActivations(self, clean_x, batch_size), steps=steps,
                         batch_size=sae_batch_size, lr=lr, seed=self.seed)
        self.sae.requires_grad_(False).eval()
        return report

    def select(self, clean_x: Tensor, adv_x: Tensor, *, batch_size: int = 64) -> dict[str, Any]:
        """Pick the latents attacks move most, their firing thresholds, and the detector's threshold.

        ``clean_x`` and ``adv_x`` (attacked versions, not necessarily of the same inputs) form the calibration
        split. Returns the kept latents with their relevance, and the threshold.
        """
        if len(clean_x) < 2 or len(adv_x) < 1:
            raise DataError("select needs at least two clean and one attacked calibration input")
        clean, adv = self._pooled_all(clean_x, batch_size), self._pooled_all(adv_x, batch_size)  # (N, n)
        thresholds = _quantile(clean, self.fire_quantile)
        relevance = (adv.log1p().mean(0) - clean.log1p().mean(0)) + (
            (adv > thresholds).float().mean(0) - (clean > thresholds).float().mean(0)
        )
        kept = min(self.top_features, int((relevance > 0).sum()))
        if kept == 0:
            raise DataError(
                "no SAE latent is more active on the attacked inputs than on the clean ones: check that adv_x "
                "holds attacked inputs, or tap another layer"
            )
        order = relevance.topk(kept).indices
        self.features, self.relevance, self.fire_thresholds = order, relevance[order], thresholds[order]
        self.scales = torch.cat([clean, adv])[:, order].std(0).clamp_min(1e-6)
        if self.min_fire is not None:
            self.threshold = self.min_fire - 0.5  # score > min_fire − ½  ⟺  count ≥ min_fire
        else:
            self.calibrate_threshold(self._score_from_pooled(clean), self.fpr)
        return {"features": order.tolist(), "relevance": self.relevance.tolist(), "threshold": self.threshold}

    # -- scoring ----------------------------------------------------------------------------------------------

    def _score_from_pooled(self, pooled: Tensor) -> Tensor:
        features, thresholds, scales = self._selection()
        active = pooled[:, features]  # (B, m)
        count = (active > thresholds).float().sum(-1)
        excess = ((active - thresholds) / scales).mean(-1)
        return count + torch.sigmoid(excess) / (len(features) + 1)

    def score(self, x: Tensor) -> Tensor:
        """(B,) number of kept latents firing on x (B, ...), plus a tie-break below 1/(m+1); no gradients."""
        self._selection()
        with torch.no_grad(), frozen_model(self.model):
            return self._score_from_pooled(self._pooled(x))

    def soft_score(self, x: Tensor) -> Tensor:
        """(B,) a differentiable relaxation of the count, for adaptive attacks; with z_f = (a_f − t_f)/(τ·s_f):

        * ``relaxation="softplus"`` (default): Σ_f softplus(z_f). It keeps a gradient however far above its threshold
          a latent fires, so an attack can always push it down; a sigmoid saturates there and gives the attack
          no signal exactly on the inputs it most needs to hide (gradient masking by the relaxation).
        * ``relaxation="sigmoid"``: Σ_f σ(z_f), the count with each step replaced by a sigmoid.
        """
        features, thresholds, scales = self._selection()
        with frozen_model(self.model):  # restores only buffers written inside: the graph stays valid
            active = self._pooled(x)[:, features]
        z = (active - thresholds) / (self.temperature * scales)
        return (torch.nn.functional.softplus(z) if self.relaxation == "softplus" else torch.sigmoid(z)).sum(-1)

    def describe(self) -> dict[str, Any]:
        n, k = (self.sae.n, self.sae.k) if self.sae is not None else (self.n_features, self.k)
        return {
            "name": self.name, "layer": self.layer, "n_features": n, "k": k, "expansion": self.expansion,
            "top_features": self.top_features, "fire_quantile": self.fire_quantile, "min_fire": self.min_fire,
            "fpr": self.fpr, "pool": self.pool, "temperature": self.temperature, "relaxation": self.relaxation,
            "stop_early": self.stop_early,
            "seed": self.seed, "threshold": self.threshold,
            "selected": None if self.features is None else self.features.tolist(),
        }

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``sae.safetensors``, ``selection.safetensors`` (when selected) and ``detector.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._fitted_sae().save(folder / SAE_FILE)
        if self.features is not None:
            selection = {"features": self.features, "fire_thresholds": self.fire_thresholds,
                         "scales": self.scales, "relevance": self.relevance}
            save_file({key: value.detach().cpu().contiguous() for key, value in selection.items()},
                      str(folder / SELECTION_FILE))
        settings = {key: value for key, value in self.describe().items() if key not in ("name", "selected")}
        (folder / CONFIG_FILE).write_text(json.dumps({"detector": self.name, **settings}, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module) -> SAEDetector:
        """A detector saved by :meth:`save`, reading ``model`` (the same architecture it was fitted on)."""
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / SAE_FILE).is_file():
            raise DataError(f"{folder} holds no saved SAE detector ({CONFIG_FILE} and {SAE_FILE} expected)")
        settings = json.loads((folder / CONFIG_FILE).read_text())
        if settings.pop("detector", None) != cls.name:
            raise DataError(f"{folder / CONFIG_FILE} is not an SAE detector's settings")
        detector = cls(model=model, **settings)
        device = device_of(model)
        detector.sae = TopKSAE.load(folder / SAE_FILE, device=device).requires_grad_(False).eval()
        if (folder / SELECTION_FILE).is_file():
            selection = load_file(str(folder / SELECTION_FILE), device=str(device))
            detector.features, detector.fire_thresholds = selection["features"], selection["fire_thresholds"]
            detector.scales, detector.relevance = selection["scales"], selection["relevance"]
        return detector


class _CleanActivations:
    """A re-iterable stream of the detector's layer tokens (B·T, d) at clean inputs, ``batch_size`` at a time."""

    def __init__(self, detector: SAEDetector, x: Tensor, batch_size: int) -> None:
        self.detector, self.x, self.batch_size = detector, x, batch_size

    def __iter__(self) -> Iterator[Tensor]:
        for chunk in self.x.split(self.batch_size):
            with torch.no_grad(), frozen_model(self.detector.model):
                tokens = self.detector._layer_tokens(chunk, stop=True)
            yield tokens.reshape(-1, tokens.shape[-1])
