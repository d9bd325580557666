"""Detectors (issue 21): exact detection metrics, the TopK SAE, the activation tap, and the SAEgis-style detector."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from sparring.detectors import (
    ActivationTap,
    SAEDetector,
    TopKSAE,
    as_tokens,
    auroc,
    available,
    build,
    detection_metrics,
    fit_sae,
    max_f1,
    threshold_at_fpr,
    tpr_at_fpr,
)
from sparring.detectors.sae import default_sizes
from sparring.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")


# -- metrics --------------------------------------------------------------------------------------------------


def test_auroc_hand_computed_cases() -> None:
    assert auroc(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0])) == 1.0
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.ones(5), torch.ones(7)) == 0.5
    same = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert auroc(same, same) == 0.5
    # pairs won: a=1 → 1 + ½, a=2 → 2 + ½, a=3 → 3; 7 of 9
    assert auroc([0.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(7 / 9)
    assert auroc([], [1.0]) is None and auroc([1.0], []) is None


def test_threshold_and_tpr_at_fpr() -> None:
    clean = torch.arange(100.0)
    assert threshold_at_fpr(clean, 0.05) == 94.0  # 95..99 above it: 5 of 100
    assert threshold_at_fpr(clean, 0.0) == 99.0
    assert threshold_at_fpr(clean, 0.29) == 70.0  # 0.29·100 = 28.999…: the tolerance keeps the 29th
    tpr, threshold = tpr_at_fpr(clean, torch.tensor([93.0, 94.0, 95.0, 200.0]), 0.05)
    assert (tpr, threshold) == (0.5, 94.0)
    assert tpr_at_fpr(torch.zeros(10), torch.zeros(3), 0.05) == (0.0, 0.0)  # tied: nothing is strictly above
    assert tpr_at_fpr(clean, [], 0.05) == (None, 94.0)
    with pytest.raises(ConfigError):
        threshold_at_fpr(clean, 1.0)
    with pytest.raises(DataError):
        threshold_at_fpr([], 0.05)


def test_max_f1_and_detection_metrics() -> None:
    assert max_f1([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert max_f1([0.0, 2.0], [1.0, 3.0]) == pytest.approx(0.8)  # "≥ 1": TP 2, FP 1, FN 0
    metrics = detection_metrics(torch.arange(100.0), torch.arange(100.0) + 50)
    # adv 50+j (j < 50) loses to the 49 − j clean scores above it and ties one: 1 − (1225 + 25) / 100²
    assert metrics["auroc"] == pytest.approx(0.875)
    assert metrics["tpr_at_5fpr"] == pytest.approx(0.55)  # adv > 94: 95..149
    assert metrics["tpr_at_1fpr"] == pytest.approx(0.51)  # adv > 98
    assert (metrics["n_clean"], metrics["n_adv"]) == (100, 100)
    empty = detection_metrics(torch.arange(10.0), torch.empty(0))
    assert empty == {"auroc": None, "tpr_at_1fpr": None, "tpr_at_5fpr": None, "max_f1": None,
                     "n_clean": 10, "n_adv": 0}
    json.dumps(metrics)
    with pytest.raises(DataError):
        auroc([float("nan")], [1.0])


# -- the TopK SAE ---------------------------------------------------------------------------------------------


def sparse_data(n: int = 2048, d: int = 16, atoms: int = 48, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Tokens that are sums of `active` of `atoms` random directions with positive weights: what an SAE fits."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    which = torch.rand(n, atoms, generator=g).argsort(1)[:, :active]
    codes = torch.zeros(n, atoms).scatter(1, which, torch.rand(n, active, generator=g) + 0.5)
    return codes @ dictionary + 0.3


def test_topk_sae_keeps_exactly_k_latents_and_unit_decoder() -> None:
    sae = TopKSAE(d=16, n=64, k=5, generator=torch.Generator().manual_seed(0))
    z = sae.encode(torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1)))
    assert z.shape == (3, 7, 64)
    assert ((z != 0).sum(-1) == 5).all() and (z >= 0).all()
    assert sae(torch.randn(4, 16)).shape == (4, 16)
    fit_sae(sae, sparse_data(256), steps=3, batch_size=64, seed=0)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)


def test_topk_sae_learns_and_is_deterministic(tmp_path) -> None:
    data = sparse_data()

    def trained(seed: int) -> tuple[TopKSAE, list[float]]:
        sae = TopKSAE(d=16, n=64, k=4, generator=torch.Generator().manual_seed(seed))
        return sae, fit_sae(sae, data, steps=150, batch_size=128, lr=3e-3, seed=seed).nmse

    sae, nmse = trained(0)
    assert len(nmse) == 150
    assert sum(nmse[-10:]) / 10 < 0.5 * sum(nmse[:10]) / 10  # reconstruction error drops with training
    assert sum(nmse[-10:]) / 10 < 0.3
    again, _ = trained(0)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), again.state_dict().values(), strict=True))
    other = TopKSAE(d=16, n=64, k=4, generator=torch.Generator().manual_seed(1))
    fit_sae(other, data, steps=5, batch_size=128, seed=1)
    assert not torch.equal(sae.W_dec, other.W_dec)
    sae.save(tmp_path / "sae.safetensors")
    loaded = TopKSAE.load(tmp_path / "sae.safetensors")
    assert (loaded.d, loaded.n, loaded.k) == (16, 64, 4)
    assert torch.equal(loaded(data[:32]), sae(data[:32]))


def test_fit_sae_streams_from_an_iterator() -> None:
    data = sparse_data(512)

    def run(source_factory) -> TopKSAE:
        sae = TopKSAE(d=16, n=32, k=4, generator=torch.Generator().manual_seed(0))
        fit = fit_sae(sae, source_factory(), steps=40, batch_size=32, seed=0)
        assert fit.steps == 40
        return sae

    chunks = list(data.split(48))
    a, b = run(lambda: chunks), run(lambda: chunks)  # a list is re-read every epoch
    assert torch.equal(a.W_enc, b.W_enc)
    one_shot = TopKSAE(d=16, n=32, k=4)
    assert fit_sae(one_shot, iter(chunks), steps=1000, batch_size=32).steps == 16  # 512 tokens, then it stops
    with pytest.raises(DataError):
        fit_sae(one_shot, iter([]), steps=5)


def test_default_sizes_follow_the_paper_ratio() -> None:
    assert default_sizes(32, n_features=None, k=None, expansion=8) == (256, 4)  # floor of 4
    assert default_sizes(2048, n_features=None, k=None, expansion=8) == (16384, 32)  # 16384·64/32768
    assert default_sizes(4096, n_features=32768, k=None, expansion=8) == (32768, 64)  # the paper's SAE
    assert default_sizes(2, n_features=None, k=None, expansion=4) == (8, 2)  # the n // 4 cap wins
    assert default_sizes(2, n_features=12, k=7, expansion=4) == (12, 7)


# -- the activation tap ---------------------------------------------------------------------------------------


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 5 * 5, 3))


def test_tap_on_a_cnn_gives_spatial_tokens() -> None:
    model, x = small_cnn(), torch.randn(2, 1, 5, 5)
    with ActivationTap(model, "2") as tap:
        h = tap(x)
    expected = model[:3](x)
    assert torch.equal(h, expected)
    tokens = as_tokens(h)
    assert tokens.shape == (2, 25, 6)
    assert torch.equal(tokens[1, 7], expected[1, :, 1, 2])  # token 7 = row 1, column 2
    assert as_tokens(torch.zeros(2, 9)).shape == (2, 1, 9)
    assert len(model[2]._forward_hooks) == 0  # the hook lives only inside the block


def test_tap_keeps_the_layer_output_that_a_later_inplace_op_overwrites() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(36, 2))
    x = torch.randn(3, 1, 3, 3)
    expected = model[0](x)
    for stop in (True, False):
        with ActivationTap(model, "0", stop=stop) as tap:
            h = tap(x)
        assert torch.equal(h, expected) and bool((h < 0).any())  # the pre-activation, not the ReLU's output


class Embeds(nn.Module):
    """A causal LM read from its input embeddings x (B, T, D): the detector's x is the embedding tensor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4)
        self.lm = LlamaForCausalLM(config).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(inputs_embeds=x).logits[:, -1]


