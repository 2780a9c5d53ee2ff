"""``compile``: what of the model the trainer hands to ``torch.compile``.

- ``false``: nothing; ``true``: the whole model (one graph, about a minute to build on 2 cores);
- ``blocks``: each transformer block (regional compilation, as torchtitan does): one graph that
  every block shares, so it compiles once in seconds; the embeddings, the loss head and
  evaluation stay eager;
- ``auto`` (the default): ``blocks`` where it pays and is cheap — training on the CPU in bf16
  with Inductor's C++ backend available (``rotary.ops.inductor``), outside FSDP, on a task whose
  batches are fixed-length windows (causal and masked LM) — else nothing. Decided from the run's
  settings and machine facts, never from timings.

Measured on 2 Xeon cores (AMX), the demo model's bf16 step: eager 336 ms, blocks 285-298 ms
(compiling: ~4 s with Inductor's on-disk cache warm, ~12 s cold); fp32: 731-790 vs 685-698 ms,
which is why fp32 is not compiled by default (short fp32 runs would pay more compile than they
save); ``compile: blocks`` asks for it. Padded batches of varying length (translation,
classification) recompile for new shapes: 30 steps of the tatoeba-zh-en recipe took 76 s
compiled against 49 s eager, for no faster steady state (their masks keep SDPA's own kernels).
"""

from __future__ import annotations

import torch

from rotary.ops import inductor


def resolve(mode: bool | str, device: torch.device, precision: str, distributed: str, world_size: int,
            fixed_windows: bool = True) -> tuple[str, str]:
    """``(what, why)``: ``what`` is ``model``, ``blocks`` or ``none``; ``fixed_windows``: the
    task's batches all have one shape (``Task.fixed_windows``)."""
    if mode is True:
        return "model", "set by the recipe"
    if mode is False:
        return "none", "set by the recipe"
    if mode == "blocks":
        return "blocks", "set by the recipe"
    if device.type != "cpu":
        return "none", f"auto: not compiled on {device.type}"
    if precision != "bf16":
        return "none", f"auto: {precision} on the CPU is not compiled"
    if not inductor.active():
        return "none", f"auto: Inductor kernels {inductor.describe()}"
    if distributed == "fsdp" and world_size > 1:
        return "none", "auto: not under FSDP"
    if not fixed_windows:
        return "none", "auto: batches of varying shape would recompile"
    return "blocks", "auto: bf16 on the CPU"
