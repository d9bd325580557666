"""Images in the ImageFolder layout: one sub-folder per class, read through Pillow.

::

    pets/                         pets/
      cat/001.png                   train/cat/001.png ...
      cat/002.jpg         or        test/cat/...          (or val/ instead of test/)
      dog/003.png ...               test/dog/...

Class names are the sorted sub-folder names and label ``i`` is the ``i``-th of them. When the folder's
sub-folders are only ``train``, ``test`` and/or ``val``, they are the splits (classes from ``train/``, or from
the evaluated split when there is no ``train/``); otherwise the sub-folders are classes and ``load_data`` makes a
stratified, seeded split. Files are found recursively inside each class folder.

- Files whose suffix is not an image's (``.txt``, ``.csv``, ...) and hidden files and folders (``.DS_Store``,
  ``._x.png``) are skipped, and counted in the layout line. A file with an image suffix that Pillow cannot read
  is an error naming it.
- Images are converted to RGB (alpha dropped, palettes applied), or to grayscale L when every image is
  grayscale (modes 1, L, LA). 16-bit and float images (modes I;16, I, F) are refused: save 8-bit files.
- All images must have one size: two files of different sizes are an error naming both. Nothing is resized.
- An empty class folder stays a class with no images, so labels keep the indices of the sorted folder
  names (as a model trained on the full folder expects); the layout line names it.
- Pixels are scaled to [0, 1] by 1/255: inputs are (N, C, H, W) float32. Rows come in a seeded shuffled
  order, so ``max_samples`` and report examples see every class.

Images are read eagerly into one tensor: this suits evaluation-size sets (tens of thousands of small
images), not ImageNet. What was read is stated in one line, ``Dataset.layout``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sparring.data.dataset import Dataset, stratified_split
from sparring.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
SPLITS = ("train", "test", "val")
GRAY_MODES = frozenset({"1", "L", "LA"})
DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def load_image_folder(path: str | Path, *, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test) from an image folder: its ``train/`` and ``test/`` (or ``val/``) sub-folders when it has
    them, else a stratified split of its class folders (``test_fraction`` of each class, seeded)."""
    root = _root(path)
    splits = _splits(root)
    if splits is None:
        whole = _load([("", root)], root, classes=_class_names(root), seed=seed)[0]
        try:
            train, test = stratified_split(whole, test_fraction=test_fraction, seed=seed)
        except DataError as e:
            raise DataError(f"{str(root)!r}: {e}") from None
        for part in (train, test):
            part.layout += f"; stratified split {len(train)} train / {len(test)} test (seed {seed})"
        return train, test
    held_out = splits.get("test") or splits.get("val")
    if "train" not in splits or held_out is None:
        raise DataError(
            f"{str(root)!r} has {'/, '.join(sorted(splits))}/ but needs train/ and test/ (or val/); add the missing "
            "one, or put the class folders directly in it for a stratified split"
        )
    train, test = _load([("train", splits["train"]), (held_out.name, held_out)], root,
                        classes=_class_names(splits["train"]), seed=seed)
    return train, test


def load_image_folder_for_evaluation(path: str | Path, *, seed: int = 0) -> Dataset:
    """The images to evaluate in a folder: its ``test/`` (else ``val/``) split, or all its class folders.

    ``sparring eval --data FOLDER`` uses this: nothing is held out. Classes come from ``train/`` when the
    folder has one, so labels match the training split's."""
    root = _root(path)
    splits = _splits(root)
    if splits is None:
        return _load([("", root)], root, classes=_class_names(root), seed=seed)[0]
    held_out = splits.get("test") or splits.get("val")
    if held_out is None:
        raise DataError(
            f"{str(root)!r} has train/ but no test/ or val/ to evaluate; pass {str(root / 'train')!r} to "
            "evaluate the training images"
        )
    classes = _class_names(splits["train"] if "train" in splits else held_out)
    return _load([(held_out.name, held_out)], root, classes=classes, seed=seed)[0]


