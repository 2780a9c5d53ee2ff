"""Self-attention for CPU training in bf16: PyTorch's flash forward, a compiled math backward.

On the CPU, SDPA's flash kernel runs its forward fast (about 1.4 ms per layer at batch 8, 6
heads, T = 256, head dim 64, bf16, 2 Xeon threads) but its backward about 7x slower (10 ms). The
backward as plain math — recompute P = exp(q k^T * scale - lse) from the forward's
log-sum-exp, then dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale,
dK = dS^T Q * scale — is five batched bf16 GEMMs (AMX) and a few elementwise passes. Compiled by
Inductor, which fuses those passes, it takes 4.6 ms; eager it would take 20 ms. So it is used
only compiled (``rotary.ops.inductor``: where a C++ compiler exists), and only in bf16: in fp32
its GEMMs have no AMX to run on (the trainer's fp32 step measured 692 ms with it, 667 without).

The math backward materialises one layer's (B, H, T, T) scores in fp32, so it is used only
while they stay small (``MAX_SCORE_BYTES``); longer sequences keep the flash backward. Grouped
K/V heads (GQA) are not expanded: query heads fold into rows, (B, KV, G*T, hd), so each K/V
head's gradient sums over its group inside the GEMMs.
"""

from __future__ import annotations

from typing import Any

import torch

from rotary.ops import inductor

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
MAX_SCORE_BYTES = 64 << 20  # fp32 (B, H, T, T) scores of one layer's backward


def _math_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   grad: torch.Tensor, scale: float, causal: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, T, hd = q.shape
    KV = k.shape[1]
    G = H // KV
    qg = q.reshape(B, KV, G * T, hd)  # (B, H, T, hd) -> (B, KV, G*T, hd): head h uses K/V head h // G
    gg = grad.reshape(B, KV, G * T, hd)
    s = (qg @ k.transpose(-1, -2)).float().view(B, KV, G, T, T)  # scores (B, KV, G, T, T)
    p = torch.exp(s * scale - lse.reshape(B, KV, G, T, 1))
    if causal:
        p = p.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), 0.0)
    dv = p.to(q.dtype).view(B, KV, G * T, T).transpose(-1, -2) @ gg  # (B, KV, T, hd)
    dp = (gg @ v.transpose(-1, -2)).float().view(B, KV, G, T, T)
    rowdot = (grad.float() * out.float()).sum(-1).reshape(B, KV, G, T, 1)  # rowsum(dO * O) = rowsum(P * dP)
    ds = (p * (dp - rowdot)).to(q.dtype).view(B, KV, G * T, T)
    dq = (ds @ k) * scale  # (B, KV, G*T, hd)
    dk = (ds.transpose(-1, -2) @ qg) * scale  # (B, KV, T, hd)
    return dq.view(B, H, T, hd), dk, dv


_compiled_backward = inductor.kernel(_math_backward)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        out, lse = _FLASH(q, k, v, 0.0, causal, scale=scale)  # GQA K/V heads broadcast by the kernel
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _compiled_backward(q, k, v, out, lse, grad.contiguous(), ctx.scale, ctx.causal)
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
