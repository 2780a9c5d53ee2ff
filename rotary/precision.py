"""``precision: auto``: bf16 autocast where the hardware multiplies bf16 natively, else fp32.

Decided from machine facts, never from timings, so every process of a run (and a resumed run on
the same machine) makes the same choice and exact resume stays bitwise:

- CUDA: bf16 when the GPU supports it (``torch.cuda.is_bf16_supported``: Ampere and later);
- CPU: bf16 when it has AMX-BF16 or AVX512-BF16 (the ``amx_bf16`` / ``avx512_bf16`` flags of
  ``/proc/cpuinfo``): there a bf16 GEMM runs several times faster than fp32 (2,550 vs 420
  GFLOP/s on 2 Sapphire-Rapids-class cores); without them bf16 is emulated and slower;
- MPS and anything else: fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision to train in and why: ``auto`` resolved for ``device``, anything else kept."""
    if precision != "auto":
        return precision, "set by the recipe"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no bf16"
    if device.type == "cpu":
        found = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
        if found:
            return "bf16", f"auto: the CPU has {' and '.join(found)}"
        return "fp32", "auto: the CPU has neither amx_bf16 nor avx512_bf16"
    return "fp32", f"auto: fp32 on {device.type}"


def resolved(precision: str, device: torch.device) -> str:
    """Just the precision of :func:`resolve`."""
    return resolve(precision, device)[0]
