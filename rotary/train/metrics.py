"""Throughput and MFU: tokens per second, and the measured matmul peak MFU is a fraction of.

``measure_matmul_peak`` is what ``bench/`` divides by too, so the trainer's MFU and the bench's
are the same number.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rotary.ops import gemm


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """FLOP/s of a square matmul on this device: MFU's denominator, measured, not guessed.

    On CPU in fp32 it is the faster of the BLAS and oneDNN (see ``rotary.ops.gemm``): the
    machine's peak, not that of whichever library PyTorch happens to call by default.
    """
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout) alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    candidates = [lambda: a @ b]
    if device.type == "cpu" and dtype == torch.float32 and gemm.onednn_available():
        candidates.append(lambda: gemm.matmul_onednn(a, b.t()))
    return max(_flops_per_second(fn, 2 * n**3, device) for fn in candidates)


def _flops_per_second(fn, flops: int, device: torch.device) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        if reps >= 5 and time.perf_counter() - t0 > 0.2:
            break
    _sync(device)
    return flops * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LogWindow:
    """The steps since the last log line: their mean loss, and tokens per second.

    Its loss sum and step count go into the checkpoint, so the first line after a resume
    averages the same steps as an uninterrupted run would.
    """

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.loss_sum = float(saved.get("loss_sum", 0.0))
        self.steps = int(saved.get("steps", 0))
        self.tokens = 0  # timed in this process only: a resumed window's rate covers its own steps
        self.t0 = time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens

    def rate(self) -> float:
        """Tokens per second over the window so far."""
        dt = time.perf_counter() - self.t0
        return self.tokens / dt if dt > 0 else 0.0

    def seconds_per_step(self, tokens_per_step: int) -> float:
        return (time.perf_counter() - self.t0) / max(self.tokens / tokens_per_step, 1)

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def state(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": self.steps}

    def reset(self) -> None:
        self.loss_sum, self.steps, self.tokens, self.t0 = 0.0, 0, 0, time.perf_counter()
