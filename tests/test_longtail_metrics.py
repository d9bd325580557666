"""The papers' long-tail metrics (RobustLT's rarest-80% tail, many / medium / few-shot groups), long-tailed MNIST-1D,
the 1-D shift augmentation, and the long-tail benchmark's selection and matching rules."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from sparring.data import Dataset, long_tail
from sparring.data.augment import make_augment, random_shift
from sparring.data.mnist1d import load_mnist1d
from sparring.errors import ConfigError, DataError
from sparring.evaluate import long_tail_summary, shot_groups, shot_thresholds, tail_fraction_group

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def rows(clean: list[float], robust: list[float]) -> list[dict]:
    return [{"class": c, "n": 10, "clean_accuracy": a, "robust_accuracy": r}
            for c, (a, r) in enumerate(zip(clean, robust, strict=True))]


# ------------------------------------------------------------------------------------------ tail 80%
def test_tail80_is_the_rarest_eight_of_ten_classes() -> None:
    counts = [5, 100, 50, 20, 10, 80, 2, 40, 30, 60]  # unsorted: ranks 1, 5, 9 | 2, 7, 8, 3, 4, 0, 6
    per_class = rows([c / 100 for c in counts], [c / 200 for c in counts])
    tail = tail_fraction_group(per_class, counts)
    assert tail["classes"] == [9, 2, 7, 8, 3, 4, 0, 6]  # every class but the two most frequent (1, 5)
    assert tail["train_samples"] == 60 + 50 + 40 + 30 + 20 + 10 + 5 + 2
    assert tail["robust"] == pytest.approx(217 / 200 / 8)
    assert tail_fraction_group(per_class, counts, fraction=0.25)["classes"] == [0, 6]  # round(2.5) = 2
    assert tail_fraction_group(per_class, counts, fraction=0.01)["classes"] == [6]  # at least one class
    with pytest.raises(ConfigError):
        tail_fraction_group(per_class, counts, fraction=0.0)


def test_tail80_of_a_hundred_classes_ignores_unevaluated_classes() -> None:
    counts = list(range(100, 0, -1))
    per_class = rows([1.0] * 100, [0.5] * 100)
    per_class[99]["n"] = 0  # the rarest class has no test point: it is in the group, not in its mean
    per_class[99]["robust_accuracy"] = 0.0
    tail = tail_fraction_group(per_class, counts)
    assert tail["classes"] == list(range(20, 100)) and tail["robust"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ many / medium / few
def test_shot_groups_with_unscaled_thresholds_by_hand() -> None:
    counts = [500, 101, 100, 60, 20, 19, 3]
    per_class = rows([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    shots = shot_groups(per_class, counts, reference_head=None)
    assert (shots["many_above"], shots["few_below"], shots["scale"]) == (100.0, 20.0, 1.0)
    # many n > 100; medium 20 <= n <= 100 (100 and 20 themselves are medium); few n < 20
    assert shots["many"]["classes"] == [0, 1] and shots["medium"]["classes"] == [2, 3, 4]
    assert shots["few"]["classes"] == [5, 6] and shots["few"]["train_samples"] == 22
    assert shots["medium"]["robust"] == pytest.approx(0.3) and shots["few"]["clean"] == pytest.approx(0.35)
    assert "s = the thresholds as given = 1" in shots["rule"]


def test_shot_thresholds_scale_with_the_head_count() -> None:
    assert shot_thresholds([500, 5]) == (100.0, 20.0, 1.0)  # CIFAR-100-LT: the usual thresholds
    assert shot_thresholds([5000, 100]) == (1000.0, 200.0, 10.0)  # CIFAR-10-LT
    many, few, scale = shot_thresholds([398, 8])  # MNIST-1D-LT
    assert (many, few, scale) == pytest.approx((79.6, 15.92, 0.796))
    assert shot_thresholds([400, 8], reference_head=5000) == pytest.approx((8.0, 1.6, 0.08))
    with pytest.raises(ConfigError):
        shot_thresholds([10, 1], thresholds=(20.0, 100.0))


def test_a_group_can_be_empty() -> None:
    counts = [400, 300, 200, 100]  # scale 0.8: many > 80 holds every class
    shots = shot_groups(rows([1.0] * 4, [0.5] * 4), counts)
    assert shots["many"]["classes"] == [0, 1, 2, 3]
    assert shots["few"] == {"classes": [], "train_samples": 0, "clean": None, "robust": None}


def test_long_tail_summary_carries_both_and_keeps_its_keys() -> None:
    counts = [398, 257, 166, 108, 69, 45, 29, 18, 12, 7]  # MNIST-1D at IR 50
    summary = long_tail_summary(rows([0.9] * 10, [0.3] * 10), counts)
    assert {"imbalance_ratio", "split", "head", "medium", "tail"} <= set(summary)
    assert summary["tail"]["classes"] == [7, 8, 9] and summary["tail80"]["classes"] == list(range(2, 10))
    shots = summary["shots"]  # s = 398 / 500: many > 79.6, few < 15.92
    assert shots["many"]["classes"] == [0, 1, 2, 3] and shots["medium"]["classes"] == [4, 5, 6, 7]
    assert shots["few"]["classes"] == [8, 9]


# ------------------------------------------------------------------------------------------ MNIST-1D-LT
def test_long_tailed_mnist1d_class_counts_per_ratio() -> None:
    train, _ = load_mnist1d(num_samples=1000)
    available = train.class_counts().tolist()
    assert available == [85, 78, 81, 77, 85, 80, 75, 82, 81, 76]  # the package's generator, seed 42
    # n_max = min_c ⌊a_c · ρ^(c/9)⌋ = 85 (class 0), then n_c = ⌊85 · ρ^(−c/9)⌋
    assert long_tail(train, imbalance_ratio=10).class_counts().tolist() == [85, 65, 50, 39, 30, 23, 18, 14, 10, 8]
    lt50 = long_tail(train, imbalance_ratio=50, seed=3)
    assert lt50.class_counts().tolist() == [85, 55, 35, 23, 14, 9, 6, 4, 2, 1]
    assert lt50.name == "mnist1d-lt50" and lt50.x.shape[1:] == (40,)
    with pytest.raises(DataError, match="tail class would be empty"):
        long_tail(train, imbalance_ratio=100)  # ⌊85 / 100⌋ = 0


def test_long_tailed_mnist1d_counts_at_full_size() -> None:
    # The benchmark's split (5000 signals: 398, 396, 411, 394, 394, 402, 401, 404, 402, 398 per class), without
    # generating it: long_tail only reads the labels.
    available = [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(available)])
    full = Dataset(x=torch.zeros(len(y), 40), y=y, num_classes=10, name="mnist1d")
    expected = {10: [398, 308, 238, 184, 143, 110, 85, 66, 51, 39], 50: [398, 257, 166, 108, 69, 45, 29, 18, 12, 7],
                100: [398, 238, 143, 85, 51, 30, 18, 11, 6, 3]}
    for ratio, counts in expected.items():
        assert long_tail(full, imbalance_ratio=ratio).class_counts().tolist() == counts


# ------------------------------------------------------------------------------------------ 1-D shift
def test_shift_keeps_the_shape_and_moves_the_signal() -> None:
    x = torch.arange(2 * 40, dtype=torch.float32).view(2, 40) / 80  # (B, L) flat signals, as MNIST-1D is stored
    gen = torch.Generator().manual_seed(0)
    out = make_augment("shift", (40,))(x, gen)
    assert out.shape == x.shape
    for row, shifted in zip(x, out, strict=True):
        offsets = [s for s in range(-4, 5) if torch.equal(torch.roll(row, s), shifted)]
        assert len(offsets) == 1  # a circular shift of at most L // 10 = 4
    moved = random_shift(x, 4, torch.Generator().manual_seed(1), circular=False)
    assert moved.shape == x.shape
    draws = torch.randint(0, 9, (2,), generator=torch.Generator().manual_seed(1)) - 4  # d in [-4, 4]
    for row, shifted, d in zip(x, moved, draws.tolist(), strict=True):
        expected = torch.zeros(40)  # out[i] = x[i + d], zero where i + d falls outside the signal
        if d >= 0:
            expected[:40 - d] = row[d:]
        else:
            expected[-d:] = row[:40 + d]
        assert torch.equal(shifted, expected)


# ------------------------------------------------------------------------------------------ the benchmark's rules
@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("longtail", "_common"):
        sys.modules.pop(name, None)
    return importlib.import_module("longtail")


def test_epoch_selection_takes_the_smallest_budget_near_the_best(bench) -> None:
    assert bench.choose_epochs({10: 0.300, 20: 0.345, 30: 0.350, 40: 0.352}) == 20  # within 0.01 of 0.352
    assert bench.choose_epochs({10: 0.40, 20: 0.30}) == 10


def test_clean_accuracy_at_matched_robustness(bench) -> None:
    curve = [(0.30, 0.80), (0.20, 0.90), (0.40, 0.60)]  # (robust, clean), unsorted
    assert bench.matched_clean(curve, 0.25) == pytest.approx(0.85)
    assert bench.matched_clean(curve, 0.35) == pytest.approx(0.70)
    assert bench.matched_clean(curve, 0.45) is None  # outside the curve: no extrapolation


def test_augmented_rows_are_fresh_each_epoch_and_seeded(bench) -> None:
    x, y = torch.rand(6, 40), torch.arange(6) % 3
    data = bench.AugmentedData(x, y, augment="shift", seed=0, num_classes=3)
    data.set_epoch(0)
    first, labels = data.batch([0, 1, 2, 3])
    data.set_epoch(1)
    second, _ = data.batch([0, 1, 2, 3])
    data.set_epoch(0)
    again, _ = data.batch([0, 1, 2, 3])
    assert torch.equal(first, again) and not torch.equal(first, second) and torch.equal(labels, y[:4])
    assert torch.equal(data.tensors()[0], x)  # what MCAT reads stays the raw split


def test_raat_compare_reads_clean_accuracy_at_pgd_at_robustness(bench) -> None:
    # (variant, train ε scale) → (balanced robust, balanced clean); PGD-AT+aug at ε sets the target robust 0.30
    curves = {"pgd_at+aug": {0.5: (0.20, 0.80), 1.0: (0.30, 0.70)},
              "raat+aug": {0.5: (0.25, 0.85), 1.0: (0.35, 0.75)},
              "raat": {0.5: (0.40, 0.60), 1.0: (0.50, 0.50)}}
    runs = [{"dataset": "mnist1d", "ratio": 1.0, "variant": v, "train_eps_scale": s, "balanced_robust": r,
             "balanced_clean": c, "seed": seed}
            for v, points in curves.items() for s, (r, c) in points.items() for seed in (0, 1)]
    (entry,) = bench.raat_compare(runs)
    assert entry["target_robust"] == pytest.approx(0.30) and entry["augment"] == "shift"
    assert entry["clean_at_target"]["pgd_at+aug"] == pytest.approx(0.70)
    assert entry["clean_at_target"]["raat+aug"] == pytest.approx(0.80)  # halfway between (0.25, .85) and (0.35, .75)
    assert entry["clean_at_target"]["raat"] is None  # never as weak as the target: not matched
    assert entry["raat_clean_gain"] == pytest.approx(0.10) and entry["raat_clean_rises"] is True
    assert bench.raat_summary([entry])["mnist1d"]["raat_clean_rises"] is True
    assert "| mnist1d | 1 | raat+aug | 0.5: 25.0 / 85.0, 1: 35.0 / 75.0 | 80.0 |" in bench.raat_markdown([entry])
