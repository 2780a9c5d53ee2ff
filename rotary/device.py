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
