"""Perceptual metrics of adversarial examples (issue 21): the metrics themselves, and their distributions per attack in
report.json and report.html."""

from __future__ import annotations

import importlib
import json
import math
import warnings

import pytest
import torch
from test_report import fake_report
from torch import nn

import sparring.perceptual as P
from sparring.attacks import FGSM, Square
from sparring.errors import ConfigError
from sparring.evaluate import evaluate
from sparring.report.html import render_report
from sparring.threat import LinfBall


def images(n: int = 4, c: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


# ----------------------------------------------------------------------------- the metrics
def test_identical_inputs() -> None:
    x = images(3, 3, 32)
    m = P.perturbation_metrics(x, x.clone())
    assert list(m) == ["l0", "l1", "l2", "linf", "psnr", "ssim", "ms_ssim"]
    for name in ("l0", "l1", "l2", "linf"):
        assert m[name].tolist() == [0.0] * 3
    assert m["psnr"].tolist() == [P.PSNR_CAP_DB] * 3
    assert torch.allclose(m["ssim"], torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(m["ms_ssim"], torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_constant_shift_by_hand() -> None:
    delta = 0.05
    x = images(2, 3, 8)
    m = P.perturbation_metrics(x, x + delta)
    entries = 3 * 8 * 8
    assert m["l0"].tolist() == [64.0, 64.0]  # pixels, not colour values
    assert torch.allclose(m["l1"], torch.full((2,), delta * entries, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(m["l2"], torch.full((2,), delta * math.sqrt(entries), dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(m["linf"], torch.full((2,), delta, dtype=torch.float64), rtol=1e-5)
    expected = 10 * math.log10(1 / delta**2)  # 26.02 dB
    assert torch.allclose(m["psnr"], torch.full((2,), expected, dtype=torch.float64), atol=1e-4)
    # with a data range of 2 the same shift is 20·log10(2) dB less visible
    wide = P.perturbation_metrics(x, x + delta, data_range=2.0)["psnr"]
    assert torch.allclose(wide, m["psnr"] + 20 * math.log10(2), atol=1e-4)


def test_l0_counts_changed_pixels_and_entries() -> None:
    x = images(1, 3, 8)
    adv = x.clone()
    adv[0, :, 2, 3] += 0.1  # one pixel, three channels
    adv[0, 0, 5, 5] += 0.1  # another pixel, one channel
    adv[0, 1, 0, 0] += 1e-8  # below the tolerance
    assert P.perturbation_metrics(x, adv)["l0"].item() == 2
    rows = torch.zeros(2, 10)
    assert P.perturbation_metrics(rows, rows + torch.tensor([0.5] * 3 + [0.0] * 7))["l0"].tolist() == [3.0, 3.0]


def test_ssim_and_ms_ssim_fall_with_noise() -> None:
    for side in (8, 32):
        x = images(4, 3 if side == 32 else 1, side)
        scores = [P.perturbation_metrics(x, noisy(x, s)) for s in (0.01, 0.05, 0.2)]
        for name in ("ssim", "ms_ssim"):
            a, b, c = (s[name] for s in scores)
            assert bool((a > b).all() and (b > c).all()), (side, name)
            assert bool((c > 0).all() and (a <= 1).all())
        assert bool((scores[0]["psnr"] > scores[1]["psnr"]).all())


def test_tiny_images_adapt_window_and_scales() -> None:
    assert (P.ssim_window(8, 8), P.ms_ssim_scales(8, 8)) == (3, 2)
    assert (P.ssim_window(32, 32), P.ms_ssim_scales(32, 32)) == (11, 2)
    assert (P.ssim_window(224, 224), P.ms_ssim_scales(224, 224)) == (11, 5)
    assert P.ms_ssim_scales(160, 160) == 4 and P.ms_ssim_scales(176, 176) == 5  # the standard needs sides > 160
    for side in (8, 32):
        x = images(2, 1, side)
        value = P.ms_ssim(x, noisy(x, 0.05))
        assert value.shape == (2,) and bool(torch.isfinite(value).all())
        notes = " ".join(P.notes((1, side, side), data_range=1.0))
        assert "MS-SSIM uses 2 of the standard 5 scales" in notes
    assert not any("MS-SSIM" in n for n in P.notes((3, 224, 224), data_range=1.0))
    assert "3×3" in " ".join(P.notes((1, 8, 8), data_range=1.0))
    x = images(2, 3, 32)  # with one scale MS-SSIM is SSIM
    assert torch.allclose(P.ms_ssim(x, noisy(x, 0.05), scales=1), P.ssim(x, noisy(x, 0.05)), atol=1e-6)


def test_ssim_by_definition() -> None:
    """SSIM (Wang et al. 2004) window by window: Gaussian-weighted means, variances and covariance, valid region."""
    x = images(2, 3, 12).double()
    y = noisy(x, 0.1).double()
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-r**2 / (2 * 1.5**2))
    w = torch.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01**2, 0.03**2
    expected = torch.zeros(2, dtype=torch.float64)
    for n in range(2):
        scores = []
        for c in range(3):
            for i in range(2):  # 12 − 11 + 1 = 2 valid positions per axis
                for j in range(2):
                    a, b = x[n, c, i:i + 11, j:j + 11], y[n, c, i:i + 11, j:j + 11]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                    cov = (w * a * b).sum() - ma * mb
                    scores.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        expected[n] = torch.stack(scores).mean()
    assert P.ssim_window(12, 12) == 5  # the rule would pick 5 here: force the standard window
    assert torch.allclose(P.ssim(x, y, window=11), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 10), (3, 64, 3), (1, 16, 4)])
def test_non_images_get_only_the_norms(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    m = P.perturbation_metrics(x, x + 0.1)
    assert list(m) == ["l0", "l1", "l2", "linf"]
    assert P.metric_names(shape[1:], data_range=1.0, lpips=True) == ["l0", "l1", "l2", "linf"]
    assert "only the lp norms" in P.notes(shape[1:], data_range=1.0)[0]


def test_images_without_a_range_get_no_psnr_or_ssim() -> None:
    x = images(2, 1, 8)
    assert list(P.perturbation_metrics(x, x + 0.1, data_range=None)) == ["l0", "l1", "l2", "linf"]


def test_distribution() -> None:
    d = P.distribution([3.0, None, 1.0, float("inf"), 2.0])
    assert d["count"] == 3 and d["median"] == 2.0 and d["min"] == 1.0 and d["max"] == 3.0
    assert d["p10"] == pytest.approx(1.2) and d["p90"] == pytest.approx(2.8) and d["mean"] == 2.0
    empty = P.distribution([])
    assert empty["count"] == 0 and empty["median"] is None


# ----------------------------------------------------------------------------- LPIPS from a local backbone
class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.conv1(x))
        return [a, torch.relu(self.conv2(a))]


@pytest.fixture
def backbone_file(tmp_path):
    path = tmp_path / "backbone.pt"
    with warnings.catch_warnings():  # torch ≥ 2.10 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyBackbone()).save(str(path))
    return path


def test_lpips_from_a_local_torchscript_backbone(backbone_file, tmp_path) -> None:
    net = P.load_lpips_backbone(backbone_file)
    x = images(3, 1, 8)
    y = noisy(x, 0.1)
    assert torch.allclose(P.lpips_distance(x, x.clone(), net), torch.zeros(3))
    eager = TinyBackbone()
    expected = torch.zeros(3)
    for fx, fy in zip(eager(x), eager(y), strict=True):  # the baseline LPIPS, by hand
        fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        expected += (fx - fy).pow(2).sum(1).mean((1, 2))
    got = P.perturbation_metrics(x, y, lpips_backbone=net)["lpips"]
    assert torch.allclose(got.float(), expected.detach(), atol=1e-5) and bool((got > 0).all())
    assert P.lpips_distance(x, noisy(x, 0.3), net).mean() > got.mean()
    with pytest.raises(ConfigError, match="not found"):
        P.load_lpips_backbone(tmp_path / "missing.pt")
    pickled = tmp_path / "weights.pt"
    torch.save(eager.state_dict(), pickled)
    with pytest.raises(ConfigError, match="not a TorchScript module"):
        P.load_lpips_backbone(pickled)


# ----------------------------------------------------------------------------- in the evaluation and its report
class Saturated(nn.Module):
    """Logits × 1e4: CE's gradient vanishes, so FGSM fails and the ε-curve's margin attack breaks points too."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e4


@pytest.fixture(scope="module")
def setup(trained_mlp, digits, single_thread):
    return Saturated(trained_mlp), digits[1].subset(torch.arange(48))


def run(model, data, **kwargs):
    return evaluate(model, data, LinfBall(eps=0.1), suite=[FGSM(), Square(queries=30)], eps_curve=[0.0, 0.05, 0.1],
                    batch_size=16, **kwargs)


def test_evaluation_reports_perceptual_distributions(setup, tmp_path) -> None:
    model, data = setup
    ev = run(model, data)
    report = ev.to_dict()
    block = report["perceptual"]
    assert block["metrics"] == ["l0", "l1", "l2", "linf", "psnr", "ssim", "ms_ssim"]
    assert list(block["by_attack"]) == ["fgsm", "square", "eps_curve"]
    broken = {row["name"]: row["broken"] for row in report["attacks"]}
    assert broken["square"] > 0 and broken["eps_curve"] > 0  # a suite attack and the ε-curve both broke points
    for label, stats in block["by_attack"].items():
        assert {s["count"] for s in stats.values()} == {broken[label]}
    for label in ("square", "eps_curve"):
        stats = block["by_attack"][label]
        assert 0 < stats["linf"]["max"] <= 0.1 + 1e-5 and stats["ssim"]["max"] <= 1
        assert stats["psnr"]["min"] <= stats["psnr"]["p10"] <= stats["psnr"]["median"] <= stats["psnr"]["p90"]
    assert block["by_attack"]["fgsm"]["l2"]["median"] is None  # FGSM broke nothing
    assert block["settings"]["ssim_window"] == 3 and block["settings"]["ms_ssim_scales"] == 2
    assert any("MS-SSIM uses 2 of the standard 5 scales" in n for n in block["notes"])
    # per point: the metrics of the kept examples, NaN for points nobody broke
    found = ev.found_by()
    n = len(ev.examples["adv"])
    for i in range(n):
        l2 = ev.perturbation["l2"][i].item()
        if found[i] in ("fgsm", "square", "eps_curve"):
            assert l2 == pytest.approx((ev.examples["adv"][i] - ev.examples["clean"][i]).norm().item(), rel=1e-4)
        else:
            assert math.isnan(l2)
    json.dumps(report, allow_nan=False)  # plain JSON

    folder = ev.save(tmp_path / "run")
    saved = json.loads((folder / "report.json").read_text())
    assert saved["perceptual"]["by_attack"]["fgsm"]["l2"]["count"] == broken["fgsm"]
    html = (folder / "report.html").read_text()
    section = html[html.index('<section id="perceptibility">'):]
    section = section[: section.index("</section>")]
    assert "Perceptibility" in section and "SCOOTER" in section and "sparring rate" in section
    assert "MS-SSIM" in section and "data:image/png;base64," in section


def test_old_records_are_recomputed_and_lpips_joins(setup, backbone_file, tmp_path, monkeypatch) -> None:
    model, data = setup
    state = tmp_path / "state"
    reference = run(model, data, state_dir=state)
    path = state / "batch-00001.json"
    record = json.loads(path.read_text())
    del record["perceptual"]  # a record written before the perceptual metrics
    path.write_text(json.dumps(record))
    module = importlib.import_module("sparring.evaluate")
    computed: list[int] = []
    original = module._evaluate_batch
    monkeypatch.setattr(module, "_evaluate_batch", lambda *a, **k: computed.append(k["batch"]) or original(*a, **k))
    again = run(model, data, state_dir=state)
    assert computed == [1]
    assert again.to_dict()["perceptual"] == reference.to_dict()["perceptual"]

    with_lpips = run(model, data, lpips_backbone=backbone_file)
    block = with_lpips.to_dict()["perceptual"]
    assert block["metrics"][-1] == "lpips" and "backbone.pt" in block["settings"]["lpips_backbone"]
    curve = block["by_attack"]["eps_curve"]
    assert curve["lpips"]["count"] == curve["l2"]["count"] > 0 and curve["lpips"]["median"] > 0


def test_reports_without_the_block_or_without_breaks_render() -> None:
    old = render_report(fake_report())
    assert "Perceptibility" not in old
    stats = P.distribution([])
    empty = fake_report(perceptual={"metrics": ["l2"], "by_attack": {"pgd": {"l2": stats}}, "notes": []})
    assert "No attack broke a point" in render_report(empty)
