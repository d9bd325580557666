"""Gradient prediction (methods.md §1): predict input gradients from hidden states, without a backward pass.

``ridge``: the streaming ridge fitter (float64 sums, standardized features, Cholesky solve) and the
fidelity metrics (cosine similarity, sign agreement). ``predictor``: :class:`GradientPredictor` (hooks a
layer, calibrates, predicts, saves) and :class:`Predicted`, the gradient source every attack accepts::

    predictor = GradientPredictor(layer="2")
    predictor.calibrate(model, x_cal, y_cal)
    FGSM(gradients=Predicted(predictor))(model, x, y, LinfBall(eps=0.1))
"""

from sparring.prediction.predictor import GradientPredictor, Predicted, tap
from sparring.prediction.ridge import (
    DEFAULT_LAMBDAS,
    RidgeAccumulator,
    RidgeMap,
    choose_lambda,
    cosine,
    sign_agreement,
)

__all__ = [
    "DEFAULT_LAMBDAS", "GradientPredictor", "Predicted", "RidgeAccumulator", "RidgeMap", "choose_lambda", "cosine",
    "sign_agreement", "tap",
]
