"""RMSNorm with a fused CPU path.

``nn.RMSNorm`` on the CPU is composed of pow/mean/rsqrt/mul and autograd differentiates each of
them, which costs about twice a LayerNorm. PyTorch has a fused RMSNorm forward kernel for the
CPU (``aten::_fused_rms_norm``, the one ``F.rms_norm`` uses on CUDA) but no fused backward there,
so this module pairs that kernel with a hand-written backward. Elsewhere (CUDA, MPS, mixed
dtypes, a missing kernel) it is plain ``nn.RMSNorm``; parameters and state dict are the same.

A norm whose output only enters linear layers (``feeds_matmul``: a pre-norm block's) has a
third path for bf16 autocast training on the CPU: Inductor-compiled forward and backward
(``rotary.ops.inductor``) whose output is already bf16, which autocast would otherwise make with
a cast of its own, and whose backward is one pass instead of six ops. The values are the same
(the fp32 result rounded to bf16, as autocast rounds it); the demo step: 339 -> 318 ms.
"""

from __future__ import annotations

import torch
from torch import nn

from rotary.ops import inductor

_FUSED_FORWARD = getattr(torch.ops.aten, "_fused_rms_norm", None)


class _RMSNormCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):  # autograd API
        y, rstd = _FUSED_FORWARD(x, [x.shape[-1]], weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        # y = xhat * w with xhat = x * rstd, rstd = (mean(x^2) + eps)^-1/2:
        # dx = rstd * (g*w - xhat * mean(g*w*xhat)),  dw = sum over rows of g * xhat
        x, weight, rstd = ctx.saved_tensors
        xhat = x * rstd
        gw = grad * weight
        dot = (gw * xhat).mean(-1, keepdim=True)
        dw = (grad * xhat).reshape(-1, x.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        need_x = ctx.needs_input_grad[0]
        dx = torch.addcmul(gw, xhat, dot, value=-1.0).mul_(rstd) if need_x else None
        return dx, dw, None


def _forward_to_bf16(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    return (x * rstd * weight).to(torch.bfloat16), rstd


def _backward_from_bf16(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                        grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xhat = x * rstd
    g = grad.float()
    gw = g * weight
    dx = (gw - xhat * (gw * xhat).mean(-1, keepdim=True)) * rstd  # as in _RMSNormCPU.backward
    return dx, (g * xhat).reshape(-1, x.shape[-1]).sum(0)


_compiled_forward = inductor.kernel(_forward_to_bf16)
_compiled_backward = inductor.kernel(_backward_from_bf16)


class _RMSNormToBF16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):  # autograd API
        y, rstd = _compiled_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _compiled_backward(x, weight, rstd, grad)
        return dx, dw, None


class RMSNorm(nn.RMSNorm):
    feeds_matmul = False  # True: the output only enters linear layers (set by pre-norm blocks)

    def _to_bf16(self, x: torch.Tensor) -> bool:
        """Whether this pass may hand its output on in bf16 (autocast training on the CPU)."""
        w = self.weight
        return (self.feeds_matmul and x.device.type == "cpu" and w is not None and self.eps is not None
                and x.dtype == w.dtype == torch.float32 and len(self.normalized_shape) == 1
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad) and inductor.active())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self._to_bf16(x):
            return _RMSNormToBF16.apply(x, w, self.eps)
        if (_FUSED_FORWARD is None or x.device.type != "cpu" or w is None or self.eps is None
                or x.dtype != w.dtype or len(self.normalized_shape) != 1):
            return super().forward(x)
        return _RMSNormCPU.apply(x, w, self.eps)
