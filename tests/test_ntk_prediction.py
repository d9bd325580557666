"""NTK sanity check of gradient prediction (methods.md §1.6): what width buys, and what it cannot.

Setting: a 2-layer MLP in NTK parameterisation, ``f(x) = V φ(W x / √d) / √m`` with ``W, V ~ N(0, 1)``,
no biases, d = 20 Gaussian inputs, K = 2 outputs with random labels (CE loss), widths m = 16, 64, 256.
The residual predictor (features ``r ⊗ [h, 1]``) is calibrated on 2000 points and scored on 1000 others.

Why the claim "the held-out cosine rises to 1 with width" is only half true. The logit Jacobian is
``J(x) = Wᵀ diag(φ'(u)) V / √(m d)`` with ``u = W x / √d ~ N(0, 1)``. Expand φ'(u) in Hermite polynomials:
its degree-0 part gives a constant Jacobian, its degree-1 part a Jacobian affine in x. For ReLU, GELU and
softplus φ' − 1/2 is odd, so the next part is cubic in x: ~1500 cubic harmonics in 20 dimensions, out of
reach of a ridge map on 2000 points (8000 points did not help for ReLU either).
So the reachable target is the *affine-in-x* part of J, and the best predictor of that kind is the ridge
on the pre-activations ``u`` (layer ``"0"``, linear in x). What width does: the post-activations φ(u)
(layer ``"1"``) mix all Hermite degrees per unit, so at small width their span cannot isolate the affine
part; as m grows it can, and the post-activation cosine converges to the pre-activation one (the gap
shrinks ~10x from m = 16 to 256). The ceiling itself is set by the activation, not by width: ≈ 0.90 for
ReLU (its step derivative has ~18 % of its energy in degrees ≥ 3), ≈ 0.96–0.97 for GELU, ≈ 0.998 for
softplus (sigmoid is nearly affine on N(0, 1)). For an odd φ (tanh, erf) φ' is even: the odd features can
reach none of the x-dependent part and the predictor is the intercept alone, at every width.

Measured (mean of 2 seeds, K = 2; widths up to 2048 were run when this was written and follow the same
pattern, with draw-to-draw swings of ±0.03 in the raw cosine, which is why the shrinking *gap* to the affine
predictor is the main assertion): post-activation cosine ReLU 0.85 → 0.89 → 0.90, GELU 0.92 → 0.95 → 0.96,
softplus 0.994 → 0.997 → 0.998 for m = 16 → 64 → 256. Training (10 epochs of SGD, lr 1, on a teacher task):
at m = 256 the first layer barely moves (‖ΔW‖/‖W‖ ≈ 0.07) and the cosine is not lowered (GELU 0.96 → 0.97;
at m = 1024 it even rises, ReLU 0.86 → 0.95, because the learned part of the Jacobian is the gradient of a
smooth kernel-regression function), while at m = 16 the features move (‖ΔW‖/‖W‖ ≈ 0.3–0.4) and the cosine
moves by 0.02–0.05 (down for most seeds, not all), so after training it is monotone in width (GELU
0.88 → 0.93 → 0.97).
"""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from torch import Tensor, nn

from sparring.gradients import GradientPredictor

D_IN = 20
CLASSES = 2
N_CAL, N_TEST = 2000, 1000
WIDTHS = (16, 64, 256)
SEEDS = (0, 1)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus, "tanh": nn.Tanh}
PRE, POST = "0", "1"  # module paths in the Sequential: the hidden pre-activations and post-activations

pytestmark = pytest.mark.usefixtures("single_thread")


class NTKLinear(nn.Module):
    """``x ↦ x Wᵀ / √fan_in`` with ``W ~ N(0, 1)``: the NTK parameterisation, no bias."""

    def __init__(self, fan_in: int, fan_out: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, generator=generator))
        self.scale = 1 / math.sqrt(fan_in)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T * self.scale


def ntk_mlp(width: int, activation: str, seed: int) -> nn.Sequential:
    """The 2-layer NTK MLP; the same seed gives the same W and V whatever the activation."""
    generator = torch.Generator().manual_seed(seed)
    return nn.Sequential(NTKLinear(D_IN, width, generator), ACTIVATIONS[activation](),
                         NTKLinear(width, CLASSES, generator))


