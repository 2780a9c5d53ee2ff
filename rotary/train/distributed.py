"""Distributed training on torch.distributed: detection, process group, DDP/FSDP wrapping.

``torchrun`` (one or many nodes) and ``accelerate launch`` both export RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; rotary reads them, so one entry point serves a laptop
and a cluster. Nothing here spawns processes or syncs gradients by hand.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from rotary.device import pick_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0




def init_distributed(device_name: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when launched by torchrun/accelerate; otherwise run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if "WORLD_SIZE" not in os.environ:
        _warn_if_launcher_asked_for_more()
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _die_with_launcher()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _die_with_launcher() -> None:
    """Under torchrun, get SIGTERM when the launcher dies (kill -9, a CI timeout): its workers
    were left behind, blocked in a collective, until dist_timeout_s. Linux only; best effort."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher was already gone before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def launcher_asked_for() -> int | None:
    """How many processes ``accelerate launch`` was asked for when it started this one alone:
    its single-process launcher (a machine without GPUs, no --multi_gpu) exports MASTER_ADDR for
    --num_processes > 1 but no WORLD_SIZE. 0 = more than one, number unknown; None = no mismatch."""
    if "WORLD_SIZE" in os.environ or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return None
    try:  # the launcher is the parent process: its command line holds --num_processes N
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        argv = []
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg in ("--num_processes", "--num-processes") and i + 1 < len(argv) else None
        if arg.startswith(("--num_processes=", "--num-processes=")):
            value = arg.split("=", 1)[1]
        if value is not None and value.isdigit():
            return int(value) if int(value) > 1 else None
    # --num_processes from accelerate's config file: MASTER_ADDR alone says "more than one"
    return 0 if "MASTER_ADDR" in os.environ else None


def _warn_if_launcher_asked_for_more() -> None:
    asked = launcher_asked_for()
    if asked is None:
        return
    import warnings

    from rotary.errors import RotaryWarning

    warnings.warn(
        f"accelerate launch was asked for {asked or 'several'} processes but started one (its "
        "single-process launcher), so this run trains alone: pass --multi_gpu (rotary then uses "
        "gloo on the CPU) or use torchrun --nproc-per-node N", RotaryWarning, stacklevel=3)


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """DDP by default; FSDP2 (``fully_shard``) per block then the root for models too big for one device."""
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # fully_shard's default mesh is on CUDA whenever CUDA exists; the run may be on the CPU
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for layer in model.backbone.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_max(value: float, info: DistInfo) -> float:
    """The largest value over all ranks: how ranks agree on stopping (any rank's flag wins)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
