"""Shared pieces of the compiled-path tests: a call counter and the two tiny language models."""

from __future__ import annotations

from typing import Any

from rotary import CausalLM, MaskedLM, ModelConfig


def count_calls(monkeypatch, module: Any, name: str) -> dict[str, int]:
    """Replace ``module.name`` by a wrapper that counts its calls in the returned ``{"n": ...}``."""
    calls = {"n": 0}
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def tiny_lm(kind: str, **cfg: Any):
    """A 2-layer causal LM with GQA (``causal``) or a post-norm RoFormer MLM (``masked``:
    LayerNorm, GELU, no causal mask)."""
    if kind == "causal":
        return CausalLM(ModelConfig(**cfg, n_layer=2, n_head=4, n_kv_head=2))
    return MaskedLM(ModelConfig(**cfg, n_layer=2, n_head=4, causal=False, pre_norm=False, norm="layernorm",
                                mlp="gelu"))
