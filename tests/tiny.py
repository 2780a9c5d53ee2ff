"""The tiny models the model tests build: one base config, variants as keyword overrides."""

from __future__ import annotations

from typing import Any

import torch

from rotary.model import ModelConfig

BASE = dict(vocab_size=50, max_seq_len=16, n_layer=2, n_head=4, d_model=32, d_ff=64)


def tiny_config(**kw: Any) -> ModelConfig:
    """A 2-layer, 32-wide config; ``kw`` replaces any of its fields (or adds others)."""
    return ModelConfig(**{**BASE, **kw})


def build(cls: type, cfg: ModelConfig, seed: int = 0, **kw: Any) -> torch.nn.Module:
    """``cls(cfg)`` seeded, in float64 (property checks at 1e-10, not float rounding), eval mode."""
    torch.manual_seed(seed)
    return cls(cfg, **kw).double().eval()
