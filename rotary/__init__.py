"""rotary: train and use Transformers with Rotary Position Embeddings (RoPE).

The public names are imported on first use (PEP 562): ``import rotary`` and the ``rotary``
command's help, usage errors and ``--version`` do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "PRESETS": "rotary.config",
    "ModelConfig": "rotary.config",
    "get_preset": "rotary.config",
    "RotaryError": "rotary.errors",
    "CausalLM": "rotary.model",
    "KVCache": "rotary.model",
    "MaskedLM": "rotary.model",
    "SequenceClassifier": "rotary.model",
    "load": "rotary.pretrained",
}
# submodules reachable as attributes (``rotary.hf.to_hf``) without importing them first
_SUBMODULES = ("hf", "model", "data", "train", "tokenizer", "generate", "pretrained", "config",
               "errors", "demo", "io", "cli", "commands")

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"rotary.{name}")
    else:
        raise AttributeError(f"module 'rotary' has no attribute '{name}'")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
