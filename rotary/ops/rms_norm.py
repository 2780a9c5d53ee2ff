"""RMSNorm with a fused CPU path.

``nn.RMSNorm`` on the CPU is composed of pow/mean/rsqrt/mul and autograd differentiates each of
them, which costs about twice a LayerNorm. PyTorch has a fused RMSNorm forward kernel for the
CPU (``aten::_fused_rms_norm``, the one ``F.rms_norm`` uses on CUDA) but no fused backward there,
so this module pairs that kernel with a hand-written backward. Elsewhere (CUDA, MPS, mixed
dtypes, a missing kernel) it is plain ``nn.RMSNorm``; parameters and state dict are the same.
"""

from __future__ import annotations

import torch
from torch import nn

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


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (_FUSED_FORWARD is None or x.device.type != "cpu" or w is None or self.eps is None
                or x.dtype != w.dtype or len(self.normalized_shape) != 1):
            return super().forward(x)
        return _RMSNormCPU.apply(x, w, self.eps)
