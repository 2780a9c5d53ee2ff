"""The named model shapes (``model: {preset: tiny}``): plain ModelConfig values."""

from __future__ import annotations

import dataclasses

from rotary.config import closest_key_hint
from rotary.errors import RotaryError
from rotary.model.config import ModelConfig

_TRANSFORMER = ModelConfig(
    vocab_size=37000, max_seq_len=256, n_layer=6, n_decoder_layer=6, n_head=8, d_model=512, d_ff=2048,
    mlp="relu", norm="layernorm", pre_norm=False, bias=True, dropout=0.1, position="sinusoidal",
    sinusoidal_layout="halves", embed_norm=False, scale_embeddings=True, tie_embeddings=True,
    share_embeddings=True,
)
_TRANSFORMER_SMALL = dataclasses.replace(_TRANSFORMER, vocab_size=8000, max_seq_len=64, n_layer=3, n_decoder_layer=3,
                                         n_head=4, d_model=256, d_ff=1024)

# Named presets are plain ModelConfig values.
PRESETS: dict[str, ModelConfig] = {
    # RoFormer paper / HF junnyu/roformer_chinese_base: BERT-base shape, post-LN, GELU, LayerNorm.
    "roformer-base": ModelConfig(
        vocab_size=50000, max_seq_len=1536, n_layer=12, n_head=12, d_model=768, d_ff=3072,
        mlp="gelu", norm="layernorm", norm_eps=1e-12, pre_norm=False, bias=True, dropout=0.1,
        attention_dropout=0.1, causal=False, type_vocab_size=2, pad_token_id=0,
        tie_embeddings=True,
    ),
    "roformer-small": ModelConfig(
        vocab_size=50000, max_seq_len=1536, n_layer=6, n_head=6, d_model=384, d_ff=1536,
        mlp="gelu", norm="layernorm", norm_eps=1e-12, pre_norm=False, bias=True, dropout=0.1,
        attention_dropout=0.1, causal=False, type_vocab_size=2, pad_token_id=0,
    ),
    # A ~100M Llama-style decoder: GQA + SwiGLU + RMSNorm.
    "llama-small": ModelConfig(
        vocab_size=32768, max_seq_len=2048, n_layer=12, n_head=12, n_kv_head=4, d_model=768,
        d_ff=2048, mlp="swiglu", norm="rmsnorm", norm_eps=1e-5, tie_embeddings=True,
        rope_theta=10000.0,
    ),
    # The shape bench/train.py measures and the demo trains: 6 layers, d=384, 6 heads, 2 KV heads.
    "llama-mini": ModelConfig(
        vocab_size=8192, max_seq_len=256, n_layer=6, n_head=6, n_kv_head=2, d_model=384,
        d_ff=1024, mlp="swiglu", norm="rmsnorm",
    ),
    # Vaswani et al. (2017) Transformer-base: 6+6 post-LN layers, d=512, 8 heads, ReLU, sinusoidal
    # positions, embeddings scaled by sqrt(d) and shared by source, target and output (a joint vocabulary).
    # The table in Marian's / fairseq's layout (sines, then cosines), so a trained model converts to
    # transformers' MarianMTModel. "-rope" is the RoPE twin (the RoFormer paper's WMT14 comparison);
    # "-small" the CPU-sized pair: 3+3 layers, d=256, 4 heads.
    "transformer-base": _TRANSFORMER,
    "transformer-base-rope": dataclasses.replace(_TRANSFORMER, position="rope"),
    "transformer-small": _TRANSFORMER_SMALL,
    "transformer-small-rope": dataclasses.replace(_TRANSFORMER_SMALL, position="rope"),
    "tiny": ModelConfig(
        vocab_size=256, max_seq_len=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128,
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise RotaryError(f"unknown model preset '{name}'{closest_key_hint(name, PRESETS)}")
    return dataclasses.replace(PRESETS[name])
