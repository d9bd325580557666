"""Multimodal recommenders: MMRec data and a planted synthetic set, VBPR / MMGCN with modality projectors, BPR
training, full-ranking metrics, promotion attacks (FGSM / PGD on a target item's aligned features), and APR-style
and UAT-MC adversarial training (``methods.md`` §7). ``sparring run`` takes them with ``task: recsys``: importing
the package registers the ``recsys`` task (:mod:`sparring.recsys.task`) and its report view
(:mod:`sparring.recsys.report`).
"""

from sparring.recsys.data import RecData, load_mmrec, synthetic
from sparring.recsys.metrics import ranking_metrics
from sparring.recsys.models import MMGCN, VBPR, Recommender, build_recommender
from sparring.recsys.promotion import PromotionAttack, anchor_users, cross_modal_cosine, pick_targets
from sparring.recsys.report import RECSYS
from sparring.recsys.task import RecRunConfig, RecsysTask, parse_rec_config, run_recsys
from sparring.recsys.train import RecEpochData, fit
from sparring.recsys.uat_mc import APR, UATMC

__all__ = [
    "APR", "MMGCN", "RECSYS", "UATMC", "VBPR", "PromotionAttack", "RecData", "RecEpochData", "RecRunConfig",
    "RecsysTask", "Recommender", "anchor_users", "build_recommender", "cross_modal_cosine", "fit", "load_mmrec",
    "parse_rec_config", "pick_targets", "ranking_metrics", "run_recsys", "synthetic",
]
