"""Which device to run on: ``auto`` prefers CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from rotary.errors import RotaryError


def cuda_device(local_rank: int) -> torch.device:
    """This process's GPU: NCCL needs one per process on a node, so more processes than GPUs is
    refused here rather than failing inside NCCL with 'invalid usage'."""
    count = torch.cuda.device_count()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if per_node > count:
        raise RotaryError(
            f"{per_node} processes on this node but {count} CUDA device(s): launch at most {count} "
            "per node (torchrun --nproc-per-node), or train on the CPU with --device cpu"
        )
    return torch.device("cuda", local_rank % count)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return cuda_device(local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RotaryError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RotaryError("device cuda requested but CUDA is not available: use --device cpu or auto")
        if device.index is None:
            device = cuda_device(local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RotaryError("device mps requested but MPS is not available: use --device cpu or auto")
    return device


def cpu_model() -> str:
    """The CPU's model name, recorded beside every measured figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger on 64-bit


def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of giving it back to the kernel.

    By default glibc serves blocks of 128 KB and more with a fresh ``mmap`` and unmaps them when
    freed, so every step's activations (MBs each) are page-faulted in anew: the demo model's
    bf16 step took ~20,000-27,000 minor page faults, and after this call ~500, 348 -> 328 ms
    on 2 Xeon threads. The cost is that the process keeps its peak heap. PyTorch's CPU
    allocator is plain malloc, so this is the setting Intel's guides get from jemalloc/tcmalloc
    via LD_PRELOAD. Process-wide; True if it was applied (Linux with glibc), else False.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # M_MMAP_THRESHOLD at its maximum: blocks up to 32 MB come from the heap; M_TRIM_THRESHOLD:
    # the heap's free top is not returned until it exceeds 1 GB (mallopt takes a C int)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
