"""Optimisers (AdamW; Muon for the hidden matrices) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rotary.errors import RotaryError

# Muon's step size per matrix: Moonshot's rule ("Muon is Scalable for LLM Training"),
# lr * 0.2 * sqrt(max(rows, cols)), which gives the update AdamW's RMS, so Muon reuses the
# recipe's AdamW lr and weight decay (and its schedule) instead of a second set of knobs.
MUON_LR_RULE = "match_rms_adamw"


def lr_at(step: int, *, peak: float, final: float, warmup: int, total: int, kind: str = "cosine") -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup`` steps, then cosine decay to ``final``; or,
    for ``kind="inverse_sqrt"``, decay as 1/sqrt(step) (Vaswani et al.'s schedule, scaled so its
    peak at the end of warmup is ``peak``).

    ``step`` counts optimizer steps taken so far (0 for the first update).
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if kind == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / (step + 1))
    if step >= total:
        return final
    progress = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The matrices Muon orthogonalises, chosen by role: every 2-D weight inside a Transformer
    block (attention and MLP projections). Embeddings and the output head are 2-D too but are
    lookups / the classifier of the vocabulary, so they stay on AdamW (as in modded-nanoGPT).

    Fused projections are orthogonalised as one matrix: q, k and v together (``qkv_proj``), gate
    and up together (``up_proj``), since torch.optim.Muon takes whole 2-D parameters."""
    from rotary.model.transformer import Block

    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, Block):
            for p in module.parameters():
                if p.requires_grad and p.dim() == 2:
                    seen.setdefault(id(p), p)
    return list(seen.values())


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] | None = None,
                 layer_decay: float | None = None) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or embeddings (``exclude``: ids of
    parameters another optimiser owns). With ``layer_decay`` (layer-wise lr decay, as in ELECTRA's
    and BEiT's fine-tuning), a group's ``lr_scale`` is ``layer_decay ** (L + 1 - depth)``: the
    head and final norm (depth L + 1) learn at the full lr, block i at depth i + 1, the
    embeddings (depth 0) slowest."""
    from rotary.model.positions import LearnedPositions

    # embedding tables are lookups, not maps: no decay (a learned position table is one too)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, LearnedPositions))}
    n_layer = len(getattr(getattr(model, "backbone", None), "layers", ()))
    groups: dict[tuple[bool, int], list[nn.Parameter]] = {}
    seen = set(exclude or ())
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        depth = _depth(name, n_layer) if layer_decay is not None else n_layer + 1
        groups.setdefault((p.dim() >= 2 and id(p) not in embeddings, depth), []).append(p)
    out = []
    for (decays, depth), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if layer_decay is not None:
            group["lr_scale"] = layer_decay ** (n_layer + 1 - depth)
        out.append(group)
    if not any(g["weight_decay"] for g in out):  # the first group is the decayed one, even empty
        out.insert(0, {"params": [], "weight_decay": weight_decay})
    return out


def _depth(name: str, n_layer: int) -> int:
    """0 for the embeddings, i + 1 for ``backbone.layers.i``, n_layer + 1 for the rest (final norm, head)."""
    parts = name.split(".")
    if parts[:2] == ["backbone", "layers"] and len(parts) > 2 and parts[2].isdigit():
        return int(parts[2]) + 1
    if parts[0] == "backbone" and len(parts) > 1 and parts[1].startswith("embed"):
        return 0
    return n_layer + 1


class MuonAdamW:
    """Muon for the hidden matrices and AdamW for everything else, stepped as one optimiser.

    It has what the trainer uses of an optimiser: ``param_groups`` (Muon's first; the schedule
    sets every group's lr), ``step``, ``zero_grad`` and a state dict holding both states."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict[Any, Any]:
        return {**self.muon.state, **self.adamw.state}

    def step(self, closure: Any = None) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"muon", "adamw"}:
            raise KeyError("not a Muon + AdamW optimiser state")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def make_adamw(groups: list[dict], *, lr: float, betas: tuple[float, float], eps: float,
               device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for the device (CUDA, CPU), else foreach."""
    fused = device.type in ("cuda", "cpu")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                   eps: float, device: torch.device, kind: str = "adamw",
                   muon_momentum: float = 0.95, layer_decay: float | None = None) -> torch.optim.AdamW | MuonAdamW:
    """The recipe's optimiser: ``adamw``, or ``muon`` (Muon on :func:`hidden_matrices`, with
    Nesterov momentum and decoupled weight decay, AdamW on the rest). ``layer_decay``: AdamW's
    groups get per-depth ``lr_scale`` factors (:func:`param_groups`)."""
    if kind == "adamw":
        return make_adamw(param_groups(model, weight_decay, layer_decay=layer_decay), lr=lr, betas=betas, eps=eps,
                          device=device)
    if layer_decay is not None:
        raise RotaryError("layer_lr_decay is for optimizer adamw (Muon scales its own steps): use one of them")
    if kind != "muon":
        raise RotaryError(f"unknown optimizer {kind!r}: use adamw or muon")
    matrices = hidden_matrices(model)
    if not matrices:
        raise RotaryError("optimizer: muon found no Transformer block matrices in this model: use adamw")
    muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=muon_momentum, nesterov=True,
                            adjust_lr_fn=MUON_LR_RULE)
    rest = param_groups(model, weight_decay, exclude={id(p) for p in matrices})
    rest = [g for g in rest if g["params"]]
    return MuonAdamW(muon, make_adamw(rest, lr=lr, betas=betas, eps=eps, device=device))
