"""sparring: attack, adversarially train and evaluate PyTorch models.

    from sparring import LinfBall, PGD, PGDAT, Trainer, TrainConfig, build_model, evaluate, load_data

    x_adv = sparring.attack(model, x, y, attack="pgd", eps=8/255, norm="linf")          # one-liners
    acc = sparring.robust_accuracy(model, x, y, eps=8/255, norm="linf", suite="standard")

The path of a batch: data → model → attack (threat model × optimizer × gradient source) → objective →
trainer, and evaluation → report. See DESIGN.md in the repository for the architecture.
"""

from sparring.attacks import (  # noqa: E402
    APGD,
    FGSM,
    FGSMRS,
    PGD,
    APGDTargeted,
    Attack,
    AttackResult,
    Cascade,
    Square,
    suite,
)
from sparring.data import Dataset, load_data, long_tail  # noqa: E402
from sparring.errors import ConfigError, DataError, SparringError, ThreatModelError  # noqa: E402
from sparring.evaluate import Evaluation, evaluate  # noqa: E402
from sparring.models import build_model, with_normalization  # noqa: E402
from sparring.objectives import PGDAT, TRADES, FastAT, Objective, Standard  # noqa: E402
from sparring.shortcuts import attack, robust_accuracy  # noqa: E402
from sparring.threat import L2Ball, LinfBall, ThreatModel  # noqa: E402
from sparring.train import TrainConfig, Trainer  # noqa: E402
from sparring.version import __version__  # noqa: E402

__all__ = [
    "APGD", "APGDTargeted", "Square", "Cascade", "suite", "FGSM", "FGSMRS", "PGD", "Attack", "AttackResult",
    "Dataset", "load_data", "long_tail", "ConfigError", "DataError", "SparringError", "ThreatModelError",
    "Evaluation", "evaluate", "build_model", "with_normalization", "PGDAT", "TRADES", "FastAT", "Objective",
    "Standard", "L2Ball", "LinfBall", "ThreatModel", "Trainer", "TrainConfig", "__version__", "attack",
    "robust_accuracy",
]
