"""Few-shot machine-generated-text (MGT) detection, its evasion and REACT-style adversarial training (offline).

* ``corpus``: human chunks of the Python documentation shipped with the interpreter (``pydoc_data.topics``),
  split by topic; ``generation``: their machine twins, sampled from the same openings by SmolLM2-135M-Instruct
  (else a tiny random Llama), batched, seeded and cached under ``$SPARRING_CACHE/mgt``.
* ``encoder``: frozen mean-pooled MiniLM embeddings, cached per text, and word-piece neighbours; ``detector``: a
  projection + head on them, trained on the core Trainer; F1 and attack success rate.
* ``rewrites``: synonym swaps (embedding neighbours), homoglyphs, sentence reordering, punctuation edits;
  ``search``: a greedy output-only black-box search over them; ``humanizer``: a best-of-n, retrieval-augmented LLM
  rewrite chosen by a surrogate detector.
* ``react``: the contrastive + pairwise-margin objective and the three training methods (standard, rule-based
  adversarial training, REACT).

``benchmarks/mgt_detection.py`` runs the comparison; ``docs/mgt_detection.md`` describes it.
"""

from sparring.language.mgt.corpus import Chunk, human_chunks, topic_split
from sparring.language.mgt.detector import (
    FitConfig,
    MGTDetector,
    attack_success_rate,
    f1_machine,
    fit_detector,
)
from sparring.language.mgt.encoder import TextEncoder, load_minilm, tiny_encoder
from sparring.language.mgt.generation import GenerationConfig, LanguageModel, generate, load_generator, tiny_llama
from sparring.language.mgt.humanizer import Humanizer, retrieve
from sparring.language.mgt.react import (
    METHODS,
    ContrastiveMarginLoss,
    TrainSettings,
    pairwise_margin_loss,
    supcon_loss,
    train_detector,
)
from sparring.language.mgt.rewrites import (
    HOMOGLYPHS,
    REWRITES,
    homoglyphs,
    punctuation_edits,
    reorder_sentences,
    synonym_swap,
)
from sparring.language.mgt.search import RuleSearch, SearchResult

__all__ = [
    "Chunk", "human_chunks", "topic_split",
    "GenerationConfig", "LanguageModel", "generate", "load_generator", "tiny_llama",
    "TextEncoder", "load_minilm", "tiny_encoder",
    "MGTDetector", "FitConfig", "fit_detector", "f1_machine", "attack_success_rate",
    "HOMOGLYPHS", "REWRITES", "homoglyphs", "punctuation_edits", "reorder_sentences", "synonym_swap",
    "RuleSearch", "SearchResult", "Humanizer", "retrieve",
    "METHODS", "ContrastiveMarginLoss", "TrainSettings", "pairwise_margin_loss", "supcon_loss", "train_detector",
]
