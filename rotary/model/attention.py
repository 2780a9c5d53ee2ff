"""Multi-head attention with RoPE, GQA/MQA and padding masks (the caches it reads and writes
during decoding are ``rotary.model.cache``'s).

Scores go through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where
the device has them); grouped K/V heads are broadcast by SDPA itself (``enable_gqa``) rather
than materialised with ``repeat_interleave``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rotary.model.cache import KVCache
from rotary.model.config import ModelConfig
from rotary.model.rope import rotate
from rotary.ops import training_attention
from rotary.ops.gemm import Linear


class AttentionContext:
    """What every layer's attention needs for one forward pass, computed once by the backbone.

    Per-pass state that is not a weight joins here (an additive position bias, an encoder's
    keys/values for cross-attention), so layers keep one signature.
    """

    __slots__ = ("cos", "sin", "key_cos", "key_sin", "mask", "is_causal", "kv_cache", "key_padding", "memory",
                 "memory_mask", "cross_kv", "rope_scale")

    def __init__(self) -> None:
        # RoPE for the new tokens, as rope_factors gives them (cos, signed sin), once per pass
        self.cos = self.sin = None
        # RoPE for all keys so far, set when the cache holds unrotated keys (dynamic NTK)
        self.key_cos = self.key_sin = None
        # bool (B, 1, T, S): True = may attend; or float (B|1, H, T, S) added to the scores (ALiBi)
        self.mask: torch.Tensor | None = None
        self.is_causal = False
        self.kv_cache: KVCache | None = None
        self.key_padding: torch.Tensor | None = None  # (B, S) 1 = real token; linear attention's mask
        # an encoder-decoder's decoder: the encoder's output (B, S, d), its mask (B, 1, 1, S) bool, and
        # the cross-attention keys/values per layer, computed once per source (None: not kept)
        self.memory: torch.Tensor | None = None
        self.memory_mask: torch.Tensor | None = None
        self.cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.rope_scale = 1.0  # YaRN's temperature, folded into cos/sin (linear attention takes it out)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.rope = cfg.position == "rope"
        self.rotary_value = cfg.rotary_value
        self.dropout = cfg.attention_dropout
        # One fused projection: a single larger GEMM is faster than three small ones.
        qkv_width = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv_proj = Linear(cfg.d_model, qkv_width, bias=cfg.bias)
        self.o_proj = Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv_proj(x).split(
            [self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1
        )
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, KV, T, hd)
        cache = ctx.kv_cache
        if self.rope:
            q = rotate(q, ctx.cos, ctx.sin)
            if self.rotary_value:  # RoFormer's option: the values carry their position too
                v = rotate(v, ctx.cos, ctx.sin)
        if ctx.key_cos is not None:
            # the cache holds unrotated keys: store, then rotate every key with this pass's base
            k, v = cache.update(self.layer_idx, k, v)  # (B, KV, S, hd)
            k = rotate(k, ctx.key_cos, ctx.key_sin)
        else:
            if self.rope:
                k = rotate(k, ctx.cos, ctx.sin)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, KV, S, hd)
        mask = ctx.mask
        dropout = self.dropout if self.training else 0.0
        if mask is None and cache is None and dropout == 0.0 and training_attention.applies(q, k):
            # bf16 training on the CPU: compiled math attention in causal query tiles
            y = training_attention.attention(q, k, v, ctx.is_causal)  # (B, H, T, hd)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * hd))  # (B, T, d)
        if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # SDPA wants an additive mask in the scores' dtype (bf16 autocast)
        y = F.scaled_dot_product_attention(  # (B, H, T, hd)
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=ctx.is_causal,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * hd))  # (B, T, d)


def build_attention_mask(
    key_padding: torch.Tensor | None, causal: bool, past: int, new: int
) -> tuple[torch.Tensor | None, bool]:
    """The SDPA mask for ``new`` queries after ``past`` cached positions, and whether SDPA's own
    ``is_causal`` can stand in for it (only when nothing is cached and nothing is padded).

    ``key_padding`` is (B, past + new), 1/True for real tokens. Every query may always attend to
    itself, so rows of padding never turn into NaNs.
    """
    total = past + new
    if key_padding is None:
        if not causal or new == 1:
            return None, False  # full attention, or one new token that sees everything
        if past == 0:
            return None, True
    device = key_padding.device if key_padding is not None else None
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    if causal:
        allowed = k_pos <= q_pos  # (T, S)
    else:
        allowed = torch.ones(new, total, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if key_padding is not None:
        allowed = allowed & key_padding.bool()[:, None, None, :]
    allowed = allowed | (k_pos == q_pos)[None, None]
    return allowed, False


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention (Vaswani et al.): queries from the decoder, keys and values
    from the encoder's output.

    No rotary positions here, whatever the config's ``position``: queries and keys live in
    different sequences, so a relative position between them means nothing (RoFormer rotates
    self-attention only). Keys and values depend on the source alone, so during decoding they are
    computed once per source and kept in ``ctx.cross_kv``.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.attention_dropout
        self.q_proj = Linear(cfg.d_model, self.n_head * self.head_dim, bias=cfg.bias)
        self.kv_proj = Linear(cfg.d_model, 2 * self.n_kv_head * self.head_dim, bias=cfg.bias)  # [k | v]
        self.o_proj = Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.bias)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = memory.shape
        k, v = self.kv_proj(memory).view(B, S, 2, self.n_kv_head, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)  # (B, KV, S, hd) each

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        kept = ctx.cross_kv.get(self.layer_idx) if ctx.cross_kv is not None else None
        if kept is None:
            kept = self.keys_values(ctx.memory)
            if ctx.cross_kv is not None:
                ctx.cross_kv[self.layer_idx] = kept
        k, v = kept
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.memory_mask,  # (B, H, T, hd)
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_head != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # (B, T, d)
