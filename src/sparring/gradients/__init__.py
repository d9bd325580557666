"""Gradient sources: where an attack's input gradient comes from.

``autograd``: the protocol (:class:`GradientSource`: ``(model, x, y, loss) → GradientStep``) and
:class:`Autograd`, one backward pass. ``eot``: :class:`EOT`, the mean of n draws of another source (randomized
models; the ``rand`` suite). Gradient prediction (methods.md §1) predicts input gradients from hidden
states without a backward pass. ``ridge``: the streaming ridge fitter (float64 sums, standardized features,
Cholesky solve) and the fidelity metrics (cosine similarity, sign agreement). ``predicted``:
:class:`GradientPredictor` (hooks a layer, calibrates, predicts, saves) and :class:`Predicted`, the gradient source
every attack accepts::

    predictor = GradientPredictor(layer="2")
    predictor.calibrate(model, x_cal, y_cal)
    FGSM(gradients=Predicted(predictor))(model, x, y, LinfBall(eps=0.1))
"""

from sparring.gradients.autograd import Autograd, GradientSource, GradientStep
from sparring.gradients.eot import EOT
from sparring.gradients.predicted import GradientPredictor, Predicted, tap
from sparring.gradients.ridge import (
    DEFAULT_LAMBDAS,
    RidgeAccumulator,
    RidgeMap,
    choose_lambda,
    cosine,
    sign_agreement,
)

__all__ = [
    "Autograd", "DEFAULT_LAMBDAS", "EOT", "GradientPredictor", "GradientSource", "GradientStep", "Predicted",
    "RidgeAccumulator", "RidgeMap", "choose_lambda", "cosine", "sign_agreement", "tap",
]
