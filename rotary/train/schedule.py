"""Optimiser and learning-rate schedule as the RoPE papers' seeds use them."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, *, peak: float, final: float, warmup: int, total: int) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup`` steps, then cosine decay to ``final``.

    ``step`` counts optimizer steps taken so far (0 for the first update).
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return final
    progress = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or embeddings."""
    from rotary.model.positions import LearnedPositions

    decay, no_decay = [], []
    # embedding tables are lookups, not maps: no decay (a learned position table is one too)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, LearnedPositions))}
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() >= 2 and id(p) not in embeddings:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                   eps: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for the device (CUDA, CPU), else foreach."""
    groups = param_groups(model, weight_decay)
    fused = device.type in ("cuda", "cpu")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
