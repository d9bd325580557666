"""Data as users have it: npz in NCHW or NHWC, uint8 or float; ImageFolder trees; a model of the wrong shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import one_error_line, run_main
from torch import nn

from sparring.data import Dataset, load_data, load_eval_data
from sparring.errors import DataError
from sparring.models import build_model
from sparring.models.fit import check_model_accepts, expected_input_shape

# -------------------------------------------------------------------------------------------------- npz


def _save(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_nhwc_uint8_becomes_nchw_float_in_unit_range(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)  # H=5 ≠ W=4: no silent mixup
    _, ds = load_eval_data(_save(tmp_path / "cifar.npz", x=x, y=np.arange(6) % 2))
    expected = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32) / 255)
    assert ds.x.dtype == torch.float32 and ds.input_shape == (3, 5, 4)
    assert torch.equal(ds.x, expected)
    assert ds.layout.startswith("cifar.npz: x: 6 images (N, H, W, C) uint8 → (N, 3, 5, 4) float32 ×1/255")
    assert "\n" not in ds.layout


def test_nchw_float_is_kept_as_is(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((6, 3, 5, 4)).astype(np.float32)
    _, ds = load_eval_data(_save(tmp_path / "f.npz", x=x, y=np.arange(6) % 2))
    assert torch.equal(ds.x, torch.from_numpy(x))
    assert "(N, C, H, W) float32 → (N, 3, 5, 4) float32, values in [" in ds.layout and "×1/255" not in ds.layout


def test_ambiguous_and_three_d_layouts_are_kept_and_said(tmp_path: Path) -> None:
    x = np.random.default_rng(2).integers(0, 256, size=(4, 1, 4, 4), dtype=np.uint8)  # dims 1 and 3 both channel-like
    _, ds = load_eval_data(_save(tmp_path / "amb.npz", x=x, y=np.arange(4) % 2))
    assert ds.input_shape == (1, 4, 4) and "dims 1 and 3 could both be channels" in ds.layout
    gray = np.random.default_rng(3).random((4, 6, 6)).astype(np.float32)
    _, ds = load_eval_data(_save(tmp_path / "gray.npz", x=gray, y=np.arange(4) % 2))
    assert ds.input_shape == (6, 6) and "x[:, None]" in ds.layout


def test_unscaled_float_pixels_are_refused_in_one_line(tmp_path: Path) -> None:
    x = np.random.default_rng(4).integers(0, 256, size=(4, 3, 5, 5)).astype(np.float32)
    with pytest.raises(DataError, match=r"values up to 2\d\d.*x / 255") as info:
        load_eval_data(_save(tmp_path / "raw.npz", x=x, y=np.arange(4) % 2))
    assert "\n" not in str(info.value)
    standardized = (x / 255 - 0.5) / 0.25  # negative values: normalized inputs, accepted with their range stated
    _, ds = load_eval_data(_save(tmp_path / "std.npz", x=standardized, y=np.arange(4) % 2))
    assert "values in [-1.98, 2]" in ds.layout


def test_split_and_test_arrays_keep_their_layout_lines(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(20, 5, 4, 3), dtype=np.uint8)
    train, test = load_data(_save(tmp_path / "a.npz", x=x, y=np.arange(20) % 2), test_fraction=0.25, seed=0)
    assert train.layout == test.layout and "stratified split 14 train / 6 test (seed 0)" in train.layout
    assert train.subset(torch.tensor([0, 1])).layout == train.layout
    nchw = np.ascontiguousarray(x[:4].transpose(0, 3, 1, 2))  # x_test saved the other way round: same shape in the end
    train, test = load_data(_save(tmp_path / "b.npz", x=x, y=np.arange(20) % 2, x_test=nchw, y_test=np.arange(4) % 2))
    assert torch.equal(test.x, train.x[:4])
    assert "x: 20 images (N, H, W, C)" in train.layout and "x_test: 4 images (N, C, H, W)" in test.layout
    with pytest.raises(DataError, match=r"\(3, 5, 4\) but x_test gives \(3, 4, 5\)"):
        load_data(_save(tmp_path / "c.npz", x=nchw, y=np.arange(4) % 2, x_test=nchw.transpose(0, 1, 3, 2),
                        y_test=np.arange(4) % 2))


def test_dataset_layout_defaults_to_empty() -> None:
    ds = Dataset(x=torch.zeros(2, 3), y=torch.tensor([0, 1]), num_classes=2)
    assert ds.layout == "" and ds.subset(torch.tensor([1])).layout == ""


# ----------------------------------------------------------------------------------------- image folders


def _png(path: Path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _pets(root: Path, size: tuple[int, int] = (6, 5)) -> dict[str, list[np.ndarray]]:
    """cat: 3 random RGB PNGs; dog: 2 flat-color JPEGs (lossy, but flat colors survive); fox: empty; junk files."""
    rng = np.random.default_rng(6)
    h, w = size
    cats = [_png(root / "cat" / f"{i}.png", rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for i in range(3)]
    dogs = [np.full((h, w, 3), (40 * i + 20, 200, 90), dtype=np.uint8) for i in range(2)]
    (root / "dog").mkdir()
    for i, pixels in enumerate(dogs):
        Image.fromarray(pixels).save(root / "dog" / f"{i}.JPG", quality=95)  # upper-case suffix: still an image
    (root / "fox").mkdir()
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    return {"cat": cats, "dog": dogs}


def _chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / 255)


def test_image_folder_reads_labels_names_and_pixels(tmp_path: Path) -> None:
    images = _pets(tmp_path / "pets")
    train, ds = load_eval_data(str(tmp_path / "pets"))
    assert train is None
    assert ds.class_names == ["cat", "dog", "fox"] and ds.num_classes == 3 and ds.name == "pets"
    assert ds.class_counts().tolist() == [3, 2, 0] and ds.input_shape == (3, 6, 5)
    cats = ds.x[ds.y == 0]
    for pixels in images["cat"]:  # PNG: exact
        assert sum(torch.equal(row, _chw(pixels)) for row in cats) == 1
    dogs = ds.x[ds.y == 1]
    for pixels in images["dog"]:  # JPEG: a flat color comes back within a few levels
        assert any((row - _chw(pixels)).abs().max() <= 3 / 255 for row in dogs)
    assert ds.layout.startswith("pets: 5 JPEG/PNG images in 3 class folders, RGB 5×6 → (N, 3, 6, 5) float32 ×1/255")
    assert "skipped 2 non-image files" in ds.layout and "no images for class 'fox'" in ds.layout
    assert ds.y.tolist() != sorted(ds.y.tolist())  # rows shuffled (seeded), so max_samples sees every class
    _, again = load_eval_data(str(tmp_path / "pets"))
    assert torch.equal(again.x, ds.x) and torch.equal(again.y, ds.y)


def test_image_folder_split_in_yaml_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for c in ("a", "b"):
        for i in range(4):
            _png(tmp_path / "gray" / c / f"{i}.png", rng.integers(0, 256, size=(4, 4), dtype=np.uint8))
    train, test = load_data(str(tmp_path / "gray"), test_fraction=0.25, seed=0)
    assert train.input_shape == (1, 4, 4)  # every image grayscale: one channel
    assert len(train) == 6 and len(test) == 2 and test.class_counts().tolist() == [1, 1]
    assert "L 4×4 → (N, 1, 4, 4)" in train.layout and "stratified split 6 train / 2 test" in train.layout
    with pytest.raises(DataError, match="2 classes but num_classes=3"):
        load_data(str(tmp_path / "gray"), num_classes=3)


def test_train_and_test_sub_folders_are_the_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    root = tmp_path / "set"
    for split, classes, n in (("train", ("x", "y", "z"), 3), ("val", ("x", "z"), 2)):
        for c in classes:
            for i in range(n):
                _png(root / split / c / f"{i}.png", rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8))
    _png(root / "val" / "x" / "gray.png", np.full((3, 3), 7, dtype=np.uint8))  # one gray image among RGB: → RGB
    train, test = load_data(str(root))
    assert len(train) == 9 and len(test) == 5 and train.class_names == test.class_names == ["x", "y", "z"]
    assert test.class_counts().tolist() == [3, 0, 2]  # labels keep train's indices though val/ lacks y
    gray = test.x[(test.x[:, 0] == 7 / 255).all(dim=(1, 2))]
    assert gray.shape == (1, 3, 3, 3) and torch.equal(gray[0, 0], gray[0, 2])
    assert test.layout.startswith("set/val: 5 PNG images") and train.layout.startswith("set/train: 9 PNG images")
    _, evaluated = load_eval_data(str(root))
    assert torch.equal(evaluated.x, test.x) and evaluated.class_names == ["x", "y", "z"]
    _png(root / "val" / "w" / "0.png", np.zeros((3, 3, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="training split does not have"):
        load_data(str(root))


@pytest.mark.parametrize("case", ["sizes", "unreadable", "no_classes", "only_train"])
def test_image_folder_errors_are_one_line(tmp_path: Path, case: str) -> None:
    root = tmp_path / "imgs"
    if case == "sizes":
        _png(root / "a" / "small.png", np.zeros((4, 4, 3), dtype=np.uint8))
        _png(root / "b" / "large.png", np.zeros((8, 6, 3), dtype=np.uint8))
        match = r"small\.png' is 4×4 but .*large\.png' is 6×8.*resize"
    elif case == "unreadable":
        _png(root / "a" / "ok.png", np.zeros((4, 4, 3), dtype=np.uint8))
        (root / "a" / "broken.png").write_bytes(b"this is not a png")
        match = r"cannot read .*broken\.png'"
    elif case == "no_classes":
        _png(root / "loose.png", np.zeros((4, 4, 3), dtype=np.uint8))
        match = "no class sub-folders"
    else:
        _png(root / "train" / "a" / "0.png", np.zeros((4, 4, 3), dtype=np.uint8))
        match = "no test/ or val/"
    with pytest.raises(DataError, match=match) as info:
        load_eval_data(str(root))
    assert "\n" not in str(info.value)


def test_a_path_that_is_not_there_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="existing folder of images"):
        load_data(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------- model fit


def test_check_model_accepts_names_both_shapes_and_restores_the_model() -> None:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(8,)).train()
    data = Dataset(x=torch.rand(3, 3, 32, 32), y=torch.tensor([0, 1, 2]), num_classes=10, name="cifar_like")
    with pytest.raises(DataError) as info:
        check_model_accepts(model, data)
    message = str(info.value)
    assert "inputs of shape (3, 32, 32) from cifar_like" in message and "expects e.g. (1, 8, 8)?" in message
    assert "mat1 and mat2" in message and "\n" not in message
    assert model.training and all(p.requires_grad for p in model.parameters())
    check_model_accepts(model, Dataset(x=torch.rand(3, 1, 8, 8), y=torch.tensor([0, 1, 9]), num_classes=10))
    with pytest.raises(DataError, match=r"returns shape \(2, 10\) .* 12 classes"):
        check_model_accepts(model, (torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 11])))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    assert expected_input_shape(conv, (3, 32, 32)) == (1, 32, 32)
    assert expected_input_shape(conv, (1, 32, 32)) is None


def test_generate_refuses_a_wrong_shape_before_writing(tmp_path: Path) -> None:
    from sparring.attacks import build
    from sparring.generate import generate
    from sparring.threat import make_threat

    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(8,))
    data = Dataset(x=torch.rand(3, 3, 32, 32), y=torch.tensor([0, 1, 2]), num_classes=10)
    with pytest.raises(DataError, match=r"\(3, 32, 32\).*\(1, 8, 8\)"):
        generate(model, data, build("fgsm"), make_threat("linf", 0.1, (0.0, 1.0)), tmp_path / "adv.npz")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- the CLI

FACTORY = """\
import torch
from torch import nn

