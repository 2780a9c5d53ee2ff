"""Weight-only int8 linear layers, for decoding on CPU.

At batch 1 a decode step reads every weight once and does two FLOPs per weight read: its time is
the weights' bytes over memory bandwidth, so bytes per weight are the lever. Here a weight is
stored as int8 with one scale per output channel (symmetric: ``scale = max|w_row| / 127``), a
quarter of fp32's bytes; activations, norms, attention and the KV cache keep their precision.

The product runs in PyTorch's own weight-only kernel, ``aten._weight_int8pack_mm``, which on
AVX-512 CPUs (the ``cpu_capability`` PyTorch reports) has a vectorised path for bf16 activations
only: the rows are rounded to bf16 for the product and the output returns to the activations'
dtype. That kernel is a GEMV at heart (its time grows with the rows), so inputs of more than
``KERNEL_MAX_ROWS`` rows (a prompt's prefill, an evaluation) multiply the dequantized weight by
a GEMM instead: in bf16 where the CPU multiplies bf16 natively (AMX / AVX512-BF16: the same
rounding of the activations as the kernel's, so ``rotary eval --quantize int8`` scores what
decoding computes), else in the activations' dtype through ``rotary.ops.gemm``. Without
AVX-512 every call takes that path: the weights are still a quarter of the memory, but decoding
is slower than fp32 (``quantize`` warns). torchao 0.18's int8 weight-only tensor was read and
not used: per call it casts the int8 weight to the activations' dtype and calls ``mm`` (this
module's fallback), leaving speed to Inductor's pattern matching, for a new dependency.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from rotary.errors import RotaryError, RotaryWarning
from rotary.ops.gemm import linear
from rotary.precision import BF16_CPU_FLAGS, cpu_flags

MODES = ("int8",)
# The kernel's time grows linearly with the rows, a GEMM's does not: on 2 Xeon (AMX) cores the
# kernel at 1 row is 2.6x faster than fp32's GEMM for a 384 x 8192 weight, at 16 rows about even.
KERNEL_MAX_ROWS = 16


@functools.cache
def has_int8_kernel() -> bool:
    """Whether this process's CPU kernels are the AVX-512 ones (where the int8 kernel is vectorised)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (out, in) int8 and (out,) fp32 scales, ``weight ~= q * scale``."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a finite scale
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with per-output-channel scales (inference only)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        # the kernel wants its scales in the activations' dtype: bf16 for its fast path
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # machine facts, fixed here: constants to torch.compile
        self.use_kernel = has_int8_kernel()
        self.bf16_gemm = any(f in cpu_flags() for f in BF16_CPU_FLAGS)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        q, scales = quantize_weight(layer.weight)
        return cls(q, scales.to(layer.weight.device), layer.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (fp32), for code that reads a layer's weight (the fused loss)."""
        return self.qweight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        on_cpu = x.device.type == "cpu"
        if on_cpu and rows <= KERNEL_MAX_ROWS and self.use_kernel:
            x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (rows, in)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales_bf16)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        elif on_cpu and self.bf16_gemm:
            w = self.qweight.to(torch.bfloat16) * self.scales_bf16[:, None]
            y = linear(x.to(torch.bfloat16), w).to(x.dtype)
        else:
            y = linear(x, self.weight.to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Replace every linear layer of ``model`` (in place) by its weight-only quantized twin and
    return the model, in eval mode and frozen: a quantized model serves, it does not train.
    Embeddings stay as they are (a lookup reads one row per token)."""
    if mode not in MODES:
        raise RotaryError(f"unknown quantization '{mode}': choose one of {', '.join(MODES)}")
    if is_quantized(model):
        raise RotaryError("this model is quantized already")
    on_cpu = all(t.device.type == "cpu" for t in model.parameters())
    if on_cpu and not has_int8_kernel():
        warnings.warn(f"this CPU runs PyTorch's {torch.backends.cpu.get_cpu_capability()} kernels, not AVX-512: "
                      "int8 weights take a quarter of the memory but decode slower than fp32 here", RotaryWarning,
                      stacklevel=2)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    model.requires_grad_(False)
    return model.eval()


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
