"""The model as the papers write it: config, RoPE, attention with a KV cache, blocks, heads.

Names are imported on first use (PEP 562), so ``rotary.model.config`` (which the CLI's recipe
handling reads) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_LAZY = {
    "ModelConfig": "config",
    "PRESETS": "presets",
    "get_preset": "presets",
    "KVCache": "cache",
    "RotaryModel": "heads",
    "CausalLM": "heads",
    "MaskedLM": "heads",
    "SequenceClassifier": "classifier",
    "Seq2SeqLM": "seq2seq",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        # also how ``from rotary.model import rope`` falls through to importing the submodule
        raise AttributeError(f"module 'rotary.model' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"rotary.model.{_LAZY[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
