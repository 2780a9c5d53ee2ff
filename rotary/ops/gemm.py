"""The GEMM path of fp32 linear layers on CPU: the BLAS (MKL) or oneDNN.

At the sizes rotary trains on a CPU, about three quarters of a training step is matrix
multiplication, so the GEMM library sets the pace. PyTorch sends fp32 ``F.linear`` to MKL, which
runs its AVX-512 kernels only on Intel CPUs: on an AMD EPYC with AVX-512 it takes its AVX2 code
and reaches about half the hardware's peak (~210 vs ~460 GFLOP/s measured on 2 Zen 5 cores),
while oneDNN, also inside every x86 PyTorch build, runs AVX-512 everywhere. ``linear`` here is
``F.linear`` with its forward and both backward GEMMs sent to oneDNN when the backend is
``onednn``; results equal ``F.linear``'s up to fp32 rounding (tested).

The backend is a per-process setting, ``auto`` by default: oneDNN on x86 CPUs whose BLAS is not
Intel's fast path (AMD or Hygon, no MKL, or MKL limited by ``MKL_ENABLE_INSTRUCTIONS``), the BLAS
elsewhere. It is decided by these facts, never by timing, so every process of a run (and a
resumed run) makes the same choice and exact resume stays bitwise. Override it with
``ROTARY_CPU_GEMM=blas|onednn|auto`` or ``set_cpu_gemm(...)``.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

from rotary.errors import RotaryError

BACKENDS = ("auto", "blas", "onednn")
_MKL_BELOW_AVX512 = {"SSE4_2", "AVX", "AVX2"}  # values of MKL_ENABLE_INSTRUCTIONS that cap MKL
_MKL_SLOW_VENDORS = ("AuthenticAMD", "HygonGenuine", "AMD")
# Below this many rows (decoding a few tokens) oneDNN's per-call cost outweighs its faster
# kernels; from 32 rows on it is 1.1-1.5x faster than MKL's AVX2 code (measured).
MIN_ROWS = 32
_setting: str | None = None
_resolved: str | None = None


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build can run oneDNN's fp32 linear (tried once, on a tiny input)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        matmul_onednn(torch.ones(1, 1), torch.ones(1, 1))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def _auto_backend() -> str:
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if not (x86 and onednn_available()):
        return "blas"
    mkl_capped = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").upper() in _MKL_BELOW_AVX512
    # MKL dispatches on the vendor: AMD and Hygon CPUs get its AVX2 code. An unknown vendor keeps
    # the BLAS, PyTorch's own default.
    slow_vendor = any(v in _cpu_vendor() for v in _MKL_SLOW_VENDORS)
    slowed = slow_vendor or not torch.backends.mkl.is_available()
    return "onednn" if slowed or mkl_capped else "blas"


def set_cpu_gemm(backend: str) -> None:
    """Choose how fp32 linear layers multiply on CPU: ``auto``, ``blas`` or ``onednn``."""
    global _setting, _resolved
    if backend not in BACKENDS:
        raise RotaryError(
            f"unknown CPU GEMM backend '{backend}': choose one of {', '.join(BACKENDS)}"
        )
    if backend == "onednn" and not onednn_available():
        raise RotaryError(
            "CPU GEMM backend 'onednn' needs a PyTorch built with oneDNN (mkldnn); use 'blas'"
        )
    _setting, _resolved = backend, None


def cpu_gemm() -> str:
    """The backend in use: ``blas`` or ``onednn`` (``auto`` resolved for this machine)."""
    global _resolved
    if _resolved is None:
        if _setting is None:
            try:
                set_cpu_gemm(os.environ.get("ROTARY_CPU_GEMM", "auto").strip().lower() or "auto")
            except RotaryError as e:
                raise RotaryError(f"environment variable ROTARY_CPU_GEMM: {e}") from None
        _resolved = _auto_backend() if _setting == "auto" else _setting
    return _resolved


def matmul_onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + b`` by oneDNN; ``w`` may be a transposed view (oneDNN reads it in place)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _weight_grad_is_transposed(grad: torch.Tensor, x: torch.Tensor) -> bool:
    # oneDNN reads a transposed weight in place but is slow on a transposed source, so the
    # smaller operand is copied transposed (the fastest layout measured); with x the smaller
    # one, the product comes out as (K, N) and is returned transposed.
    return grad.shape[1] > x.shape[1]


# The three GEMMs of a linear layer as custom ops: opaque to torch.compile, which keeps them (and
# fuses what lies around them) instead of sending the GEMMs back to the default BLAS.
@torch.library.custom_op("rotary::onednn_linear", mutates_args=(), device_types="cpu")
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return matmul_onednn(x, weight, bias)


@_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("rotary::onednn_matmul", mutates_args=(), device_types="cpu")
def _matmul_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``b``: a linear layer's input gradient."""
    return matmul_onednn(a, b.t())