def gaussian_data(n: int, seed: int, *, teacher: bool = False) -> tuple[Tensor, Tensor]:
    """``x ~ N(0, I_20)``; labels random, or the argmax of a fixed random ReLU teacher (a learnable task)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(n, D_IN, generator=generator)
    if not teacher:
        return x, torch.randint(0, CLASSES, (n,), generator=generator)
    fixed = torch.Generator().manual_seed(777)
    a, b = torch.randn(D_IN, 32, generator=fixed), torch.randn(32, CLASSES, generator=fixed)
    return x, (torch.relu(x @ a / math.sqrt(D_IN)) @ b).argmax(1)


def held_out_cosine(model: nn.Module, layer: str, x: Tensor, y: Tensor, seed: int) -> float:
    """Calibrate on the first N_CAL points, return the mean cosine on the N_TEST points after them."""
    predictor = GradientPredictor(layer=layer, loss="ce", mode="residual")
    predictor.calibrate(model, x[:N_CAL], y[:N_CAL], seed=seed)
    return predictor.fidelity(model, x[N_CAL:], y[N_CAL:])["cosine"]


def train(model: nn.Module, seed: int, *, epochs: int = 10, lr: float = 1.0, batch: int = 64) -> float:
    """SGD on 2000 teacher-labelled points (disjoint from the calibration points); returns ‖ΔW‖ / ‖W‖."""
    x, y = gaussian_data(N_CAL + N_TEST + 2000, seed, teacher=True)
    x, y = x[-2000:], y[-2000:]
    first = model[0].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=order).split(batch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
    return float((model[0].weight.detach() - first).norm() / first.norm())


@cache
def init_cosine(activation: str, width: int, seed: int, layer: str) -> float:
    """Held-out cosine at initialisation, random labels."""
    x, y = gaussian_data(N_CAL + N_TEST, seed)
    return held_out_cosine(ntk_mlp(width, activation, seed), layer, x, y, seed)


@cache
def teacher_cosines(activation: str, width: int, seed: int) -> tuple[float, float, float]:
    """(cosine at initialisation, cosine after training, ‖ΔW‖/‖W‖), calibrated on teacher labels."""
    x, y = gaussian_data(N_CAL + N_TEST, seed, teacher=True)
    model = ntk_mlp(width, activation, seed)
    before = held_out_cosine(model, POST, x, y, seed)
    moved = train(model, seed)
    return before, held_out_cosine(model, POST, x, y, seed), moved


def mean_over_seeds(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_post_activations_reach_the_affine_ceiling_as_width_grows(activation: str) -> None:
    post = [mean_over_seeds([init_cosine(activation, m, s, POST) for s in SEEDS]) for m in WIDTHS]
    pre = [mean_over_seeds([init_cosine(activation, m, s, PRE) for s in SEEDS]) for m in WIDTHS]
    gaps = [a - b for a, b in zip(pre, post, strict=True)]
    assert gaps[0] > gaps[1] > gaps[2], f"the gap to the affine predictor should shrink with width: {gaps}"
    assert gaps[0] > 0.02 and gaps[2] < 0.01, gaps
    assert post[0] < post[1] < post[2], f"the held-out cosine should rise with width: {post}"


def test_the_activation_sets_the_ceiling_width_does_not_lift_it() -> None:
    widest = {act: mean_over_seeds([init_cosine(act, WIDTHS[-1], s, POST) for s in SEEDS]) for act in ACTIVATIONS}
    assert widest["softplus"] > 0.99  # sigmoid is nearly affine on N(0, 1): the affine part is almost all of J
    assert widest["gelu"] > 0.94
    assert widest["relu"] < 0.93  # the step derivative keeps ~18 % of its energy out of reach
    assert widest["relu"] < widest["gelu"] - 0.03 and widest["gelu"] < widest["softplus"] - 0.015, widest
    for width in WIDTHS:  # tanh: odd features, even Jacobian: post-activations add nothing over the intercept
        for seed in SEEDS:
            assert init_cosine("tanh", width, seed, POST) < init_cosine("tanh", width, seed, PRE) + 0.002


def test_after_training_the_cosine_rises_with_width_and_is_not_lowered_when_wide() -> None:
    runs = {m: [teacher_cosines("gelu", m, s) for s in SEEDS] for m in WIDTHS}
    before = [mean_over_seeds([r[0] for r in runs[m]]) for m in WIDTHS]
    after = [mean_over_seeds([r[1] for r in runs[m]]) for m in WIDTHS]
    change = [mean_over_seeds([abs(r[1] - r[0]) for r in runs[m]]) for m in WIDTHS]
    moved = [mean_over_seeds([r[2] for r in runs[m]]) for m in WIDTHS]
    assert moved[0] > 3 * moved[2], f"small widths should move their features, large ones barely: {moved}"
    assert after[0] < after[1] < after[2], f"after training the cosine should rise with width: {after}"
    assert after[2] > 0.95 and after[2] > before[2] - 0.005, f"training should not lower it when wide: {before} {after}"
    assert change[0] > 2 * change[2], f"training should move the cosine more at small width: {change}"
