"""Language models in sparring: Hugging Face models attacked in embedding space.

``embedding``: wrappers that make a Hugging Face classifier or causal LM a ``model(x) → logits`` on token
embeddings (``inputs_embeds``), so every core attack, threat model (per-token balls) and gradient source
(autograd or predicted) applies. ``toy``: small labelled text sets and prompt/target corpora built in code.
``data``: behaviours, utility data and prompt-injection tasks read from JSONL, and chat-template-aware encoding
with prompt / response masks (where an embedding attack perturbs and where the loss is taken).
Needs the ``transformers`` package (the ``hf`` extra).
"""

from sparring.language.data import (
    Behaviour,
    EncodedChat,
    InjectionTask,
    Utility,
    collate,
    encode_chat,
    injection_prompt,
    read_jsonl,
)
from sparring.language.embedding import CausalLMTarget, EmbeddingSpace, TextClassifier, embedding_scale, padding_free
from sparring.language.toy import topic_prompts, topic_texts

__all__ = [
    "Behaviour", "EncodedChat", "InjectionTask", "Utility", "collate", "encode_chat", "injection_prompt", "read_jsonl",
    "CausalLMTarget", "EmbeddingSpace", "TextClassifier", "embedding_scale", "padding_free", "topic_prompts",
    "topic_texts",
]
