"""Gradient prediction (methods.md §1): predict input gradients from hidden states, without a backward pass.

``ridge``: the streaming ridge fitter (float64 sums, standardized features, Cholesky solve) and the
fidelity metrics (cosine similarity, sign agreement). The predictor that hooks a layer and the
``predicted`` gradient source build on it.
"""

from sparring.prediction.ridge import (
    DEFAULT_LAMBDAS,
    RidgeAccumulator,
    RidgeMap,
    choose_lambda,
    cosine,
    sign_agreement,
)

__all__ = ["DEFAULT_LAMBDAS", "RidgeAccumulator", "RidgeMap", "choose_lambda", "cosine", "sign_agreement"]
