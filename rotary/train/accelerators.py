"""The accelerators ``rotary plan`` knows: datasheet peaks and memory (no torch: the CLI's
``--gpu`` choices come from here while its parser is built)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str
    bf16_tflops: float  # dense tensor-core peak (the datasheet's, without sparsity)
    tf32_tflops: float  # what fp32 matmuls run at (TF32 tensor cores)
    memory_gib: float


ACCELERATORS = {
    "h100": Accelerator("NVIDIA H100 SXM 80GB", 989.0, 494.0, 80),
    "h200": Accelerator("NVIDIA H200 141GB", 989.0, 494.0, 141),
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 312.0, 156.0, 80),
    "a100-40gb": Accelerator("NVIDIA A100 40GB", 312.0, 156.0, 40),
    "l4": Accelerator("NVIDIA L4 24GB", 121.0, 60.0, 24),
    "a10": Accelerator("NVIDIA A10 24GB", 125.0, 62.5, 24),
}
