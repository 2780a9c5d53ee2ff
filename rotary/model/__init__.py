"""The model library: RoPE, attention with a KV cache, blocks, backbone and heads."""

from rotary.model.attention import KVCache
from rotary.model.transformer import CausalLM, MaskedLM, RotaryModel, SequenceClassifier

__all__ = ["CausalLM", "KVCache", "MaskedLM", "RotaryModel", "SequenceClassifier"]
