"""rotary: train and use Transformers with Rotary Position Embeddings (RoPE)."""

__version__ = "0.1.0"

from rotary.config import PRESETS, ModelConfig, get_preset  # noqa: E402
from rotary.errors import RotaryError  # noqa: E402
from rotary.model import CausalLM, KVCache, MaskedLM, SequenceClassifier  # noqa: E402
from rotary.pretrained import load  # noqa: E402

__all__ = [
    "PRESETS",
    "CausalLM",
    "KVCache",
    "MaskedLM",
    "ModelConfig",
    "RotaryError",
    "SequenceClassifier",
    "__version__",
    "get_preset",
    "load",
]
