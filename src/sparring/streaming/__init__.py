"""Streaming learners under attack: Fuzzy ARTMAP, its WB-Softmax surrogate and the streaming protocol (issue 22;
arXiv 2605.06902, methods.md §9.1).

* :mod:`~sparring.streaming.artmap`: :class:`FuzzyARTMAP`, an ``nn.Module`` that learns with ``partial_fit`` on a
  stream (complement coding, choice, vigilance with match tracking, fast / slow learning), save / load.
* :mod:`~sparring.streaming.wb_softmax`: :class:`WBSoftmaxSurrogate` (softmax over the choices, map field as a sum)
  and :class:`WBSoftmax`, the gradient source that lets every core attack run on an ARTMAP, judged on its real
  decision.
* :mod:`~sparring.streaming.selective`: replay-free defences: :class:`NoDefence`, :class:`PGDATStage`,
  :class:`ProgressiveSelective` (two-stage, surrogate-margin selection).
* :mod:`~sparring.streaming.protocol`: class-incremental and domain-shift streams, per-stage and final evaluation
  (clean, WB-Softmax and transfer robustness).

The core never imports this package; it speaks the core's protocols (attacks, gradient sources, the Trainer).
"""

from sparring.streaming.artmap import ARTMAPConfig, FuzzyARTMAP
from sparring.streaming.protocol import (
    EvalSettings,
    Probe,
    Stage,
    Stream,
    class_incremental,
    domain_shift,
    evaluate_point,
    make_stream,
    probes,
    run_stream,
    train_transfer_mlp,
)
from sparring.streaming.selective import NoDefence, PGDATStage, ProgressiveSelective, StageDefence
from sparring.streaming.wb_softmax import WBSoftmax, WBSoftmaxSurrogate, smooth_min

__all__ = [
    "ARTMAPConfig", "EvalSettings", "FuzzyARTMAP", "NoDefence", "PGDATStage", "Probe", "ProgressiveSelective",
    "Stage", "StageDefence", "Stream", "WBSoftmax", "WBSoftmaxSurrogate", "class_incremental", "domain_shift",
    "evaluate_point", "make_stream", "probes", "run_stream", "smooth_min", "train_transfer_mlp",
]