def test_tap_on_a_llama_decoder_layer_stops_early() -> None:
    model = Embeds()
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        hidden = model.lm(inputs_embeds=x, output_hidden_states=True).hidden_states[1]  # after layer 0
    later = []
    handle = model.lm.model.layers[1].register_forward_hook(lambda *_: later.append(1))
    with torch.no_grad(), ActivationTap(model, "lm.model.layers.0", stop=True) as tap:
        h = tap(x)
    handle.remove()
    assert h.shape == (2, 6, 32) and torch.allclose(h, hidden, atol=1e-5)
    assert later == []  # the pass ended at the tapped layer
    with pytest.raises(ConfigError, match="lm.model"):
        ActivationTap(model, "lm.model.layers.7")


# -- the SAE detector -----------------------------------------------------------------------------------------


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 3))


@pytest.fixture(scope="module")
def fitted() -> tuple[SAEDetector, dict[str, torch.Tensor]]:
    """A detector on an MLP's hidden layer. Clean inputs lie near a 4-d subspace of ℝ¹²; "attacked" ones are pushed
    off it along one of two fixed directions (norm 2, about the clean inputs' own norm of 3)."""
    model = mlp().eval()
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 12, generator=g)).Q
    clean = 1.5 * torch.randn(600, 4, generator=g) @ basis[:, :4].T + 0.05 * torch.randn(600, 12, generator=g)
    push = torch.randn(2, 8, generator=g) @ basis[:, 4:].T
    adv = clean + 2 * (push / push.norm(dim=1, keepdim=True))[torch.randint(0, 2, (600,), generator=g)]
    split = {"train": clean[:300], "clean_cal": clean[300:400], "adv_cal": adv[300:400],
             "clean_test": clean[400:], "adv_test": adv[400:]}
    # one token per input: at most k latents are active, so the count is at most k; the default k = 4 leaves it
    # little room (measured over 6 seeds: AUROC 0.73-0.92 with k = 4, 0.82-0.97 with k = 24)
    detector = SAEDetector(model=model, layer="4", k=24, seed=0)
    fit = detector.fit(split["train"], batch_size=100, steps=150, sae_batch_size=64, lr=3e-3)
    assert sum(fit.nmse[-10:]) < 0.5 * sum(fit.nmse[:10])
    detector.select(split["clean_cal"], split["adv_cal"])
    return detector, split


