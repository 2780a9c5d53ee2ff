"""Linear attention with RoPE (RoFormer section 3.3, eq. 19).

Softmax scores are replaced by a positive feature map phi(x) = elu(x) + 1 (Katharopoulos et al.
2020), and RoPE rotates the *mapped* queries and keys in the numerator only:

    y_m = sum_n (R_m phi(q_m))^T (R_n phi(k_n)) v_n  /  sum_n phi(q_m)^T phi(k_n)

The denominator stays unrotated so it stays positive (the rotated products can be negative;
the paper keeps them in the numerator for this reason). There is no 1/sqrt(d) and no softmax,
so attention dropout has nothing to drop (the config refuses it).

Causal attention runs in chunks: inside a chunk of C tokens the C x C products are masked
directly, and the earlier chunks arrive through a running state S = sum_n (R_n phi(k_n)) v_n^T
(hd x hd per KV head) and z = sum_n phi(k_n): O(T C hd + T hd^2) time and no T x T matrix. The
same state is the cache for decoding (``KVCache`` and the decode engine's ``SlotCache`` hold it
per layer and row), so a token generated one at a time sees exactly the sums a full forward pass
computes.

Everything runs in fp32 (fp64 for an fp64 model), even under bf16 autocast: the state is a sum over the whole prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rotary.model.attention import Attention, AttentionContext
from rotary.model.config import ModelConfig
from rotary.model.rope import rotate

CHUNK = 64  # tokens per chunk of the causal scan
EPS = 1e-6  # keeps a row whose every key is padding finite


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def causal_numerator(rq: torch.Tensor, rk: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None,
                     chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_{n<=m} (rq_m . rk_n) v_n for every m, continuing from ``state``; and the new state.

    rq (B, KV, G, T, hd) are the rotated query features grouped by KV head, rk and v (B, KV, T, hd),
    ``state`` (B, KV, hd, hd) or None. Returns (B, KV, G, T, hd) and (B, KV, hd, hd).
    """
    B, KV, G, T, hd = rq.shape
    C = min(chunk, T)
    N = -(-T // C)  # chunks
    pad = N * C - T
    if pad:  # zero keys and values add nothing; the padded queries are cut off below
        rq = F.pad(rq, (0, 0, 0, pad))
        rk, v = F.pad(rk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    rq = rq.view(B, KV, G, N, C, hd)
    rk = rk.view(B, KV, 1, N, C, hd)
    v = v.view(B, KV, 1, N, C, v.shape[-1])
    within = torch.ones(C, C, dtype=torch.bool, device=rq.device).tril()
    scores = (rq @ rk.transpose(-1, -2)).masked_fill(~within, 0.0)  # (B, KV, G, N, C, C)
    out = scores @ v  # (B, KV, G, N, C, hd): the chunk's own keys
    per_chunk = rk.transpose(-1, -2) @ v  # (B, KV, 1, N, hd, hd)
    running = per_chunk.cumsum(dim=3)
    before = running - per_chunk  # the sum over earlier chunks only
    if state is not None:
        before = before + state[:, :, None, None]
    out = out + rq @ before  # (B, KV, G, N, C, hd): earlier chunks through the state
    new_state = running[:, :, 0, -1] + (state if state is not None else 0.0)  # (B, KV, hd, hd)
    return out.view(B, KV, G, N * C, -1)[:, :, :, :T], new_state


class LinearAttention(Attention):
    """Same projections as :class:`Attention` (so checkpoints, Muon's roles and FLOP counts keep
    their names); only the mixing of values differs."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        hd, KV = self.head_dim, self.n_kv_head
        G = self.n_head // KV
        q, k, v = self.qkv_proj(x).split([self.n_head * hd, KV * hd, KV * hd], dim=-1)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # never below fp32
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = q.to(work).view(B, T, KV, G, hd).permute(0, 2, 3, 1, 4)  # (B, KV, G, T, hd)
            k = k.to(work).view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
            v = v.to(work).view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
            fq, fk = feature_map(q), feature_map(k)
            if ctx.key_padding is not None:  # padded keys contribute nothing to either sum
                real = ctx.key_padding[:, -T:].to(fk.dtype)[:, None, :, None]  # (B, 1, T, 1)
                fk = fk * real
            if self.rope:
                # (T, r) or (B, 1, T, r); YaRN's temperature is a softmax notion: without a softmax it
                # would only scale the numerator (by its square), so it is taken out again
                cos, sin = ctx.cos.to(work) / ctx.rope_scale, ctx.sin.to(work) / ctx.rope_scale
                rq = rotate(fq, cos[:, None] if cos.dim() == 4 else cos, sin[:, None] if sin.dim() == 4 else sin)
                rk = rotate(fk, cos, sin)
            else:
                rq, rk = fq, fk
            cache = ctx.kv_cache
            state, key_sum = cache.linear_state(self.layer_idx) if cache is not None else (None, None)
            if self.causal:
                num, state = causal_numerator(rq, rk, v, state)  # (B, KV, G, T, hd)
                sums = fk.cumsum(dim=2)  # (B, KV, T, hd)
                if key_sum is not None:
                    sums = sums + key_sum[:, :, None]
                key_sum = sums[:, :, -1]
                den = (fq * sums[:, :, None]).sum(-1)  # (B, KV, G, T)
            else:  # an encoder: every query sees every key
                kv = rk.transpose(-1, -2) @ v  # (B, KV, hd, hd)
                state = kv if state is None else state + kv
                total = fk.sum(dim=2)  # (B, KV, hd)
                key_sum = total if key_sum is None else key_sum + total
                num = rq @ state[:, :, None]  # (B, KV, G, T, hd)
                den = (fq * key_sum[:, :, None, None]).sum(-1)  # (B, KV, G, T)
            if cache is not None:
                cache.set_linear_state(self.layer_idx, state, key_sum)
            y = num / (den[..., None] + EPS)  # (B, KV, G, T, hd)
            y = y.reshape(B, self.n_head, T, hd).transpose(1, 2).reshape(B, T, self.n_head * hd)
        return self.o_proj(y.to(x.dtype))
