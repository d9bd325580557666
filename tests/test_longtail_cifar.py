"""benchmarks/longtail_cifar.py: the --smoke mode on a tiny CIFAR-10 pickle archive, and its one-line errors."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _tiny_cifar10(root: Path, per_class: int = 8) -> Path:
    """The release's layout with ``per_class`` train images of every class (two batches) and 2 test images each,
    packed as ``cifar-10-python.tar.gz``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, labels: list[int]) -> None:
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": labels, b"data": data}, f)

    labels = [c for c in range(10) for _ in range(per_class)]
    rng.shuffle(labels)
    half = len(labels) // 2
    dump("data_batch_1", labels[:half])
    dump("data_batch_2", labels[half:])
    dump("test_batch", [c for _ in range(2) for c in range(10)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("longtail_cifar", "longtail", "_common"):
        sys.modules.pop(name, None)
    return importlib.import_module("longtail_cifar")


def test_smoke_runs_the_papers_methods_and_groups(tmp_path, bench, single_thread) -> None:
    archive = _tiny_cifar10(tmp_path / "data")
    out = tmp_path / "results"
    record = bench.main(["--data-root", str(archive), "--smoke", "--model", "small_cnn", "--ratios", "4",
                         "--methods", "at_bsl", "robustlt_bsl", "raat", "--out", str(out)])
    runs = record["runs"]
    assert [r["method"] for r in runs] == ["at_bsl", "robustlt_bsl", "raat"]
    assert runs[0]["train_counts"] == [8, 6, 5, 5, 4, 3, 3, 2, 2, 2]  # ⌊8 · 4^(−c/9)⌋, IR 4 on 8 per class
    paper = runs[0]["paper"]
    for key in ("tail80_robust_pgd20", "tail80_robust_cw20", "tail80_robust_standard", "few_robust_standard"):
        assert key in paper and (paper[key] is None or 0.0 <= paper[key] <= 1.0)
    assert runs[0]["shot_thresholds"]["many_above"] == pytest.approx(100 * 8 / 500)
    written = json.loads((out / "longtail_cifar_smoke.json").read_text())
    assert written["settings"]["schedule"]["milestones"] == [0.75, 0.9]  # RobustLT's 75 / 90 of 100 epochs
    assert {c["key"] for c in written["comparisons"]} == {"robustlt_over_at_bsl"}  # PGD-AT, MCAT not run
    table = (out / "longtail_cifar_smoke.md").read_text()
    assert "tail-80% PGD-20" in table and "AT-BSL + RobustLT vs AT-BSL" in table


def test_cuda_without_a_gpu_is_one_line(tmp_path, bench, monkeypatch) -> None:
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(bench.ConfigError, match="no CUDA device"):
        bench.main(["--data-root", str(tmp_path), "--device", "cuda"])
