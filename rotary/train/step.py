"""One optimizer step: forward and backward over the accumulation micro-batches, clip, step.

Task-agnostic: a batch is (input ids, ...) and the task says which keyword arguments the model
takes besides the ids; the model returns its loss itself (the fused head never builds logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rotary.tasks import Task


def autocast_context(precision: str, device: torch.device):
    """bf16/fp16 autocast on the right device type (CPU and MPS are not CUDA: nanoGPT #28)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):  # "auto" is resolved first (rotary.precision.resolve)
        raise ValueError(f"autocast_context needs fp32, bf16 or fp16, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_inputs(task: Task, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """The input ids and the model's other keyword arguments of ``batch``, on ``device``."""
    kwargs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
              for k, v in task.inputs(batch).items()}
    return batch[0].to(device, non_blocking=True), kwargs


def micro_batch_weights(task: Task, micro_batches: list[Any], accum: int, device: torch.device,
                        world: Any = None) -> list[torch.Tensor] | None:
    """What each micro-batch's mean loss is multiplied by (None: it is divided by accum). For a task
    that scores a varying number of tokens per batch: its share of the scored tokens of the global batch
    (summed over ranks; times the world size, which DDP and FSDP divide the gradients by), so the
    gradient is that of the mean over every scored token of the step, as on one process with one
    big batch (transformers' num_items_in_batch)."""
    if task.scored is None:
        return None
    from rotary.train.distributed import all_reduce_sum

    counts = torch.stack([task.scored(b) for b in micro_batches]).to(device=device, dtype=torch.float64)
    total = counts.sum()
    ranks = 1
    if world is not None and world.enabled:
        total = all_reduce_sum(total.clone(), world)
        ranks = world.world_size
    return list((counts * ranks / total.clamp(min=1)).to(torch.float32).unbind())


def train_step(model: nn.Module, forward: nn.Module, task: Task, batches: Iterator[Any], *,
               optimizer: torch.optim.Optimizer, scaler: Any, accum: int, precision: str,
               grad_clip: float | None, device: torch.device,
               world: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``accum`` micro-batches and one optimizer step; returns (summed loss, grad norm).

    ``model`` is the wrapped model (DDP/FSDP), ``forward`` what is called (it may be compiled).
    Under DDP only the last micro-batch all-reduces its gradients (``no_sync`` before it).
    ``world`` (a DistInfo) is needed where the task weights micro-batches by scored tokens.
    """
    loss_sum = torch.zeros((), device=device)
    micro_batches = [next(batches) for _ in range(accum)]
    weights = micro_batch_weights(task, micro_batches, accum, device, world)
    for micro, batch in enumerate(micro_batches):
        x, kwargs = model_inputs(task, batch, device)
        sync = micro == accum - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with autocast_context(precision, device):
                loss = forward(x, **kwargs)
                loss = loss / accum if weights is None else loss * weights[micro]
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm
