"""The rating page: clean / adversarial image pairs and clean / clean controls, in a seeded random order, each
rated on a Likert scale; see :mod:`sparring.rating` for the method and its limits.

The page is one self-contained HTML file (images inline as base64 PNG, inline CSS and script, no external URL): it
can be mailed to raters or opened from a shared drive. It keeps the answers in the browser's ``localStorage`` under
the page's id (a reload keeps them) and exports them as JSON, both as a download and in a text box.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparring.errors import DataError, RunFolderError

GENERATOR = "sparring-rate"
# In the head of every rating page: what lets a later write recognise a page it may replace.
MARKER = f'<meta name="generator" content="{GENERATOR}">'
PAGE_FILE = "rating.html"
EXAMPLES_FILE = "examples.npz"
REPORT_FILE = "report.json"
CONTROL = "control"
ADVERSARIAL = "adversarial"
QUESTION = "How different do these two images look?"
LOW_ANCHOR = "identical"
HIGH_ANCHOR = "very different"
SCALES = (5, 7)
IMAGE_PX = 160  # images are enlarged (nearest neighbour) to at least this many pixels on their longer side


@dataclass(frozen=True)
class Pair:
    """One pair on the page: its id (page order), condition (an attack's name or :data:`CONTROL`), where its
    clean image came from (``run:index``), the two images as base64 PNG and the side of the adversarial one
    (None for a control, whose two sides are the same clean image)."""

    pair: str
    condition: str
    source: str
    left: str
    right: str
    adversarial_side: str | None
    width: int
    height: int


@dataclass(frozen=True)
class RatingPage:
    """What :func:`write_rating_page` wrote: the page, its id and how many pairs of each kind it holds."""

    path: Path
    page_id: str
    n_adversarial: int
    n_controls: int
    skipped_unchanged: int
    conditions: dict[str, int]


@dataclass(frozen=True)
class _Run:
    label: str
    clean: np.ndarray
    adv: np.ndarray
    attacks: list[str]
    threat: str | None


def default_controls(n_adversarial: int) -> int:
    """Clean-vs-clean control pairs by default: a quarter of the adversarial pairs, at least 4."""
    return max(4, math.ceil(0.25 * n_adversarial))


def write_rating_page(
    run_dirs: Sequence[Path], out: Path | None = None, *, pairs: int | None = None, controls: int | None = None,
    seed: int = 0, scale: int = 5,
) -> RatingPage:
    """Write the rating page for the ``examples.npz`` of ``run_dirs`` to ``out`` (default ``rating.html``; a folder
    gets ``rating.html``) and return what it holds.

    ``pairs`` caps the clean / adversarial pairs (default: all), drawn evenly across conditions; ``controls`` is
    the number of clean / clean pairs (default :func:`default_controls`); ``seed`` fixes which pairs, their order
    and which side shows the adversarial image; ``scale`` is 5 or 7 Likert points. A pair whose adversarial
    image equals its clean one (the attack left it unchanged) is skipped.

    Raises:
        DataError: a run folder without a readable ``examples.npz`` of (N, 1|3, H, W) finite images, or no pair
            left to rate.
        RunFolderError: ``out`` exists and is not a rating page sparring wrote (never overwritten).
    """
    if scale not in SCALES:
        raise DataError(f"--scale must be 5 or 7 (Likert points), got {scale}")
    if pairs is not None and pairs < 1:
        raise DataError(f"--pairs must be at least 1, got {pairs}")
    if controls is not None and controls < 0:
        raise DataError(f"--controls must be 0 or more, got {controls}")
    if not run_dirs:
        raise DataError("name at least one run folder holding examples.npz")
    path = Path(out) if out is not None else Path(PAGE_FILE)
    if path.is_dir():
        path = path / PAGE_FILE
    if path.exists() and not is_rating_page(path):
        raise RunFolderError(f"{path} exists and is not a rating page written by sparring; it is left alone: "
                             "remove it or choose another --out")
    runs = _load_runs(run_dirs)
    chosen, skipped = _pick_adversarial(runs, pairs, seed)
    n_controls = default_controls(len(chosen)) if controls is None else controls
    rng = np.random.default_rng([seed, 1])
    control_sources = _pick_controls(runs, n_controls, rng)
    items = [(runs[r].attacks[i], r, i) for r, i in chosen] + [(CONTROL, r, i) for r, i in control_sources]
    order = rng.permutation(len(items))
    sides = rng.integers(0, 2, size=len(items))
    width = len(str(len(items)))
    built = [_pair(f"p{position + 1:0{width}d}", items[k], runs, bool(sides[position]))
             for position, k in enumerate(order)]
    page_id = _page_id(built, scale)
    html = render_page(built, page_id=page_id, scale=scale, seed=seed, runs=runs)
    from sparring.files import atomic_write_text

    atomic_write_text(path, html)
    conditions: dict[str, int] = {}
    for p in built:
        conditions[p.condition] = conditions.get(p.condition, 0) + 1
    return RatingPage(path, page_id, len(chosen), len(control_sources), skipped, dict(sorted(conditions.items())))


def is_rating_page(path: Path) -> bool:
    """Whether ``path`` is a rating page sparring wrote (its head carries :data:`MARKER`)."""
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(8192)
    except OSError:
        return False
    return MARKER.encode() in head


def anchors(scale: int) -> list[tuple[int, str]]:
    """The Likert points with their verbal anchors: only the two ends are named."""
    return [(v, LOW_ANCHOR if v == 1 else HIGH_ANCHOR if v == scale else "") for v in range(1, scale + 1)]


def render_page(pairs: Sequence[Pair], *, page_id: str, scale: int, seed: int = 0,
                runs: Sequence[_Run] = ()) -> str:
    """The HTML of a rating page (see :func:`write_rating_page`)."""
    from sparring.report.html import render_template

    meta = {
        "generator": GENERATOR, "format": 1, "page_id": page_id, "scale": scale, "question": QUESTION,
        "anchors": {"1": LOW_ANCHOR, str(scale): HIGH_ANCHOR}, "n_pairs": len(pairs), "seed": seed,
        "runs": [{"run": r.label, "threat": r.threat, "examples": len(r.clean)} for r in runs],
    }
    return render_template(
        "rating.html", title="Image comparison", question=QUESTION, scale=scale, anchors=anchors(scale),
        low=LOW_ANCHOR, high=HIGH_ANCHOR, pairs=list(pairs), meta=meta,
    )


# -- examples ----------------------------------------------------------------------------------------------------


def _load_runs(run_dirs: Sequence[Path]) -> list[_Run]:
    labels = _labels([Path(d) for d in run_dirs])
    return [_load_run(Path(d), label, several=len(run_dirs) > 1) for d, label in zip(run_dirs, labels, strict=True)]


def _labels(run_dirs: list[Path]) -> list[str]:
    """Each run's short name: its folder's name, or the path as given where two names clash."""
    names = [d.resolve().name or str(d) for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs, strict=True)]


def _load_run(run_dir: Path, label: str, *, several: bool) -> _Run:
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder: name run or eval folders holding {EXAMPLES_FILE}")
    path = run_dir / EXAMPLES_FILE
    if not path.is_file():
        raise DataError(f"{run_dir} holds no {EXAMPLES_FILE}: evaluate a model there first (sparring eval or run)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} could not be read: {err}") from err
    missing = [key for key in ("clean", "adv") if key not in arrays]
    if missing:
        raise DataError(f"{path} lacks {' and '.join(missing)}")
    clean, adv = arrays["clean"], arrays["adv"]
    if clean.ndim != 4 or clean.shape[1] not in (1, 3) or clean.shape != adv.shape or len(clean) == 0:
        raise DataError(f"{path}: clean {clean.shape} and adv {adv.shape} are not matching (N, 1|3, H, W) images; "
                        "only image examples can be rated")
    if clean.dtype.kind not in "fiu" or adv.dtype.kind not in "fiu":
        raise DataError(f"{path}: clean and adv must be numbers, got {clean.dtype} and {adv.dtype}")
    clean, adv = clean.astype(np.float64), adv.astype(np.float64)
    if not (np.isfinite(clean).all() and np.isfinite(adv).all()):
        raise DataError(f"{path}: clean or adv holds NaN or infinite values")
    attacks = _attack_names(arrays.get("attack"), len(clean), path)
    if several:
        attacks = [f"{label}/{name}" for name in attacks]
    return _Run(label, clean, adv, attacks, _threat(run_dir / REPORT_FILE))


def _attack_names(names: np.ndarray | None, n: int, path: Path) -> list[str]:
    """Each example's condition: the ``attack`` array's names if the file has one, else :data:`ADVERSARIAL`."""
    if names is None:
        return [ADVERSARIAL] * n
    if names.dtype.kind not in "US" or names.shape != (n,):
        raise DataError(f"{path}: attack must be an array of {n} strings, got {names.dtype} {names.shape}")
    out = []
    for name in names.tolist():
        text = (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).strip() or ADVERSARIAL
        out.append(f"attack {text}" if text == CONTROL else text)  # "control" is the clean/clean pairs' condition
    return out


def _threat(path: Path) -> str | None:
    """The threat model of report.json as a short string (None when absent or unreadable: it only labels)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        from sparring.report.schema import format_threat

        threat = report.get("threat") if isinstance(report, dict) else None
        return format_threat(threat) if isinstance(threat, dict) else None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None


def _pick_adversarial(runs: Sequence[_Run], cap: int | None, seed: int) -> tuple[list[tuple[int, int]], int]:
    """The (run, index) of the adversarial pairs: all changed examples, or ``cap`` of them drawn round-robin
    across conditions (each condition's order seeded), and how many unchanged examples were skipped."""
    pools: dict[str, list[tuple[int, int]]] = {}
    skipped = 0
    for r, run in enumerate(runs):
        for i in range(len(run.clean)):
            if np.array_equal(run.clean[i], run.adv[i]):
                skipped += 1
                continue
            pools.setdefault(run.attacks[i], []).append((r, i))
    if not pools:
        raise DataError("no pair to rate: every adversarial image equals its clean image (the attacks changed "
                        "nothing)")
    rng = np.random.default_rng([seed, 0])
    shuffled = [[pool[j] for j in rng.permutation(len(pool))] for _, pool in sorted(pools.items())]
    chosen: list[tuple[int, int]] = []
    for depth in range(max(len(pool) for pool in shuffled)):
        chosen += [pool[depth] for pool in shuffled if depth < len(pool)]
    return (chosen if cap is None else chosen[:cap]), skipped


def _pick_controls(runs: Sequence[_Run], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` clean images for clean / clean pairs, drawn without replacement (again only when there are fewer)."""
    candidates = [(r, i) for r, run in enumerate(runs) for i in range(len(run.clean))]
    picked: list[tuple[int, int]] = []
    while len(picked) < n:
        picked += [candidates[j] for j in rng.permutation(len(candidates))][: n - len(picked)]
    return picked


def _pair(pair_id: str, item: tuple[str, int, int], runs: Sequence[_Run], adversarial_left: bool) -> Pair:
    condition, r, i = item
    run = runs[r]
    clean = png_base64(run.clean[i])
    if condition == CONTROL:
        left = right = clean
        side = None
    else:
        adv = png_base64(run.adv[i])
        left, right = (adv, clean) if adversarial_left else (clean, adv)
        side = "left" if adversarial_left else "right"
    height, width = _display_size(run.clean.shape[2], run.clean.shape[3])
    return Pair(pair_id, condition, f"{run.label}:{i}", left, right, side, width, height)


def _page_id(pairs: Sequence[Pair], scale: int) -> str:
    """A digest of what raters see and how it is scored: the same page written again keeps its id (and so the
    answers a browser kept for it)."""
    digest = hashlib.sha256(f"{GENERATOR} {scale}".encode())
    for p in pairs:
        digest.update(f"|{p.pair}|{p.condition}|{p.source}|{p.adversarial_side}|".encode())
        digest.update(p.left.encode())
        digest.update(p.right.encode())
    return digest.hexdigest()[:16]


# -- PNG -----------------------------------------------------------------------------------------------------------


def _factor(height: int, width: int) -> int:
    return max(1, math.ceil(IMAGE_PX / max(height, width)))


def _display_size(height: int, width: int) -> tuple[int, int]:
    factor = _factor(height, width)
    return height * factor, width * factor


def png_base64(image: np.ndarray) -> str:
    """A (1|3, H, W) image with values in [0, 1] (clipped) as base64 PNG, enlarged by nearest neighbour so that
    its longer side is at least :data:`IMAGE_PX` pixels (8×8 digits become 160×160)."""
    import base64

    pixels = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    pixels = np.floor(pixels * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    factor = _factor(pixels.shape[0], pixels.shape[1])
    pixels = np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)
    return base64.b64encode(png_bytes(pixels)).decode("ascii")


def png_bytes(pixels: np.ndarray) -> bytes:
    """A minimal PNG encoder: (H, W, 1|3) uint8 as 8-bit greyscale or RGB, no filter, zlib-compressed."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"png_bytes takes (H, W, 1|3) uint8, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, width * channels)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def describe(page: RatingPage) -> str:
    """One line on what a page holds."""
    kinds = ", ".join(f"{n} {name}" for name, n in page.conditions.items())
    skipped = f"; {page.skipped_unchanged} unchanged example(s) skipped" if page.skipped_unchanged else ""
    return f"{page.path}: {page.n_adversarial + page.n_controls} pairs ({kinds}), page id {page.page_id}{skipped}"

