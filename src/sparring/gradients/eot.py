"""Expectation over Transformation (EOT): the gradient of the expected loss of a randomized model.

A randomized defence (dropout at test time, random input transformations, noise injection) computes
f(x; r) with fresh randomness r at every forward pass. A single draw's gradient ∇ₓ L(f(x; r), y) is a noisy
estimate, and attacks that follow it wander; EOT (Athalye, Engstrom, Ilyas & Kwok, ICML 2018, "Synthesizing
robust adversarial examples"; Athalye, Carlini & Wagner, ICML 2018) attacks the expectation instead:

    ∇ₓ E_r[ L(f(x; r), y) ]  ≈  (1/n) Σ_{k=1}^{n} ∇ₓ L(f(x; r_k), y),     r_k independent draws

Defaults as AutoAttack's ``rand`` version (Croce & Hein, ICML 2020; fra31/auto-attack ``autopgd_base.py``,
``eot_iter=20``): n = 20 forward/backward passes per query. The returned loss is the mean loss (the EOT objective
the attack maximizes) and the logits are the mean logits, so an attack's success means the *expected* logits
misclassify, which a lucky draw alone does not give. (AutoAttack keeps the last draw's logits and loss; the mean
is the lower-variance choice and ranks iterates by the objective actually maximized.)

Any attack becomes EOT-capable by its gradient source: ``APGD(gradients=EOT(n=20))``. The cost of one query is n
passes (an attack's ``queries`` counts queries). The model's own randomness comes from wherever the model draws it
(usually the global generator), so EOT results are reproducible under ``torch.manual_seed`` but, unlike the
deterministic attacks, depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """

    n: int = 20
    inner: GradientSource = field(default_factory=Autograd)
    batched: bool = False

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"EOT needs n >= 1 draws, got {self.n}")

    def describe(self) -> str:
        return f"eot(n={self.n}{', batched' if self.batched else ''})"

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
        return GradientStep(grad=grad / self.n, loss=loss / self.n, logits=(logits / self.n).to(step.logits.dtype))

    def _batched(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        """The n draws in one pass over ``x`` repeated n times (draw k is rows k·B … (k+1)·B − 1)."""
        b = x.shape[0]
        step = self.inner(model, x.repeat(self.n, *([1] * (x.dim() - 1))), loss_fn,
                          ref.repeat(self.n, *([1] * (ref.dim() - 1))))
        if not step.scored:
            raise ConfigError("EOT averages losses and logits: its inner gradient source must return both")
        assert step.loss is not None and step.logits is not None
        logits = step.logits.float().view(self.n, b, *step.logits.shape[1:]).mean(0).to(step.logits.dtype)
        return GradientStep(grad=step.grad.view(self.n, *x.shape).mean(0), loss=step.loss.view(self.n, b).mean(0),
                            logits=logits)
