"""torch.compile (inductor, CPU): compiled and eager models give the same attacks and training steps.

One compiled small CNN on digits-shaped input (8, 1, 8, 8) serves every test, so each graph (attack step,
scoring forward, training step) compiles once for the module; inductor's on-disk cache makes later runs fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from sparring.attacks import APGD, PGD
from sparring.errors import ConfigError
from sparring.models import build_model
from sparring.objectives.pgd_at import PGDAT
from sparring.runtime.checkpoint import load_weights, save_weights
from sparring.runtime.compile import compiled, is_compiled, uncompiled
from sparring.threat import LinfBall

ATOL = 1e-5
THREAT = LinfBall(eps=0.2)


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[nn.Module, nn.Module]]:
    """(eager, compiled) small CNNs sharing their weights."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10).eval()
    yield eager, compiled(eager)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def batch(digits) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    _, test = digits
    return test.x[:8].contiguous(), test.y[:8].contiguous()  # (8, 1, 8, 8), (8,)


def _attack_both(attack, models, batch):  # type: ignore[no-untyped-def]
    eager, fast = models
    x, y = batch
    ours = attack(fast, x, y, THREAT, generator=torch.Generator().manual_seed(3))
    ref = attack(eager, x, y, THREAT, generator=torch.Generator().manual_seed(3))
    return ours, ref


def test_pgd_matches_eager(models, batch) -> None:  # type: ignore[no-untyped-def]
    ours, ref = _attack_both(PGD(steps=5), models, batch)
    torch.testing.assert_close(ours.x_adv, ref.x_adv, atol=ATOL, rtol=0)
    assert torch.equal(ours.success, ref.success)
    torch.testing.assert_close(ours.loss, ref.loss, atol=1e-4, rtol=1e-4)


def test_apgd_matches_eager(models, batch) -> None:  # type: ignore[no-untyped-def]
    # early_stop drops broken rows, so every step would see a new batch size: with static shapes
    # (dynamic=False) that is one compile per size; the full batch keeps the graphs of the PGD test.
    ours, ref = _attack_both(APGD(steps=5, early_stop=False), models, batch)
    torch.testing.assert_close(ours.x_adv, ref.x_adv, atol=ATOL, rtol=0)
    assert torch.equal(ours.success, ref.success)


def test_training_step_matches_eager(models, batch) -> None:  # type: ignore[no-untyped-def]
    eager, fast = models
    x, y = batch
    objective = PGDAT(threat=THREAT, attack=PGD(steps=3, keep_best=False, score=False))
    params = list(eager.parameters())
    results = []
    for model in (fast, eager):
        model.train()
        for p in params:
            p.grad = None
        loss = objective(model, x, y, generator=torch.Generator().manual_seed(5)).total()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in params]))
    eager.eval()
    (loss_c, grads_c), (loss_e, grads_e) = results
    torch.testing.assert_close(loss_c, loss_e, atol=ATOL, rtol=1e-5)
    for g_c, g_e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(g_c, g_e, atol=ATOL, rtol=1e-4)
    for p in params:
        p.grad = None


def test_state_dict_keys_and_checkpoints(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    eager, fast = models
    assert is_compiled(fast) and not is_compiled(eager)
    assert uncompiled(fast) is eager and uncompiled(eager) is eager
    assert compiled(fast) is fast  # compiling twice is a no-op
    assert all(k.startswith("_orig_mod.") for k in fast.state_dict())  # why saving goes through uncompiled()
    assert list(uncompiled(fast).state_dict()) == list(eager.state_dict())
    assert [id(p) for p in fast.parameters()] == [id(p) for p in eager.parameters()]
    save_weights(uncompiled(fast), tmp_path / "model.safetensors")
    fresh = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    load_weights(fresh, tmp_path / "model.safetensors")  # clean keys load into a plain model
    for a, b in zip(fresh.state_dict().values(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_attack_leaves_caller_model_unchanged(models, batch) -> None:  # type: ignore[no-untyped-def]
    eager, fast = models
    x, y = batch
    fast.train()
    frozen = next(iter(eager.parameters()))
    frozen.requires_grad_(False)
    last = list(eager.parameters())[-1]
    last.grad = torch.ones_like(last)
    before = {k: v.clone() for k, v in eager.state_dict().items()}
    try:
        PGD(steps=5)(fast, x, y, THREAT, generator=torch.Generator().manual_seed(3))
        assert fast.training and all(m.training for m in eager.modules())
        assert [p.requires_grad for p in eager.parameters()] == [p is not frozen for p in eager.parameters()]
        assert last.grad is not None and torch.equal(last.grad, torch.ones_like(last))
        assert all(torch.equal(v, before[k]) for k, v in eager.state_dict().items())
    finally:
        frozen.requires_grad_(True)
        last.grad = None
        fast.eval()


def test_bad_settings_and_backend_failures_are_config_errors(batch) -> None:  # type: ignore[no-untyped-def]
    import torch._dynamo

    model = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="mode"):
        compiled(model, mode="fastest")
    with pytest.raises(ConfigError, match="backend"):
        compiled(model, backend="no_such_backend")
    # A backend that fails while building the graph (this debugging backend refuses torch.relu): with
    # example= the failure surfaces at once, as a ConfigError.
    with pytest.raises(ConfigError, match="could not build"):
        compiled(_ReluNet(), backend="relu_compile_error_TESTING_ONLY", example=batch[0])
    torch._dynamo.reset()


class _ReluNet(nn.Module):
    """Linear → torch.relu on flattened digits (B, 64) → (B, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.linear(x.flatten(1)))