from sparring.models import build_model


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def make_digits():
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(8,))
"""


@pytest.fixture
def cifar_like(tmp_path: Path) -> Path:
    (tmp_path / "tests_factory.py").write_text(FACTORY)
    x = np.random.default_rng(9).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar_like.npz", x=x, y=np.arange(12) % 10)
    return tmp_path


EVAL = ["eval", "--data", "cifar_like.npz", "--eps", "8/255", "--suite", "fast", "--max-samples", "8",
        "--eps-curve", "0", "-q"]


def test_cli_evaluates_an_nhwc_uint8_file(cifar_like, monkeypatch, capsys, single_thread) -> None:
    code, _, err = run_main([*EVAL, "--model", "tests_factory.py:make", "--out", "out"], cifar_like, monkeypatch,
                            capsys)
    assert code == 0, err
    report = json.loads((cifar_like / "out" / "report.json").read_text())
    assert report["data"]["n_eval"] == 8 and report["data"]["num_classes"] == 10


def test_cli_wrong_shape_model_is_one_line(cifar_like, monkeypatch, capsys, single_thread) -> None:
    code, _, err = run_main([*EVAL, "--model", "tests_factory.py:make_digits", "--out", "out"], cifar_like,
                            monkeypatch, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "(3, 32, 32)" in line and "(1, 8, 8)" in line and "cifar_like" in line


def test_cli_evaluates_an_image_folder(tmp_path, monkeypatch, capsys, single_thread) -> None:
    (tmp_path / "tests_factory.py").write_text(FACTORY)
    rng = np.random.default_rng(10)
    for c in range(10):
        _png(tmp_path / "imgs" / f"class_{c}" / "0.png", rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    args = [*EVAL, "--model", "tests_factory.py:make", "--out", "out"]
    args[args.index("cifar_like.npz")] = "imgs"
    code, _, err = run_main(args, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["class_names"] == [f"class_{c}" for c in range(10)] and report["data"]["n_eval"] == 8
