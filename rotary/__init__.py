"""rotary: train and use Transformers with Rotary Position Embeddings (RoPE)."""

__version__ = "0.1.0"

from rotary.config import PRESETS, ModelConfig, get_preset  # noqa: E402
from rotary.errors import RotaryError  # noqa: E402

__all__ = ["PRESETS", "ModelConfig", "RotaryError", "__version__", "get_preset"]
