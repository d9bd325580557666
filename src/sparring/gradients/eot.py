"""Expectation over Transformation (EOT): the gradient of the expected loss of a randomized model.

A randomized defence (dropout at test time, random input transformations, noise injection) computes
f(x; r) with fresh randomness r at every forward pass. A single draw's gradient ∇ₓ L(f(x; r), y) is a noisy
estimate, and attacks that follow it wander; EOT (Athalye, Engstrom, Ilyas & Kwok, ICML 2018, "Synthesizing
robust adversarial examples"; Athalye, Carlini & Wagner, ICML 2018) attacks the expectation instead:

    ∇ₓ E_r[ L(f(x; r), y) ]  ≈  (1/n) Σ_{k=1}^{n} ∇ₓ L(f(x; r_k), y),     r_k independent draws

Defaults as AutoAttack's ``rand`` version (Croce & Hein, ICML 2020; fra31/auto-attack ``autopgd_base.py``,
``eot_iter=20``): n = 20 forward/backward passes per query. The returned loss is the mean loss (the EOT objective
the attack maximizes, which ranks the iterates). The logits, which decide success, are by default the last
draw's, as AutoAttack does: a misclassification the randomized model really produced is a break (sparring counts
every break any attack found), even when the expected logits would still classify correctly. ``logits="mean"``
judges success on the mean logits instead: a lower-variance figure, but one stronger than the evidence.

Any attack becomes EOT-capable by its gradient source: ``APGD(gradients=EOT(n=20))``. The cost of one query is n
passes (an attack's ``queries`` counts queries). The model's own randomness comes from wherever the model draws it
(usually the global generator), so EOT results are reproducible under ``torch.manual_seed`` but, unlike the
deterministic attacks, depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.gradients.autograd import Autograd, GradientSource, GradientStep
from sparring.losses import LossFn


@dataclass(frozen=True, kw_only=True)
class EOT:
    """Average ``n`` queries of the ``inner`` gradient source (default: autograd) at the same input.

    Attributes:
        n: draws per query (AutoAttack's rand version: 20).
        inner: the gradient source each draw uses; it must return loss and logits (a scored source).
        batched: run the n draws as one pass over the batch repeated n times (n·B rows): much faster for small
            models and on GPUs, n times the memory. Valid only when the model draws its randomness per row
            (dropout, per-sample noise); a model drawing one transformation per call needs the default loop.
        logits: ``"last"`` (AutoAttack's choice: success is judged on the last draw) or ``"mean"``.
    """

    n: int = 20
    inner: GradientSource = field(default_factory=Autograd)
    batched: bool = False
    logits: Literal["last", "mean"] = "last"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"EOT needs n >= 1 draws, got {self.n}")
        if self.logits not in ("last", "mean"):
            raise ConfigError(f"EOT logits must be 'last' or 'mean', got {self.logits!r}")

    def describe(self) -> str:
        mean = ", mean logits" if self.logits == "mean" else ""
        return f"eot(n={self.n}{', batched' if self.batched else ''}{mean})"

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        if self.batched:
            return self._batched(model, x, loss_fn, ref)
        grad = loss = logits = None
        for _ in range(self.n):
            step = self.inner(model, x, loss_fn, ref)
            if not step.scored:
                raise ConfigError("EOT averages losses and logits: its inner gradient source must return both")
            assert step.loss is not None and step.logits is not None
            if grad is None:
                grad, loss, logits = step.grad.clone(), step.loss.clone(), step.logits.float().clone()
            else:
                assert loss is not None and logits is not None
                grad += step.grad
                loss += step.loss
                logits += step.logits.float()
        assert grad is not None and loss is not None and logits is not None
        last = step.logits
        chosen = (logits / self.n).to(last.dtype) if self.logits == "mean" else last
        return GradientStep(grad=grad / self.n, loss=loss / self.n, logits=chosen)

    def _batched(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        """The n draws in one pass over ``x`` repeated n times (draw k is rows k·B … (k+1)·B − 1)."""
        b = x.shape[0]
        step = self.inner(model, x.repeat(self.n, *([1] * (x.dim() - 1))), loss_fn,
                          ref.repeat(self.n, *([1] * (ref.dim() - 1))))
        if not step.scored:
            raise ConfigError("EOT averages losses and logits: its inner gradient source must return both")
        assert step.loss is not None and step.logits is not None
        draws = step.logits.view(self.n, b, *step.logits.shape[1:])
        logits = draws.float().mean(0).to(draws.dtype) if self.logits == "mean" else draws[-1]
        return GradientStep(grad=step.grad.view(self.n, *x.shape).mean(0), loss=step.loss.view(self.n, b).mean(0),
                            logits=logits)
