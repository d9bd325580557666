"""Signed-gradient PGD: steps along ``sign(∇ₓL)`` whatever the norm of the ball, then the projection.

    x^{k+1} = Π_{B(x,ε)}( x^k + step(sign(∇ₓ L(f(x^k), y))) )

This is the optimizer of the continuous adversarial training attack on language models (Xhonneux et al.,
NeurIPS 2024, "Efficient Adversarial Training in LLMs with Continuous Attacks", ``src/embedding_attack.py``):
sign-SGD on the target NLL, each token's perturbation projected to a per-token L2 ball of radius
ε · mean‖E_v‖₂ (ε = 0.05), zero start, 10 iterations, the best-loss perturbation kept. Under an L∞ ball it is
PGD itself; under an L2 or per-token L2 ball (:class:`~sparring.threat.TokenL2Ball`) the threat model's
normalized step turns ``sign(g)`` into a step of L2 length α per token, i.e. α/√D per coordinate, so CAT's
per-coordinate learning rate 1e-4 is ``step_size = 1e-4 · √D``. By default α = 2.5 ε / steps (PGD's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sparring.attacks.base import ATTACKS
from sparring.attacks.pgd import PGD


@ATTACKS.register("sign_pgd")
@dataclass(kw_only=True)
class SignPGD(PGD):
    """PGD whose ascent direction is the gradient's sign (CAT's embedding attack); settings as :class:`PGD`."""

    name = "sign_pgd"

    def _ascent(self, grad: Tensor, x_adv: Tensor) -> Tensor:
        return grad.sign()