@_matmul_op.register_fake
def _(a, b):
    return a.new_empty((*a.shape[:-1], b.shape[1]))


@torch.library.custom_op("rotary::onednn_weight_grad", mutates_args=(), device_types="cpu")
def _weight_grad_op(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad.T @ x`` for 2-D ``grad`` (M, N) and ``x`` (M, K): a linear layer's weight gradient."""
    if _weight_grad_is_transposed(grad, x):
        return matmul_onednn(x.t().contiguous(), grad.t()).t()
    return matmul_onednn(grad.t().contiguous(), x.t())


@_weight_grad_op.register_fake
def _(grad, x):
    n, k = grad.shape[1], x.shape[1]
    return x.new_empty((k, n)).t() if _weight_grad_is_transposed(grad, x) else x.new_empty((n, k))


def _setup_linear(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    need_x, need_w = ctx.needs_input_grad[:2]
    # keep only what backward reads: a frozen weight needs no saved input
    ctx.save_for_backward(x if need_w else None, weight if need_x else None)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad = grad.contiguous()
    grad2d = grad.reshape(-1, grad.shape[-1])
    x2d = x.reshape(-1, x.shape[-1]) if need_w else None
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph (a gradient penalty, say): differentiable ops, so double backward is right
        grad_x = grad @ weight if need_x else None
        grad_w = grad2d.t() @ x2d if need_w else None
    else:
        grad_x = _matmul_op(grad, weight) if need_x else None
        grad_w = _weight_grad_op(grad2d, x2d) if need_w else None
    grad_b = grad2d.sum(0) if need_b and ctx.has_bias else None
    return grad_x, grad_w, grad_b


_linear_op.register_autograd(_linear_backward, setup_context=_setup_linear)


def _onednn_context() -> bool:
    """Plain eager mode or torch.compile; not TorchScript tracing, torch.func transforms or
    forward-mode AD, which have no rules for the oneDNN ops and get F.linear's."""
    if torch.compiler.is_compiling():
        return True
    return not (
        torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
        or torch.autograd.forward_ad._current_level >= 0
    )


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` goes to oneDNN: the ``onednn`` backend, fp32 on CPU, at least
    ``MIN_ROWS`` rows, outside autocast and the transforms of ``_onednn_context``."""
    return (
        isinstance(x, torch.Tensor)  # not an fx Proxy being traced
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.numel() > 0
        and x.numel() >= MIN_ROWS * x.shape[-1] > 0
        and not torch.is_autocast_enabled("cpu")
        and cpu_gemm() == "onednn"
        and _onednn_context()
    )


def matmul_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``b`` through the GEMM backend chosen for this machine, for code that
    computes its own gradients (the oneDNN path has no autograd formula)."""
    if uses_onednn(a, b):
        return _matmul_op(a, b)
    return a @ b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through the GEMM backend chosen for this machine, with its gradients."""
    if uses_onednn(x, weight):
        return _linear_op(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose GEMMs follow ``cpu_gemm()``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cpu_gemm()  # resolved now, in plain Python, not first inside a torch.compile trace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