def _root(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; expected one sub-folder of images per class")
    return root


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _splits(root: Path) -> dict[str, Path] | None:
    """``{split name: folder}`` when the sub-folders are all split names, else None (they are classes)."""
    dirs = _visible_dirs(root)
    if dirs and all(d.name in SPLITS for d in dirs):
        return {d.name: d for d in dirs}
    return None


def _class_names(folder: Path) -> list[str]:
    names = [d.name for d in _visible_dirs(folder)]
    if not names:
        raise DataError(
            f"{str(folder)!r} has no class sub-folders; expected one sub-folder of images per class "
            "(FOLDER/cat/001.png, FOLDER/dog/002.png, ...), optionally inside train/ and test/"
        )
    return names


def _load(parts: list[tuple[str, Path]], root: Path, *, classes: list[str], seed: int) -> list[Dataset]:
    """One Dataset per ``(split name, folder)`` part; the parts share one size and one color mode."""
    scans = [_scan(folder, classes) for _, folder in parts]
    files = [f for scan in scans for f, _ in scan[0]]
    pixels, mode, formats = _read(files)  # (N, H, W, C) uint8 over all parts
    out: list[Dataset] = []
    start = 0
    for (split, _), (found, skipped) in zip(parts, scans, strict=True):
        n = len(found)
        x = torch.from_numpy(pixels[start:start + n]).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        start += n
        y = torch.tensor([label for _, label in found], dtype=torch.int64)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))  # classes interleaved
        x, y = x[order].contiguous(), y[order]
        counts = torch.bincount(y, minlength=len(classes))
        empty = [name for name, count in zip(classes, counts.tolist(), strict=True) if count == 0]
        where = f"{root.name}/{split}" if split else root.name
        line = (
            f"{where}: {n} {'/'.join(formats)} images in {len(classes)} class folders, {mode} "
            f"{x.shape[3]}×{x.shape[2]} → (N, {', '.join(str(d) for d in x.shape[1:])}) float32 ×1/255, "
            f"values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )
        if skipped:
            line += f"; skipped {skipped} non-image file{'s' if skipped > 1 else ''}"
        if empty:
            line += f"; no images for class{'es' if len(empty) > 1 else ''} {', '.join(repr(e) for e in empty)}"
        log.info("data: %s", line)
        out.append(Dataset(x=x, y=y, num_classes=len(classes), class_names=list(classes), name=root.name,
                           layout=line))
    return out


def _scan(folder: Path, classes: list[str]) -> tuple[list[tuple[Path, int]], int]:
    """``([(file, label)], number of skipped non-image files)`` of a folder of class folders."""
    index = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int]] = []
    skipped = 0
    for class_dir in _visible_dirs(folder):
        if class_dir.name not in index:
            raise DataError(
                f"{str(class_dir)!r} is a class the training split does not have (its classes: "
                f"{', '.join(classes)}); remove it or add it to train/"
            )
        for file in sorted(class_dir.rglob("*")):
            if any(part.startswith(".") for part in file.relative_to(class_dir).parts) or not file.is_file():
                skipped += file.is_file()
                continue
            if file.suffix.lower() in IMAGE_SUFFIXES:
                found.append((file, index[class_dir.name]))
            else:
                skipped += 1
    if not found:
        raise DataError(
            f"{str(folder)!r} has no image files in its class folders; expected "
            f"{', '.join(sorted(s.lstrip('.').upper() for s in IMAGE_SUFFIXES))} files"
        )
    return found, skipped


def _read(files: list[Path]) -> tuple[np.ndarray, str, list[str]]:
    """``(pixels (N, H, W, C) uint8, "RGB" or "L", image formats seen)``; one size for all, or an error."""
    from PIL import Image

    first: tuple[Path, tuple[int, int]] | None = None
    modes: set[str] = set()
    formats: list[str] = []
    for file in files:  # headers only: sizes and modes before decoding anything
        try:
            with Image.open(file) as image:
                size, mode, fmt = image.size, image.mode, image.format or file.suffix.lstrip(".").upper()
        except Exception as e:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, ...)
            raise DataError(f"cannot read {str(file)!r} as an image ({_first_line(e)}); remove or replace it") from None
        if mode in DEEP_MODES:
            raise DataError(f"{str(file)!r} is a {mode} image (16-bit or float); save 8-bit PNG or JPEG files")
        if first is None:
            first = (file, size)
        elif size != first[1]:
            raise DataError(
                f"{str(first[0])!r} is {first[1][0]}×{first[1][1]} but {str(file)!r} is {size[0]}×{size[1]}: "
                "all images must have one size; resize them first (sparring does not resize)"
            )
        modes.add(mode)
        if fmt not in formats:
            formats.append(fmt)
    assert first is not None
    mode = "L" if modes <= GRAY_MODES else "RGB"
    width, height = first[1]
    pixels = np.empty((len(files), height, width, 1 if mode == "L" else 3), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert(mode))
        except Exception as e:  # a truncated or corrupt body only shows when decoding
            raise DataError(f"cannot read {str(file)!r} as an image ({_first_line(e)}); remove or replace it") from None
        pixels[i] = array.reshape(height, width, -1)
    return pixels, mode, sorted(formats)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["IMAGE_SUFFIXES", "load_image_folder", "load_image_folder_for_evaluation"]
