"""Multimodal recommenders: MMRec data, VBPR / MMGCN with modality projectors, BPR training, promotion attacks,
APR-style and UAT-MC adversarial training."""
