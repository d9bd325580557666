"""Class-conditional feature manifolds: per-class generators ``G_c : R^{d_z} → R^{d_f}`` and the distance to them.

Used by MCAT (``objectives/mcat.py``; Xian, Yang & Yu, arXiv 2605.02183), which keeps adversarial examples near the
manifold of their class in penultimate-feature space:

    d_{M_y}(u) = min_z ‖u − G_y(z)‖²                                                         (feature units)

approximated by ``steps`` gradient steps on z, then evaluated at the final z with the gradient w.r.t. u kept (the
inner z-loop is detached, as in the authors' ``mcat/manifold.py::manifold_distance``).

**Generators.** K independent MLPs ``d_z → h → h → d_f`` (ReLU, linear output), stored as stacked (K, in, out)
weights. Paper: d_z = 128, h = 1024 for d_f = 512; released code: d_z = 64, h = 256. Defaults here are the code's
sizes at d_f = 512 and scale down with the feature width: ``d_z = clamp(d_f // 8, 2, 64)``,
``h = clamp(d_f, 64, 256)`` (the latent search runs the generator ~6 times per attack step, and the paper's width
costs 16 times more; pass ``latent_dim=128, hidden=1024`` for it). Every generator outputs ``μ_c + s · MLP_c(z)``,
with ``μ_c`` the class mean and ``s`` the per-coordinate RMS spread of the features around their class means
(buffers set by :meth:`ClassGenerators.fit`): a reparametrization, not a restriction, so that 10 epochs of Adam 1e-3
fit features of any scale.

**Fits** (:meth:`ClassGenerators.fit`; paper defaults 10 epochs, Adam 1e-3, batch 256):

* ``"autoencoder"`` (default): a per-class encoder ``E_c`` and ``G_c`` trained to reconstruct, ``‖u − G_y(E_y(u))‖²``.
  ``G_y``'s image then covers the class's features: the faithful manifold.
* ``"glo"``: per-sample latent codes optimized jointly with G (generative latent optimization), no encoder.
* ``"mse"``: the released trainer's fit, ``‖u − G_y(z)‖²`` with z ~ N(0, I) drawn afresh, independent of u. Its optimum
  is ``G_y(z) = μ_y`` for every z (the generator collapses to the class mean), so ``d`` becomes the squared distance to
  the class mean. Kept for ``code_compat``.

**Projection details** (choices of ours, each documented where made): the latent loop starts at the encoder's code
``E_y(u)`` when an encoder exists (an amortized projection: a handful of steps then refine a good start instead of
searching from a random point, and the result is deterministic), else at z₀ ~ N(0, I) as in the code; it descends on
the residual in units of ``s`` (same minimizer, a step size independent of the feature scale: the code's lr 0.1 was
set for ResNet features of O(1) per coordinate); and a step that does not lower a row's residual is undone and that
row's step size halved (plain gradient descent whenever the steps succeed, never worse than the start when lr is too
large for a sharply curved generator).

Costs: a batch is sorted by class once (:func:`class_groups`, one host synchronization per distance call, not per
latent step) and each class's rows go through its own MLP, so a row costs one MLP whatever K is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparring.context import frozen_model
from sparring.errors import ConfigError, DataError

FITS = ("autoencoder", "glo", "mse")
INITS = ("auto", "encoder", "random")
# GLO codes are pulled weakly toward the prior N(0, I), so a random start of the latent search lands near them.
_CODE_PENALTY = 1e-3


def default_latent_dim(feature_dim: int) -> int:
    """``clamp(d_f // 8, 2, 64)``: the released code's d_z = 64 at d_f = 512, proportionally smaller below."""
    return max(2, min(64, feature_dim // 8))


def default_hidden(feature_dim: int) -> int:
    """``clamp(d_f, 64, 256)``: the released code's width 256 at d_f = 512 (and above)."""
    return max(64, min(256, feature_dim))


ClassGroups = tuple[Tensor, Tensor, list[int]]


def class_groups(y: Tensor, num_classes: int) -> ClassGroups:
    """``(order, inverse, counts)``: the rows sorted by label, the permutation back, rows per class.

    One host synchronization (the counts); compute it once per batch and pass it to every forward.
    """
    order = torch.argsort(y, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(y), device=y.device)
    return order, inverse, torch.bincount(y, minlength=num_classes).tolist()


class _ClassMLPs(nn.Module):
    """K independent MLPs ``sizes[0] → … → sizes[-1]`` (ReLU between layers, linear output), weights stacked."""

    def __init__(self, num_classes: int, sizes: list[int], generator: torch.Generator | None) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default scale, drawn from the explicit generator
            w = (torch.rand(num_classes, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(num_classes, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, x: Tensor, y: Tensor, groups: ClassGroups | None = None) -> Tensor:
        """Row i through MLP ``y_i``: x (B, in), y (B,) → (B, out); ``groups`` = :func:`class_groups` of y.

        Rows are sorted by class and each class's slice goes through its own MLP (one matmul per class
        and layer), so a row costs one MLP whatever K is.
        """
        order, inverse, counts = groups if groups is not None else class_groups(y, len(self.biases[0]))
        parts, start = [], 0
        for c, n in enumerate(counts):
            if n:
                parts.append(self.forward_class(x[order[start:start + n]], c))
            start += n
        return torch.cat(parts)[inverse]

    def forward_class(self, x: Tensor, c: int) -> Tensor:
        """Rows of one class through MLP ``c``: x (n, in) → (n, out)."""
        h = torch.addmm(self.biases[0][c], x, self.weights[0][c])
        for w, b in zip(self.weights[1:], self.biases[1:], strict=True):
            h = torch.addmm(b[c], h.relu(), w[c])
        return h


class ClassGenerators(nn.Module):
    """K class-conditional generators ``G_c(z) = μ_c + s · MLP_c(z)``, optionally with encoders ``E_c``.

    Args:
        num_classes: K.
        feature_dim: d_f, the width of the features modelled.
        latent_dim: d_z (default :func:`default_latent_dim`).
        hidden: width h of the two hidden layers (default :func:`default_hidden`).
        encoder: also build per-class encoders ``d_f → h → h → d_z`` (needed by ``fit="autoencoder"``).
        generator: randomness of the initial weights.
    """

    center: Tensor
    scale: Tensor

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        latent_dim: int | None = None,
        hidden: int | None = None,
        encoder: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or feature_dim < 1:
            raise ConfigError(f"need num_classes >= 1 and feature_dim >= 1, got {num_classes} and {feature_dim}")
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.latent_dim = default_latent_dim(feature_dim) if latent_dim is None else latent_dim
        self.hidden = default_hidden(feature_dim) if hidden is None else hidden
        if self.latent_dim < 1 or self.hidden < 1:
            raise ConfigError(f"latent_dim and hidden must be >= 1, got {self.latent_dim} and {self.hidden}")
        d_z, h = self.latent_dim, self.hidden
        self.decoder = _ClassMLPs(num_classes, [d_z, h, h, feature_dim], generator)
        self.encoder = _ClassMLPs(num_classes, [feature_dim, h, h, d_z], generator) if encoder else None
        self.register_buffer("center", torch.zeros(num_classes, feature_dim))  # μ_c (K, d_f)
        self.register_buffer("scale", torch.ones(()))  # s, per-coordinate spread around the class means

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    def forward(self, z: Tensor, y: Tensor, groups: ClassGroups | None = None) -> Tensor:
        """``G_{y_i}(z_i)``: z (B, d_z), y (B,) → (B, d_f)."""
        return self.center[y] + self.scale * self.decoder(z, y, groups)

    def standardized(self, u: Tensor, y: Tensor) -> Tensor:
        """``(u − μ_y) / s``: features in the units the MLPs work in, (B, d_f)."""
        return (u - self.center[y]) / self.scale

    def encode(self, u: Tensor, y: Tensor, groups: ClassGroups | None = None) -> Tensor:
        """``E_{y_i}(u_i)``: u (B, d_f) → (B, d_z); needs ``encoder=True``."""
        if self.encoder is None:
            raise ConfigError("these generators have no encoder: build them with encoder=True (fit='autoencoder')")
        return self.encoder(self.standardized(u, y), y, groups)

    def sample(self, y: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``G_{y_i}(z_i)`` with z_i ~ N(0, I): points on the class manifolds, (B, d_f)."""
        return self(_randn(len(y), self.latent_dim, generator, self.center.device), y)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        *,
        method: str = "autoencoder",
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 256,
        generator: torch.Generator | None = None,
    ) -> float:
        """Fit the generators (and encoders) to ``features`` (N, d_f) with class ``labels`` (N,); returns the last
        epoch's mean reconstruction error (in units of ``s²`` per sample).

        Sets ``μ_c`` (a class without samples gets the global mean) and ``s`` first, then runs ``epochs`` passes of
        Adam(``lr``) over shuffled minibatches of ``batch_size``, each minibatch's loss summed class by class.
        Deterministic under ``generator`` (a CPU generator; the tensors may live on any device).
        """
        if method not in FITS:
            raise ConfigError(f"unknown manifold fit {method!r}; choose one of {', '.join(FITS)}")
        if method == "autoencoder" and self.encoder is None:
            raise ConfigError("fit='autoencoder' needs generators built with encoder=True")
        if epochs < 1 or batch_size < 1 or not lr > 0:
            raise ConfigError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
        if features.dim() != 2 or features.shape[1] != self.feature_dim or labels.shape != features.shape[:1]:
            raise DataError(
                f"expected features (N, {self.feature_dim}) and labels (N,), got {tuple(features.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if len(labels) == 0:
            raise DataError("no features to fit the class generators on")
        device = self.center.device
        u = features.detach().float().to(device)
        y = labels.long().to(device)
        self._set_standardization(u, y)
        u_std = self.standardized(u, y)  # (N, d_f); constant during the fit

        codes = None
        params = list(self.parameters())
        if method == "glo":
            codes = nn.Parameter(_randn(len(y), self.latent_dim, generator, device))
            params.append(codes)
        optimizer = torch.optim.Adam(params, lr=lr)
        last = float("nan")
        with torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(len(y), generator=generator, device=_on(generator)).to(device)
                total = torch.zeros((), device=device)
                for idx in order.split(batch_size):
                    yb, ub = y[idx], u_std[idx]
                    optimizer.zero_grad(set_to_none=True)
                    loss = torch.zeros((), device=device)
                    # Class by class: each class's generator only ever sees its own rows.
                    for c in yb.unique().tolist():
                        rows = (yb == c).nonzero().squeeze(1)
                        target = ub[rows]  # (n_c, d_f)
                        if method == "autoencoder":
                            assert self.encoder is not None
                            z = self.encoder.forward_class(target, c)
                        elif method == "glo":
                            assert codes is not None
                            z = codes[idx[rows]]
                            loss = loss + _CODE_PENALTY * z.pow(2).sum()
                        else:  # "mse": z independent of the target, as in the released trainer
                            z = _randn(len(rows), self.latent_dim, generator, device)
                        loss = loss + (target - self.decoder.forward_class(z, c)).pow(2).sum()
                    (loss / len(idx)).backward()
                    optimizer.step()
                    total += loss.detach()
                last = float(total) / len(y)
        optimizer.zero_grad(set_to_none=True)  # leave no fit gradients on the generators
        return last

    @torch.no_grad()
    def _set_standardization(self, u: Tensor, y: Tensor) -> None:
        counts = torch.bincount(y, minlength=self.num_classes).to(u.dtype)  # (K,)
        sums = torch.zeros(self.num_classes, self.feature_dim, device=u.device).index_add_(0, y, u)
        center = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], u.mean(0))
        spread = (u - center[y]).pow(2).mean().sqrt()
        self.center.copy_(center)
        # A degenerate spread (a single point per class) falls back to the features' overall size.
        self.scale.copy_(torch.where(spread > 1e-8, spread, u.abs().mean().clamp_min(1e-8)))


def fit_generators(
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    fit: str = "autoencoder",
    latent_dim: int | None = None,
    hidden: int | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> ClassGenerators:
    """Build :class:`ClassGenerators` for ``features`` (N, d_f) on their device and fit them (see ``fit``)."""
    if fit not in FITS:
        raise ConfigError(f"unknown manifold fit {fit!r}; choose one of {', '.join(FITS)}")
    gens = ClassGenerators(
        num_classes, features.shape[1], latent_dim=latent_dim, hidden=hidden, encoder=fit == "autoencoder",
        generator=generator,
    ).to(features.device)
    gens.fit(features, labels, method=fit, epochs=epochs, lr=lr, batch_size=batch_size, generator=generator)
    return gens.eval()


def manifold_distance(
    generators: ClassGenerators,
    u: Tensor,
    y: Tensor,
    *,
    steps: int = 5,
    lr: float = 0.1,
    init: str = "auto",
    generator: torch.Generator | None = None,
    differentiable: bool = True,
) -> Tensor:
    """``d_{M_y}(u) ≈ min_z ‖u − G_y(z)‖²`` per row: u (B, d_f), y (B,) → (B,), in squared feature units.

    Args:
        steps: T_z gradient steps on z (paper: 5), on ``‖(u − G_y(z)) / s‖²`` with step ``lr`` (code: 0.1).
        init: the start z₀: ``"encoder"`` (``E_y(u)``), ``"random"`` (N(0, I) from ``generator``, the code's), or
            ``"auto"``: the encoder when the generators have one, else random.
        differentiable: keep the gradient of the final distance w.r.t. ``u`` (``mcat/manifold.py``). ``False`` is the
            released trainer's behaviour: computed from detached features, so no gradient reaches ``u``.

    The z-loop is detached from ``u`` (the gradient is that of ``‖u − G_y(z*)‖²`` at the found z*, the envelope
    theorem's answer at an exact minimum). The generators' parameters never receive gradients (they are frozen for
    the call and restored after). A step that fails to lower a row's residual is undone and the row's step halved.
    """
    if init not in INITS:
        raise ConfigError(f"unknown latent init {init!r}; choose one of {', '.join(INITS)}")
    if steps < 0 or not lr > 0:
        raise ConfigError(f"need steps >= 0 and lr > 0, got {steps} and {lr}")
    if u.dim() != 2 or u.shape[1] != generators.feature_dim:
        raise DataError(f"features must be (B, {generators.feature_dim}), got {tuple(u.shape)}")
    use_encoder = init == "encoder" or (init == "auto" and generators.has_encoder)
    groups = class_groups(y, generators.num_classes)
    with frozen_model(generators), torch.enable_grad():
        target = generators.standardized(u.detach().float(), y)  # (B, d_f), in units of s
        if use_encoder:
            z = generators.encode(u.detach().float(), y, groups).detach()
        else:
            z = _randn(len(y), generators.latent_dim, generator, u.device)
        best_z, best_grad = z, torch.zeros_like(z)
        best = torch.full((len(y),), math.inf, device=u.device)
        step_size = torch.full((len(y), 1), lr, device=u.device)  # per row: halved when a step fails
        for step in range(steps + 1):
            z = z.detach().requires_grad_(step < steps)
            residual = (target - generators.decoder(z, y, groups)).pow(2).sum(1)  # (B,)
            grad = torch.autograd.grad(residual.sum(), z)[0] if step < steps else best_grad
            with torch.no_grad():
                better = residual < best
                best = torch.where(better, residual, best)
                best_z = torch.where(better[:, None], z, best_z)
                best_grad = torch.where(better[:, None], grad, best_grad)
                step_size = torch.where(better[:, None], step_size, step_size / 2)
                z = best_z - step_size * best_grad
        best_z = best_z.detach()
        if not differentiable:
            with torch.no_grad():
                return (u.detach().float() - generators(best_z, y, groups)).pow(2).sum(1)
        return (u.float() - generators(best_z, y, groups)).pow(2).sum(1)


def _on(generator: torch.Generator | None) -> torch.device | None:
    return None if generator is None else generator.device


def _randn(rows: int, cols: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """N(0, I) of shape (rows, cols) drawn on the generator's device (CPU or CUDA), then moved to ``device``."""
    return torch.randn(rows, cols, generator=generator, device=_on(generator) or device).to(device)
