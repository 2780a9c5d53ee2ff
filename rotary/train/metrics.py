"""Throughput and MFU: tokens per second, and the measured matmul peak MFU is a fraction of.

``measure_matmul_peak`` is what ``bench/`` divides by too, so the trainer's MFU and the bench's
are the same number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rotary.labels import IGNORE_INDEX
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
    """The steps since the last log line: their mean loss, positions per second and model FLOPs.

    Its loss sum and step count go into the checkpoint, so the first line after a resume
    averages the same steps as an uninterrupted run would.
    """

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.loss_sum = float(saved.get("loss_sum", 0.0))
        self.steps = int(saved.get("steps", 0))
        # timed in this process only: a resumed window's rate covers its own steps
        self.tokens, self.flops, self.timed_steps = 0, 0.0, 0
        self.t0 = time.perf_counter()

    def add(self, loss: float, tokens: int, flops: float = 0.0) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens
        self.flops += flops
        self.timed_steps += 1

    def _seconds(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self) -> float:
        """Tokens (positions the model ran on) per second over the window so far."""
        dt = self._seconds()
        return self.tokens / dt if dt > 0 else 0.0

    def flops_rate(self) -> float:
        dt = self._seconds()
        return self.flops / dt if dt > 0 else 0.0

    def seconds_per_step(self) -> float:
        return self._seconds() / max(self.timed_steps, 1)

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def state(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": self.steps}

    def reset(self) -> None:
        self.loss_sum, self.steps, self.tokens, self.flops, self.timed_steps = 0.0, 0, 0, 0.0, 0
        self.t0 = time.perf_counter()


class CountedBatches:
    """The training batches, counted as they are drawn: the positions (rows x length) the model
    runs on and their matmul FLOPs. A padded task's batches (classification, translation) are
    only as long as their longest row, far shorter than ``seq_len``: counting the recipe's
    ``batch_size x seq_len`` instead claimed more than the machine's peak."""

    def __init__(self, batches: Iterator[Any], flops_per_token: Callable[..., float]) -> None:
        self._batches = batches
        self._flops_per_token = flops_per_token  # (seq_len, predicted_share=...) -> FLOPs
        self.positions, self.flops = 0, 0.0

    def __iter__(self) -> CountedBatches:
        return self

    def __next__(self) -> Any:
        batch = next(self._batches)
        ids = batch[0]  # (B, T): the input ids (a translation batch's source)
        rows, length = int(ids.shape[0]), int(ids.shape[-1])
        share = 1.0
        labels = batch[1] if len(batch) > 1 else None
        if isinstance(labels, torch.Tensor) and labels.shape == ids.shape:  # per-position targets
            share = float((labels != IGNORE_INDEX).sum()) / max(labels.numel(), 1)
        self.positions += rows * length
        self.flops += rows * length * self._flops_per_token(length, predicted_share=share)
        return batch

    def take(self) -> tuple[int, float]:
        """(positions, FLOPs) drawn since the last ``take``."""
        out = (self.positions, self.flops)
        self.positions, self.flops = 0, 0.0
        return out
