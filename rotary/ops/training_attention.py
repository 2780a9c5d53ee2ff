"""Self-attention for CPU training in bf16: plain math in query tiles, compiled by Inductor.

On the CPU, SDPA's flash kernel runs its backward several times slower than its forward. The
same attention as plain math — S = q k^T * scale, P = softmax(S), O = P V forward; from the
log-sum-exp, dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale, dK = dS^T Q *
scale backward — is batched bf16 GEMMs (AMX, or AVX512-BF16) and a few elementwise passes that
Inductor fuses. Eager, those passes would cost more than the GEMMs, so the path is used only
compiled (``rotary.ops.inductor``: where a C++ compiler exists), and only in bf16 (in fp32 the
math backward made the trainer's step slower: 692 vs 667 ms with flash).

A causal mask hides half of the T x T scores, so the queries go in tiles of rows
(:func:`query_tiles`): tile [lo, hi) multiplies only with keys [0, hi), which skips most of
the hidden half (n tiles skip (n - 1) / 2n of the scores' GEMM and elementwise work: 37.5% at 4),
forward and backward. Measured per layer, fwd + bwd, at batch 8, T = 256, 6 heads on 2 GQA K/V
heads, head dim 64, 2 AMD EPYC (Zen 4, AVX512-BF16) cores: flash forward + untiled math backward
19 ms, 4 tiles both ways 9 ms; non-causal (one tile), the math forward beats flash's too (13.7
vs 16.4 ms).

Each tile's scores are materialised in fp32, so the path is used only while one layer's whole
(B, H, T, T) would stay small (``MAX_SCORE_BYTES``); longer sequences keep SDPA. Grouped K/V
heads (GQA) are not expanded: a tile's query heads fold into rows, (B, KV, G*n, hd), so each
K/V head's gradient sums over its group inside the GEMMs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rotary.ops import inductor

MAX_SCORE_BYTES = 64 << 20  # fp32 (B, H, T, T) scores of one layer
# Every tile is its own set of kernels for Inductor to build: on 2 cores the demo model's first
# (cold-cache) step took 19 s untiled, 25 s with 2 tiles, 31-35 s with 4 and 42-45 s with 8, for
# step times within noise of each other at T = 256. So tiles are at least 64 rows (4 at T = 256),
# and more only pay where the scores are large (T = 512: 8 tiles 19 ms per layer, 4 tiles 25 ms).
MAX_TILES = 8
MIN_TILE_ROWS = 64


def query_tiles(T: int, causal: bool) -> list[tuple[int, int, int]]:
    """``(lo, hi, keys)`` per tile of query rows [lo, hi): the keys [0, keys) its rows can see.
    Without a causal mask every row sees every key, so tiling would save nothing: one tile."""
    n = max(1, min(MAX_TILES, T // MIN_TILE_ROWS)) if causal else 1
    edges = [T * i // n for i in range(n + 1)]
    return [(lo, hi, hi if causal else T) for lo, hi in zip(edges, edges[1:])]


def _hidden(lo: int, hi: int, keys: int, device: torch.device) -> torch.Tensor:
    """(n, keys) True where query row lo + i may not see key j (j > lo + i)."""
    return torch.arange(keys, device=device) > torch.arange(lo, hi, device=device)[:, None]


def _math_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, T, hd), log-sum-exp of the scaled scores (B, H, T) in fp32)."""
    B, H, T, hd = q.shape
    KV = k.shape[1]
    G = H // KV
    q5 = q.reshape(B, KV, G, T, hd)  # head h uses K/V head h // G
    outs, lses = [], []
    for lo, hi, c in query_tiles(T, causal):
        n = hi - lo
        qi = q5[:, :, :, lo:hi].reshape(B, KV, G * n, hd)  # the tile's rows of the group's heads
        s = (qi @ k[:, :, :c].transpose(-1, -2)).float().view(B, KV, G, n, c) * scale
        if causal:
            s = s.masked_fill(_hidden(lo, hi, c, q.device), float("-inf"))
        top = s.amax(-1, keepdim=True)
        e = torch.exp(s - top)
        total = e.sum(-1, keepdim=True)
        lses.append((top + total.log()).squeeze(-1))  # (B, KV, G, n)
        p = (e / total).to(q.dtype).view(B, KV, G * n, c)
        outs.append((p @ v[:, :, :c]).view(B, KV, G, n, hd))
    return torch.cat(outs, 3).view(B, H, T, hd), torch.cat(lses, 3).view(B, H, T)


def _math_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   grad: torch.Tensor, scale: float, causal: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, T, hd = q.shape
    KV = k.shape[1]
    G = H // KV
    q5, g5 = q.reshape(B, KV, G, T, hd), grad.reshape(B, KV, G, T, hd)
    lse5 = lse.reshape(B, KV, G, T)
    rowdot = (grad.float() * out.float()).sum(-1).reshape(B, KV, G, T)  # rowsum(dO * O) = rowsum(P * dP)
    dqs, dk, dv = [], 0.0, 0.0
    for lo, hi, c in query_tiles(T, causal):
        n = hi - lo
        qi = q5[:, :, :, lo:hi].reshape(B, KV, G * n, hd)
        gi = g5[:, :, :, lo:hi].reshape(B, KV, G * n, hd)
        kc, vc = k[:, :, :c], v[:, :, :c]
        s = (qi @ kc.transpose(-1, -2)).float().view(B, KV, G, n, c)
        p = torch.exp(s * scale - lse5[..., lo:hi, None])
        if causal:
            p = p.masked_fill(_hidden(lo, hi, c, q.device), 0.0)
        dp = (gi @ vc.transpose(-1, -2)).float().view(B, KV, G, n, c)
        ds = (p * (dp - rowdot[..., lo:hi, None])).to(q.dtype).view(B, KV, G * n, c)
        dqs.append(((ds @ kc) * scale).view(B, KV, G, n, hd))
        # keys [0, c) get this tile's share, summed over tiles in fp32 (rows past c get nothing)
        dv = dv + F.pad((p.to(q.dtype).view(B, KV, G * n, c).transpose(-1, -2) @ gi).float(), (0, 0, 0, T - c))
        dk = dk + F.pad((ds.transpose(-1, -2) @ qi).float(), (0, 0, 0, T - c))
    dq = torch.cat(dqs, 3).view(B, H, T, hd)
    return dq, (dk * scale).to(q.dtype), dv.to(q.dtype)


_compiled_forward = inductor.kernel(_math_forward)
_compiled_backward = inductor.kernel(_math_backward)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        out, lse = _compiled_forward(q, k, v, scale, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _compiled_backward(q, k, v, out, lse, grad, ctx.scale, ctx.causal)
        return dq, dk, dv, None


def applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`attention` serves q (B, H, T, hd), k (B, KV, T, hd): CPU, bf16, a backward
    to come, the scores small enough, kernels compilable here."""
    B, H, T, _ = q.shape
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled() and q.requires_grad
            and k.shape[2] == T and H % k.shape[1] == 0 and B * H * T * T * 4 <= MAX_SCORE_BYTES
            and inductor.active())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) [+ causal mask]) v, (B, H, T, hd), for q (B, H, T, hd) and k, v
    (B, KV, T, hd), with no other mask and no dropout; callers check :func:`applies` first."""
    return _Attention.apply(q, k, v, causal)
