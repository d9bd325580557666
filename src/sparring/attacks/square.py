"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black-box random search.

Greedy random search on a per-example loss L (maximized; the paper's margin loss by default), with only
forward passes of the model:

    x̂⁰ = init(x, ε),     x̃ = Π_{B(x,ε) ∩ box}( x̂ᵏ + δᵏ ),  δᵏ ~ P(ε, s(k)),
    x̂^{k+1} = x̃  if  L(f(x̃), y) > L(f(x̂ᵏ), y)  (or x̃ succeeds)  else  x̂ᵏ.

The updates δ are localized: a square window of side s(k) covering a fraction p(k) of the pixels,
``s = round(√(p · H · W))``, where p(k) halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
of a 10 000-query budget (the schedule is rescaled to ``queries``, as in the authors' code).

* **L∞** (paper, Alg. 2): init with vertical stripes ``x + ε · r``, ``r ∈ {±1}^{C×1×W}``; an update sets
  a random square, per channel, to ``x ± ε`` (a vertex of the ball: δ = ±2ε then projection).
* **L2** (paper, Alg. 3): init with a grid of (about 5 × 5) "meta pseudo-Gaussian" tiles of random signs,
  rescaled to ‖δ‖₂ = ε; an update draws two windows of odd side s ≥ 3, moves the mass of window 2 (set to
  0) and the unused budget ``ε² − ‖δ‖²`` into window 1, filled with a new signed pseudo-Gaussian plus its
  old content, then rescales δ to ‖δ‖₂ = ε (every iterate is on the sphere before the box clamp).

Paper defaults: margin loss ``max_{i≠y} z_i − z_y`` (ours is maximized, positive once misclassified),
``p_init = 0.8`` (the paper tunes it per data set and norm; AutoAttack uses 0.8), 10 000 queries (AutoAttack:
5000), 1 restart. As in the paper's algorithm every sample starts at ``init(x, ε)`` (no query at ``x``;
the authors' code skips points misclassified at ``x``, which evaluation does before calling any attack);
a sample with ε = 0 is only scored at ``init = x``. A targeted attack (``target=``) maximizes
``−margin(z, t) = z_t − max_{i≠t} z_i``, which the base class builds: the paper's targeted margin.

Implementation notes:

* **Black-box**: only ``model(x)`` under ``torch.no_grad()``; the ``gradients`` setting is ignored.
* **Early stop**: each iteration queries only the samples not yet successful (one host sync per iteration,
  to select them and to stop when all are broken).
* **Per-sample randomness**: one 32-bit seed per sample comes from its stream (``problem.streams``,
  :mod:`sparring.attacks.rng`: a hash of the call's seed and the sample's id); every later random number
  (window positions, signs, transposes) is a counter-based hash of (seed, restart, iteration), so a sample's
  result depends on its stream only, not on its batch mates or on which of them are still searched, and with
  global ids (as evaluation passes) not on the batch size either.
* Window positions are uniform over all positions where the window fits (the authors' code never picks
  the last one). Per-sample ε (B,) and ``bounds=None`` are supported.
* **Inputs that are not images** (any shape other than (B, C, H, W)) are flattened to (B, 1, 1, D): a
  "square" becomes a run of ``round(p · D)`` consecutive features and the L2 tiles and pseudo-Gaussians
  become their 1-D analogues (a bump and its negative side by side). For tabular data the order of the
  features is arbitrary, so this is plain random search on coordinate blocks.
* ``queries`` is the budget per restart, the initial point included (the paper's N); the result's
  ``queries`` is the number of search iterations of the most-searched sample, at most
  ``restarts · queries`` (the returned ``loss``/``logits`` are those of the queried best point: no extra
  scoring pass).
* Not in the paper: its released code redraws an L∞ update that would not change the current point; this
  one does not (like AutoAttack's port), but it does not send such a no-op candidate to the model either:
  its loss is the current one, so the outcome is the same with fewer forward passes (with one channel
  about half of the late 1-pixel updates are no-ops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import sparring.progress as progress
from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem, success_of
from sparring.attacks.rng import mix32 as _mix32
from sparring.attacks.rng import mul32 as _mul32
from sparring.errors import ConfigError, ThreatModelError

_TINY = 1e-12
_MASK32 = 0xFFFFFFFF
_CHUNK = 64  # steps whose random numbers are hashed in one go
# p(k) = p_init / 2^j where j counts the thresholds below k (k rescaled to a 10 000-query budget).
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SQUARE_STREAM = 0x5A  # the sub-stream Square's per-sample seeds come from


@ATTACKS.register("square")
@dataclass(kw_only=True)
class Square(Attack):
    """Square Attack with ``queries`` queries per restart (L∞ or L2, from the threat model).

    Attributes:
        queries: query budget per restart, the initial point included (paper: 10 000; AutoAttack: 5000).
        p_init: initial fraction of pixels a window covers; halves along the paper's schedule.
        restarts: number of runs; later ones attack only the samples still robust.
        loss: the per-example loss to maximize (paper: ``"margin"``).
        autoattack_compat: reproduce AutoAttack's port (also torchattacks'): at each iteration one window
            position and one sign per channel shared by the whole batch, and window corners drawn from
            ``[0, H − s)`` (the authors' code never picks the last position). Off by default (the paper:
            independent draws per sample over every position); it exists to compare with that code.
    """

    name = "square"
    black_box = True  # only forward passes: the evaluation compares it with the white-box attacks
    loss: str = "margin"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    autoattack_compat: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 1:
            raise ConfigError(f"queries must be >= 1, got {self.queries}")
        if not 0.0 < self.p_init <= 1.0:
            raise ConfigError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not self.score:
            raise ConfigError("Square needs score=True: its random search ranks every candidate by its loss")

    # ------------------------------------------------------------------------------------------- schedule
    def p_at(self, iteration: int) -> float:
        """The fraction p of pixels a window covers at search iteration ``iteration`` (0-based)."""
        rescaled = int(iteration / self.queries * 10000)
        return self.p_init / 2 ** sum(rescaled > t for t in _P_SCHEDULE)

    # ---------------------------------------------------------------------------------------------- run
    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        norm = problem.threat.norm
        if norm not in ("linf", "l2"):
            raise ThreatModelError(f"Square supports the 'linf' and 'l2' threat models, got {norm!r}")
        x = problem.x
        grid = _Grid.of(x)
        x4 = x.reshape(grid.shape(x.shape[0]))  # (B, C, H, W), a view of the caller's x
        eps = problem.threat.eps_for(x4)  # (B, 1, 1, 1)
        device = x.device
        # One 32-bit seed per sample from its stream; everything random afterwards is hashed from it.
        seeds = problem.random().at(_SQUARE_STREAM).keys[:, 0].to(device)
        if self.autoattack_compat:  # every sample draws the same windows and signs
            seeds = seeds[:1].expand(x.shape[0]).contiguous()
        searchable = eps.flatten() > 0  # a sample with ε = 0 is scored at x and never searched
        used = torch.zeros(x.shape[0], dtype=torch.long, device=device)  # forward passes per sample
        best: _State | None = None
        with torch.no_grad():
            for restart in range(self.restarts):
                if best is None:
                    rows = torch.arange(x.shape[0], device=device)
                else:  # later restarts: only the samples still robust
                    rows = (~best.success & searchable).nonzero().squeeze(1)
                    if rows.numel() == 0:
                        break
                run = self._search(model, problem, grid, x4, eps, seeds, restart, rows, searchable[rows], used)
                if best is None:
                    best = run
                else:
                    best.merge(run, rows)
        assert best is not None
        return AttackResult(
            x_adv=best.x.view(x.shape), success=best.success, loss=best.loss, logits=best.logits,
            queries=int(used.max()), time_s=0.0,
        )

    def _search(
        self, model: nn.Module, problem: Problem, grid: _Grid, x4: Tensor, eps: Tensor, seeds: Tensor,
        restart: int, rows: Tensor, searchable: Tensor, used: Tensor,
    ) -> _State:
        """One restart on the samples ``rows``: the greedy random search, returned for those rows."""
        linf = problem.threat.norm == "linf"
        target = None if problem.target is None else problem.target[rows]
        batch = _Batch(
            pos=torch.arange(rows.numel(), device=rows.device), x=x4[rows], eps=eps[rows], seeds=seeds[rows],
            ref=problem.loss_ref[rows], y=problem.y[rows], target=target,
        )
        stream = restart * (self.queries + 1)  # step counter of the hashed random numbers of this restart
        init, width = (self._linf_init, grid.linf_init_draws) if linf else (self._l2_init, grid.l2_init_draws)
        start = init(problem, grid, batch.x, batch.eps, _Draws.at(batch.seeds, stream, width))
        run = self._score(model, problem, batch, start)
        used[rows] += 1
        # The search works on compact copies of the samples still searched, shrunk whenever some succeed.
        keep = ~run.success & searchable
        active, current = batch.take(keep), run.take(keep)
        propose, width = (self._linf_candidate, 2 + grid.channels) if linf else (self._l2_candidate, 5 + grid.channels)
        steps_run = 0
        for iteration in range(self.queries - 1):
            if active.pos.numel() == 0:
                break
            if iteration % _CHUNK == 0:  # hash the next _CHUNK steps' random numbers of the active samples at once
                progress.report(restart * self.queries + iteration, self.restarts * self.queries)
                steps = torch.arange(iteration, min(iteration + _CHUNK, self.queries - 1), device=x4.device)
                table = _hashed(active.seeds, stream + 1 + steps, width)  # (active, steps, width)
                slots = torch.arange(active.pos.numel(), device=x4.device)  # each active sample's row of the table
            draws = _Draws(table[slots, iteration % _CHUNK])
            candidate = propose(problem, grid, active.x, current.x, active.eps, self.p_at(iteration), draws)
            steps_run = iteration + 1
            # An L∞ window that is already at the drawn vertex leaves the point unchanged: its loss is known,
            # so only the changed candidates are queried (late 1-pixel windows are ~half no-ops on 1 channel).
            moved = (candidate != current.x).flatten(1).any(1).nonzero().squeeze(1)  # the iteration's host sync
            if moved.numel() == 0:
                continue
            scored = self._score(model, problem, active.take(moved), candidate[moved])
            # Greedy: keep the candidate if it succeeds or improves the loss (these samples have not succeeded).
            current.put_where(scored, moved, scored.success | (scored.loss > current.loss[moved]))
            done = torch.zeros_like(active.pos, dtype=torch.bool)
            done[moved] = scored.success
            if bool(scored.success.any()):
                run.put(current.take(done), active.pos[done])
                used[rows[active.pos[done]]] += steps_run
                active, current, slots = active.take(~done), current.take(~done), slots[~done]
        run.put(current, active.pos)
        used[rows[active.pos]] += steps_run
        return run

    def _score(self, model: nn.Module, problem: Problem, batch: _Batch, x4: Tensor) -> _State:
        """Query the model at ``x4`` (b, C, H, W) for the samples of ``batch``: loss, logits, success."""
        logits = model(x4.view(x4.shape[0], *problem.x.shape[1:]))
        return _State(
            x=x4, loss=problem.loss_fn(logits, batch.ref), logits=logits,
            success=success_of(logits, batch.y, batch.target),
        )

    def _positions(self, size: int, side: int) -> int:
        """How many corners a window of ``side`` can take along an axis of ``size``."""
        return max(size - side, 1) if self.autoattack_compat else size - side + 1

    # ------------------------------------------------------------------------------------------------ L∞
    def _linf_init(self, problem: Problem, grid: _Grid, x: Tensor, eps: Tensor, draws: _Draws) -> Tensor:
        """Vertical stripes: every column of every channel at ``x ± ε`` (x: (b, C, H, W))."""
        b, c, _, w = x.shape
        signs = draws.signs(0, c * w).view(b, c, 1, w).to(x.dtype)
        return problem.threat.clip_box(x + eps * signs)

    def _linf_candidate(
        self, problem: Problem, grid: _Grid, x: Tensor, x_cur: Tensor, eps: Tensor, p: float, draws: _Draws
    ) -> Tensor:
        """Set a random window of side s to ``x ± ε`` (one sign per sample and channel)."""
        b, c = x.shape[:2]
        sh, sw = grid.window(p, l2=False)
        top, left = draws.ints(0, self._positions(grid.height, sh)), draws.ints(1, self._positions(grid.width, sw))
        mask = grid.mask(top, left, sh, sw)  # (b, 1, H, W)
        signs = draws.signs(2, c).view(b, c, 1, 1).to(x.dtype)
        return torch.where(mask, problem.threat.clip_box(x + eps * signs), x_cur)

    # ------------------------------------------------------------------------------------------------ L2
    def _l2_init(self, problem: Problem, grid: _Grid, x: Tensor, eps: Tensor, draws: _Draws) -> Tensor:
        """A grid of signed meta pseudo-Gaussian tiles (side ≈ H/5), rescaled to ‖δ‖₂ = ε."""
        b, c, h, w = x.shape
        th, tw, n_rows, n_cols = grid.init_tiles()
        # Tile index and offset inside the tile of every pixel; the tiled area is centred.
        tile_r, off_r, in_r = _tiling(h, th, n_rows, x.device)
        tile_c, off_c, in_c = _tiling(w, tw, n_cols, x.device)
        signs = draws.signs(0, c * n_rows * n_cols).view(b, c, n_rows, n_cols).to(x.dtype)
        flips = draws.bits(c * n_rows * n_cols, n_rows * n_cols).view(b, n_rows, n_cols)
        patterns = _meta_gaussians(th, tw, x.device, x.dtype)  # (2, th, tw)
        flip = flips[:, tile_r[:, None], tile_c[None, :]]  # (b, H, W)
        shape = patterns[flip.long(), off_r[None, :, None], off_c[None, None, :]]  # (b, H, W)
        delta = shape[:, None] * signs[:, :, tile_r[:, None], tile_c[None, :]] * (in_r[:, None] & in_c[None, :])
        return problem.threat.clip_box(x + _to_sphere(delta, eps))

    def _l2_candidate(
        self, problem: Problem, grid: _Grid, x: Tensor, x_cur: Tensor, eps: Tensor, p: float, draws: _Draws
    ) -> Tensor:
        """Move the mass of window 2 and the unused budget into window 1, refilled with a new bump."""
        b, c = x.shape[:2]
        sh, sw = grid.window(p, l2=True)
        rows, cols = self._positions(grid.height, sh), self._positions(grid.width, sw)
        top1, left1 = draws.ints(0, rows), draws.ints(1, cols)
        top2, left2 = draws.ints(2, rows), draws.ints(3, cols)
        flip = draws.bits(4, 1).squeeze(1)
        signs = draws.signs(5, c).view(b, c, 1, 1).to(x.dtype)
        win1, win2 = grid.mask(top1, left1, sh, sw), grid.mask(top2, left2, sh, sw)  # (b, 1, H, W)
        delta = x_cur - x  # (b, C, H, W)
        norm_win1 = _channel_norm(delta * win1)  # (b, C, 1, 1)
        norm_both = _channel_norm(delta * (win1 | win2))  # (b, C, 1, 1)
        norm_all = _channel_norm(delta).square().sum(1, keepdim=True).sqrt()  # (b, 1, 1, 1)
        bump = grid.place(_meta_gaussians(sh, sw, x.device, x.dtype), flip, top1, left1)  # (b, 1, H, W)
        new = (bump * signs + delta / (norm_win1 + _TINY)) * win1
        budget = ((eps.square() - norm_all.square()).clamp_min(0) / c + norm_both.square()).sqrt()
        new = new / _channel_norm(new).clamp_min(_TINY) * budget
        delta = torch.where(win1, new, torch.where(win2, torch.zeros_like(delta), delta))
        return problem.threat.clip_box(x + _to_sphere(delta, eps))


# ---------------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class _Grid:
    """The (C, H, W) layout the search works on; ``flat`` for non-image inputs viewed as (1, 1, D)."""

    channels: int
    height: int
    width: int
    flat: bool

    @staticmethod
    def of(x: Tensor) -> _Grid:
        if x.dim() == 4:
            return _Grid(channels=x.shape[1], height=x.shape[2], width=x.shape[3], flat=False)
        return _Grid(channels=1, height=1, width=x[0].numel(), flat=True)

    @property
    def linf_init_draws(self) -> int:
        return self.channels * self.width  # one sign per channel and column

    @property
    def l2_init_draws(self) -> int:
        rows, cols = self.init_tiles()[2:]
        return (self.channels + 1) * rows * cols  # a sign per channel and tile, a transpose per tile

    def init_tiles(self) -> tuple[int, int, int, int]:
        """L2 initial grid: tile height and width (~1/5 of the image side), tiles per column and row."""
        th, tw = (1, max(self.width // 5, 1)) if self.flat else (max(min(self.height, self.width) // 5, 1),) * 2
        return th, tw, self.height // th, self.width // tw

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.height, self.width)

    def window(self, p: float, *, l2: bool) -> tuple[int, int]:
        """(height, width) of the window covering a fraction ``p`` of the pixels (odd and ≥ 3 for L2)."""
        side = round(p * self.width) if self.flat else round(math.sqrt(p * self.height * self.width))
        side = max(side, 3 if l2 else 1)
        if l2 and side % 2 == 0:
            side += 1
        if self.flat:
            return 1, min(side, self.width)
        side = min(side, self.height, self.width)
        return side, side

    def mask(self, top: Tensor, left: Tensor, sh: int, sw: int) -> Tensor:
        """(b, 1, H, W) bool: the windows ``[top, top+sh) × [left, left+sw)``, one per sample."""
        rows = torch.arange(self.height, device=top.device)
        cols = torch.arange(self.width, device=top.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + sh)  # (b, H)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + sw)  # (b, W)
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]

    def place(self, patterns: Tensor, flip: Tensor, top: Tensor, left: Tensor) -> Tensor:
        """(b, 1, H, W): pattern ``flip`` of ``patterns`` (2, sh, sw) with its corner at (top, left).

        Values outside the window are arbitrary (the callers mask them)."""
        sh, sw = patterns.shape[1:]
        rows = torch.arange(self.height, device=top.device)
        cols = torch.arange(self.width, device=top.device)
        off_r = (rows - top[:, None]).clamp(0, sh - 1)  # (b, H)
        off_c = (cols - left[:, None]).clamp(0, sw - 1)  # (b, W)
        return patterns[flip.long()[:, None, None], off_r[:, :, None], off_c[:, None, :]][:, None]


def _tiling(size: int, tile: int, count: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per pixel along one axis: tile index, offset inside the tile, and whether it lies in a tile."""
    start = max((size - 5 * tile) // 2, 0)  # as the paper's grid: ~5 tiles, centred
    rel = torch.arange(size, device=device) - start
    inside = (rel >= 0) & (rel < count * tile)
    rel = rel.clamp(0, count * tile - 1)
    return rel // tile, rel % tile, inside


def _bump(h: int, w: int, device: torch.device) -> Tensor:
    """(h, w) pseudo-Gaussian: the sum of concentric rectangles k = 0, 1, ... weighted 1/(k+1)²."""
    if h == 0 or w == 0:
        return torch.zeros(h, w, device=device, dtype=torch.float64)
    dist = torch.maximum(
        (torch.arange(h, device=device) - h // 2).abs()[:, None], (torch.arange(w, device=device) - w // 2).abs()
    )  # (h, w) Chebyshev distance to the centre: covered by rectangles k >= dist
    weights = 1.0 / (torch.arange(max(h, w) // 2 + 1, device=device, dtype=torch.float64) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} 1/(k+1)²
    bump = tail[dist]
    return bump / bump.norm()


def _meta_gaussians(sh: int, sw: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(2, sh, sw): a unit-norm bump next to its negative along the long axis, and its transpose if square."""
    if sh >= sw:  # split the rows: a positive bump on top of a negative one
        meta = torch.cat([_bump(sh // 2, sw, device), -_bump(sh - sh // 2, sw, device)], 0)
    else:  # a 1-D window: split the columns
        meta = torch.cat([_bump(sh, sw // 2, device), -_bump(sh, sw - sw // 2, device)], 1)
    meta = meta / meta.norm()
    other = meta.t() if sh == sw else meta
    return torch.stack([meta, other]).to(dtype)


def _channel_norm(v: Tensor) -> Tensor:
    """(b, C, 1, 1) L2 norm of each channel of ``v`` (b, C, H, W)."""
    return v.square().sum((2, 3), keepdim=True).sqrt()


def _to_sphere(delta: Tensor, eps: Tensor) -> Tensor:
    """Rescale each sample's ``delta`` to L2 norm ``eps`` (a zero ``delta`` stays zero)."""
    norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * (eps / norm.clamp_min(_TINY))


@dataclass
class _State:
    """Per-sample point of a search (or best point of the attack): input, loss, logits, success."""

    x: Tensor
    loss: Tensor
    logits: Tensor
    success: Tensor

    def take(self, index: Tensor) -> _State:
        return _State(x=self.x[index], loss=self.loss[index], logits=self.logits[index], success=self.success[index])

    def put(self, other: _State, index: Tensor) -> None:
        """Overwrite the samples ``index`` with ``other``."""
        self.x[index], self.loss[index], self.logits[index], self.success[index] = (
            other.x, other.loss, other.logits, other.success,
        )

    def put_where(self, other: _State, index: Tensor, better: Tensor) -> None:
        """Take ``other`` (computed on the samples ``index``) where ``better`` holds."""
        self.put(other.take(better), index[better])

    def keep_better(self, other: _State, better: Tensor) -> None:
        """Take ``other`` where ``better`` (b,) holds."""
        self.x = torch.where(better.view(-1, 1, 1, 1), other.x, self.x)
        self.loss = torch.where(better, other.loss, self.loss)
        self.logits = torch.where(better[:, None], other.logits, self.logits)
        self.success = torch.where(better, other.success, self.success)

    def merge(self, other: _State, rows: Tensor) -> None:
        """Take ``other`` (computed on ``rows``) where it ranks higher by (success, loss)."""
        mine = self.take(rows)
        mine.keep_better(other, torch.where(other.success == mine.success, other.loss > mine.loss, other.success))
        self.put(mine, rows)


@dataclass
class _Batch:
    """The samples a search works on: positions ``pos`` in the searched rows and their per-sample data."""

    pos: Tensor
    x: Tensor
    eps: Tensor
    seeds: Tensor
    ref: Tensor
    y: Tensor
    target: Tensor | None

    def take(self, index: Tensor) -> _Batch:
        return _Batch(
            pos=self.pos[index], x=self.x[index], eps=self.eps[index], seeds=self.seeds[index], ref=self.ref[index],
            y=self.y[index], target=None if self.target is None else self.target[index],
        )


def _hashed(seeds: Tensor, steps: Tensor, count: int) -> Tensor:
    """(b, n, count) uniform integers in [0, 2³²): a hash of (seed, step, k) for samples ``seeds`` (b,),
    steps ``steps`` (n,) and k < ``count``; the same numbers for a sample whatever its batch mates are."""
    key = _mix32(seeds[:, None] ^ _mix32(steps & _MASK32)[None, :])  # (b, n)
    k = _mul32(torch.arange(count, device=seeds.device), 0x9E3779B9)  # (count,) Weyl sequence
    return _mix32(_mix32((key[:, :, None] + k) & _MASK32) ^ key[:, :, None])


@dataclass
class _Draws:
    """The random numbers of one step, (b, width) integers in [0, 2³²), read by column."""

    raw: Tensor

    @staticmethod
    def at(seeds: Tensor, step: int, width: int) -> _Draws:
        return _Draws(_hashed(seeds, torch.tensor([step], device=seeds.device), width)[:, 0])

    def ints(self, col: int, high: int) -> Tensor:
        """(b,) uniform integers in [0, high)."""
        return (self.raw[:, col] * high) >> 32

    def bits(self, col: int, count: int) -> Tensor:
        """(b, count) fair random booleans."""
        return (self.raw[:, col : col + count] >> 31).bool()

    def signs(self, col: int, count: int) -> Tensor:
        """(b, count) random ±1 (int64)."""
        return (self.raw[:, col : col + count] >> 31) * 2 - 1
