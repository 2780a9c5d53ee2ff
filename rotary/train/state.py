"""Resume state: optimiser (full state dicts under FSDP), grad scaler and every rank's RNG.

Saved with the weights in ``training_state.pt`` (tensors only, loaded with weights_only=True),
so a resumed run continues bit for bit: the same dropout stream on every rank, the same
optimiser moments.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rotary.errors import RotaryError
from rotary.train.distributed import DistInfo


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, info: DistInfo):
    """Unsharded model/optimizer state (a collective under FSDP: every rank must call it)."""
    if info.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=opts)
    raw = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return raw.state_dict(), optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optim_sd,
                         strategy: str, info: DistInfo) -> None:
    if info.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        return
    try:
        optimizer.load_state_dict(optim_sd)
    except (ValueError, KeyError, TypeError) as err:  # the optimiser state of another model
        raise RotaryError(f"the checkpoint's optimiser state does not fit this model "
                          f"({str(err).splitlines()[0][:120]}): resume with the recipe it was trained with") from None



def gather_rng(info: DistInfo) -> dict[str, Any]:
    state = rng_state()
    if not info.enabled:
        return {"0": state}
    import torch.distributed as dist

    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return {str(r): s for r, s in enumerate(gathered)}
