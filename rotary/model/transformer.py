"""The Transformer stack: MLP, blocks (pre- or post-LN) and the backbone every head shares.

One backbone serves every variant described by ``ModelConfig``; the head (``rotary.model.heads``)
is the only thing that differs between a Llama-style decoder and a RoFormer encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rotary.errors import RotaryError
from rotary.model.alibi import alibi_mask, alibi_slopes
from rotary.model.attention import Attention, AttentionContext, CrossAttention, build_attention_mask
from rotary.model.cache import KVCache, SlotCache
from rotary.model.config import ModelConfig
from rotary.model.linear_attention import LinearAttention
from rotary.model.positions import make_absolute_positions
from rotary.model.rope import RotaryEmbedding, rope_factors
from rotary.ops import inductor
from rotary.ops.gemm import Linear
from rotary.ops.rms_norm import RMSNorm

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The config's norm over ``dim`` features (default d_model)."""
    dim = cfg.d_model if dim is None else dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.ff = cfg.ff_dim
        # SwiGLU's gate and up projections fused into one GEMM.
        self.up_proj = Linear(cfg.d_model, (2 if self.swiglu else 1) * self.ff, bias=cfg.bias)
        self.down_proj = Linear(self.ff, cfg.d_model, bias=cfg.bias)
        self.act = nn.SiLU() if self.swiglu else ACTIVATIONS[cfg.mlp]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)
        if self.swiglu:
            gate, up = h.split(self.ff, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down_proj(h)


class Block(nn.Module):
    """Self-attention and MLP, each with its norm; ``cross=True`` adds attention to an encoder's
    output between them (an encoder-decoder's decoder block)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn_norm = make_norm(cfg)
        self.attn = (LinearAttention if cfg.attention == "linear" else Attention)(cfg, layer_idx)
        self.cross_norm = make_norm(cfg) if cross else None
        self.cross_attn = CrossAttention(cfg, layer_idx) if cross else None
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.pre_norm:  # each norm's output only enters the next sublayer's projections
            for norm in (self.attn_norm, self.cross_norm, self.mlp_norm):
                if isinstance(norm, RMSNorm):
                    norm.feeds_matmul = True

    # Set by compile_blocks: training passes (grad enabled, no cache) run the compiled forward.
    compiled_forward: Callable[[Block, torch.Tensor, AttentionContext], torch.Tensor] | None = None

    @property
    def compiled(self) -> bool:
        return self.compiled_forward is not None

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.compiled_forward is not None and torch.is_grad_enabled() and ctx.kv_cache is None \
                and ctx.cross_kv is None:
            return self.compiled_forward(self, x, ctx)
        return self.eager_forward(x, ctx)

    def eager_forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.pre_norm:  # GPT-2 / Llama
            x = x + self.drop(self.attn(self.attn_norm(x), ctx))
            if self.cross_attn is not None:
                x = x + self.drop(self.cross_attn(self.cross_norm(x), ctx))
            return x + self.drop(self.mlp(self.mlp_norm(x)))
        # post-LN: the original Transformer, BERT and RoFormer
        x = self.attn_norm(x + self.drop(self.attn(x, ctx)))
        if self.cross_attn is not None:
            x = self.cross_norm(x + self.drop(self.cross_attn(x, ctx)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))



def compile_blocks(model: nn.Module) -> int:
    """Regional compilation: every :class:`Block` of ``model`` runs its training passes through
    Inductor (the elementwise work between the GEMMs, forward and backward, fused), the rest of
    the model stays eager. Evaluation and generation (no grad, or a KV cache) keep the eager
    forward. Returns the number of blocks.

    One compiled function per model, shared by its blocks: they share its graph (their weights
    are its inputs), so a model compiles once, not once per layer; and it is isolated, so the
    models a process compiled before cannot use up its recompile budget (``inductor.kernel``)."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    forward = inductor.kernel(Block.eager_forward, isolate=True)
    for block in blocks:
        block.compiled_forward = forward
    return len(blocks)


class Backbone(nn.Module):
    """Embeddings and blocks; returns hidden states (B, T, d_model). ``cross=True`` builds an
    encoder-decoder's decoder: every block also attends to the encoder output passed as ``memory``."""

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        e = cfg.embed_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, e)
        self.embed_types = nn.Embedding(cfg.type_vocab_size, e) if cfg.type_vocab_size else None
        self.embed_positions = make_absolute_positions(cfg)
        self.rope = RotaryEmbedding(cfg) if cfg.position == "rope" else None
        if cfg.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        else:
            self.alibi_slopes = None
        # Post-LN models normalise the embeddings (BERT, RoFormer; not Marian); pre-LN models the output.
        self.embed_norm = make_norm(cfg, e) if cfg.has_embed_norm else None
        self.embed_scale = float(cfg.d_model) ** 0.5 if cfg.scale_embeddings else None
        self.drop = nn.Dropout(cfg.dropout)
        # Narrower embeddings than the blocks (RoFormer's embedding_size, as in ALBERT): projected
        # after the embedding norm and dropout, where HF RoFormer's embeddings_project sits.
        self.embed_project = Linear(e, cfg.d_model, bias=True) if e != cfg.d_model else None
        self.layers = nn.ModuleList(Block(cfg, i, cross) for i in range(cfg.n_layer))
        self.final_norm = make_norm(cfg) if cfg.pre_norm else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None,
                cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``memory`` (B, S, d) is the encoder output a decoder attends to, ``memory_mask`` (B, S)
        marks its real tokens; ``cross_kv`` keeps the cross-attention keys/values between calls.
        ``document_ids`` (B, T) packs several sequences in a row: a token attends only to tokens
        of its own document (give ``position_ids`` that restart per document too)."""
        cfg = self.cfg
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        total = past + T
        if attention_mask is not None and attention_mask.shape != (B, total):
            raise RotaryError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but must be (batch, "
                f"cached + new tokens) = ({B}, {total})"
            )
        if kv_cache is not None:
            kv_cache.check_room(T)
        # Positions count real tokens only, so left padding does not shift them.
        all_positions = None
        if (
            position_ids is None
            and attention_mask is not None
            and not bool(attention_mask[:, 0].all())  # left padding
        ):
            all_positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, past + T)
            position_ids = all_positions[:, past:]  # (B, T)
        if position_ids is None:
            pos_for_embed = torch.arange(past, total, device=input_ids.device)
        else:
            pos_for_embed = position_ids

        x = self._embed(input_ids, token_type_ids, pos_for_embed, total)  # (B, T, d)
        ctx = AttentionContext()
        ctx.kv_cache = kv_cache
        if self.rope is not None:
            rotate_cached_keys = kv_cache is not None and kv_cache.stores_unrotated_keys
            cos, sin, key_cos, key_sin = self.rope.for_pass(
                total, position_ids, past, attention_mask, all_positions, rotate_cached_keys
            )
            ctx.cos, ctx.sin = rope_factors(cos, sin)
            ctx.rope_scale = self.rope.attention_scale
            if key_cos is not None:
                ctx.key_cos, ctx.key_sin = rope_factors(key_cos, key_sin)
        ctx.mask, ctx.is_causal = build_attention_mask(attention_mask, cfg.causal, past, T)
        if document_ids is not None:
            if kv_cache is not None:
                raise RotaryError("document_ids (packed sequences) is for full passes, not for a KV cache")
            same = document_ids[:, None, :, None] == document_ids[:, None, None, :]  # (B, 1, T, T)
            if ctx.mask is None:
                ctx.mask = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril() if ctx.is_causal else same
            ctx.mask, ctx.is_causal = ctx.mask & same, False
        if self.alibi_slopes is not None:
            # distances between positions (real tokens only under left padding), not indices
            key_positions = all_positions
            if key_positions is None:
                key_positions = position_ids if position_ids is not None and past == 0 else torch.arange(
                    total, device=input_ids.device)
            ctx.mask = alibi_mask(self.alibi_slopes, pos_for_embed, key_positions, ctx.mask, cfg.causal)
            ctx.is_causal = False
        if cfg.attention == "linear":
            ctx.key_padding = attention_mask
        ctx.memory, ctx.cross_kv = memory, cross_kv
        if memory_mask is not None:
            ctx.memory_mask = memory_mask.bool()[:, None, None, :]  # (B, 1, 1, S)

        x = self._blocks(x, ctx)
        if kv_cache is not None:
            kv_cache.advance(T)
        return x

    def _embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, positions: torch.Tensor,
               total: int) -> torch.Tensor:
        """Token, segment and absolute-position embeddings of a full pass: (B, T, d)."""
        x = self.token_embeddings(input_ids)  # (B, T, d)
        if self.embed_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.embed_types(token_type_ids)
        elif token_type_ids is not None and bool(token_type_ids.any()):
            raise RotaryError(
                "token_type_ids given but the model has no segment embeddings (type_vocab_size=0)"
            )
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions, total)
        return self._finish_embedding(x)

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, e)
        return x * self.embed_scale if self.embed_scale is not None else x

    def _finish_embedding(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.drop(x)
        if self.embed_project is not None:
            x = self.embed_project(x)  # (B, T, e) -> (B, T, d)
        return x

    def _blocks(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, ctx)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def forward_slots(self, input_ids: torch.Tensor, cache: SlotCache,
                      new_mask: torch.Tensor | None = None, empty: bool = False) -> torch.Tensor:
        """Hidden states (B, T, d) of new tokens appended to each row of a :class:`SlotCache`,
        row b from position ``cache.lengths[b]`` on; ``new_mask`` (B, T) marks right padding.

        No host syncs and no shape that depends on the lengths, so the decode step compiles to
        one graph (``rotary.infer.engine``); the caller checks the positions fit on the host and then
        sets ``cache.lengths``. Token types are not taken: generation is for causal LMs.
        ``empty`` says every row is empty and exactly as long as the cache (a prefill into a
        fresh cache without padding): then SDPA's own causal kernel replaces the mask.
        """
        positions = cache.positions(input_ids.shape[1])  # (B, T)
        x = self.token_embeddings(input_ids)  # (B, T, d)
        if self.embed_types is not None:
            x = x + self.embed_types(torch.zeros_like(input_ids))
        if self.embed_positions is not None:
            x = x + self.embed_positions.at(positions)
        x = self._finish_embedding(x)
        ctx = AttentionContext()
        ctx.kv_cache = cache
        if self.rope is not None and cache.stores_unrotated_keys:  # dynamic NTK: each row's base, every key
            lengths = cache.lengths + (new_mask.sum(-1) if new_mask is not None else input_ids.shape[1])  # (B,)
            cos, sin, key_cos, key_sin = self.rope.for_rows(positions, lengths, cache.key_positions)
            ctx.cos, ctx.sin = rope_factors(cos, sin)
            ctx.key_cos, ctx.key_sin = rope_factors(key_cos, key_sin)
        elif self.rope is not None:
            ctx.cos, ctx.sin = rope_factors(*self.rope.at(positions))
        if self.rope is not None:
            ctx.rope_scale = self.rope.attention_scale
        if cache.linear:
            ctx.key_padding = new_mask
        if empty and new_mask is None and input_ids.shape[1] == cache.max_len:
            ctx.is_causal = True
        else:
            ctx.mask = cache.mask(input_ids.shape[1], new_mask)
        if self.alibi_slopes is not None:
            ctx.mask = alibi_mask(self.alibi_slopes, positions, cache.key_positions, ctx.mask, causal=True)
            ctx.is_causal = False
        return self._blocks(x, ctx)
