"""Multimodal recommenders: MMRec data and a planted synthetic set, VBPR / MMGCN with modality projectors, BPR
training, full-ranking metrics, promotion attacks (FGSM / PGD on a target item's aligned features), and APR-style
and UAT-MC adversarial training (``methods.md`` §7). ``sparring run`` takes them with ``task: recsys``.
"""

from sparring.recsys.data import RecData, load_mmrec, synthetic
from sparring.recsys.metrics import ranking_metrics
from sparring.recsys.models import MMGCN, VBPR, Recommender, build_recommender
from sparring.recsys.promotion import PromotionAttack, anchor_users, cross_modal_cosine, pick_targets
from sparring.recsys.train import fit
from sparring.recsys.uat_mc import APR, UATMC

__all__ = [
    "APR", "MMGCN", "UATMC", "VBPR", "PromotionAttack", "RecData", "Recommender", "anchor_users", "build_recommender",
    "cross_modal_cosine", "fit", "load_mmrec", "pick_targets", "ranking_metrics", "synthetic",
]