def test_detector_separates_attacked_inputs(fitted) -> None:
    detector, split = fitted
    assert (detector.sae.d, detector.sae.n, detector.sae.k) == (24, 192, 24)  # 8·d latents
    assert len(detector.features) == 20 and (detector.relevance > 0).all()
    clean, adv = detector.score(split["clean_test"]), detector.score(split["adv_test"])
    assert clean.shape == (200,) and clean.dtype == torch.float32
    counts = clean.floor()
    assert ((clean - counts) < 1 / 21).all() and counts.max() <= 20  # the tie-break stays below the count's step
    metrics = detection_metrics(clean, adv)  # measured: AUROC 0.97, recall 0.86 at 5% FPR
    assert metrics["auroc"] > 0.9 and metrics["tpr_at_5fpr"] > 0.6, metrics
    with torch.no_grad(), ActivationTap(detector.model, "4") as tap:  # the layer's norm alone barely sees the push
        norms = tap(split["clean_test"]).norm(dim=1), tap(split["adv_test"]).norm(dim=1)
    assert metrics["auroc"] > auroc(*norms) + 0.2  # measured: 0.69
    assert detector.flag(split["clean_test"]).float().mean() < 0.15  # ≈ the 5% calibrated on another split
    # a sample's score does not depend on its batch mates
    assert torch.allclose(detector.score(split["adv_test"][:5]), adv[:5], atol=1e-6)


def test_soft_score_has_a_gradient_through_the_model(fitted) -> None:
    detector, split = fitted
    x = split["adv_test"][:8].clone().requires_grad_(True)
    soft = detector.soft_score(x)
    assert soft.shape == (8,) and soft.requires_grad
    assert ((soft >= 0) & (soft <= len(detector.features))).all()
    (grad,) = torch.autograd.grad(soft.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in detector.model.parameters())


def test_score_leaves_the_model_as_it_was(fitted) -> None:
    detector, split = fitted
    model = detector.model
    model.train()
    model[3].requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    detector.score(split["clean_test"][:16])
    detector.soft_score(split["clean_test"][:16].requires_grad_(True)).sum().backward()
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters())
    model.eval().requires_grad_(True)


def test_threshold_rules_and_round_trip(fitted, tmp_path) -> None:
    detector, split = fitted
    x = split["adv_test"][:20]
    detector.save(tmp_path / "det")
    loaded = SAEDetector.load(tmp_path / "det", detector.model)
    assert torch.equal(loaded.score(x), detector.score(x))
    assert loaded.threshold == detector.threshold and loaded.describe() == detector.describe()
    json.dumps(loaded.describe())
    loaded.min_fire = 3
    loaded.select(split["clean_cal"], split["adv_cal"])
    assert loaded.threshold == 2.5
    assert torch.equal(loaded.flag(x), loaded.score(x).floor() >= 3)
    loaded.calibrate_threshold(loaded.score(split["clean_cal"]), fpr=0.1)
    assert loaded.flag(split["clean_cal"]).float().mean() <= 0.1


def test_detector_on_llama_embeddings() -> None:
    model = Embeds()
    modes = [m.training for m in model.modules()]
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(48, 5, 32, generator=g)
    adv = clean + 0.8 * torch.randn(1, 1, 32, generator=g)
    detector = SAEDetector(model=model, layer="lm.model.layers.0", expansion=2, top_features=5, pool="max")
    detector.fit(clean[:24], batch_size=8, steps=30, sae_batch_size=32, lr=3e-3)
    assert (detector.sae.d, detector.sae.n, detector.sae.k) == (32, 64, 4)
    detector.select(clean[24:], adv[24:])
    assert detector.score(clean[:4]).shape == (4,)
    x = adv[:2].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector.soft_score(x).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.requires_grad for p in model.parameters()) and [m.training for m in model.modules()] == modes


def test_registry_and_errors() -> None:
    assert "sae" in available()
    model = mlp()
    detector = build("sae", model=model, layer="2")
    assert isinstance(detector, SAEDetector)
    with pytest.raises(ConfigError, match="valid module paths include: 0, 1, 2"):
        SAEDetector(model=model, layer="features.3")
    with pytest.raises(ConfigError, match="not fitted"):
        detector.score(torch.randn(2, 12))
    with pytest.raises(ConfigError, match="no threshold"):
        detector.flag(torch.randn(2, 12))
    with pytest.raises(ConfigError):
        SAEDetector(model=model, layer="2", pool="median")
    with pytest.raises(ConfigError):
        SAEDetector(model=model, layer="2", min_fire=0)
