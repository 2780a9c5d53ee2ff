"""Text generation: greedy, temperature, top-k, top-p, min-p and repetition penalty.

Every prompt goes through the decode engine (``rotary.infer.engine``): one prefill pass for all
prompts, then one forward pass of a single token per step against a slot KV cache, each row at
its own length (no padding inside the cache, so a row's tokens do not depend on its neighbours
beyond float rounding). Each row samples from its own generator: with a seed, a prompt gives
the same text alone or in any batch. Every causal model decodes this way: dynamic NTK (the cache
holds unrotated keys) and linear attention (the cache holds its running sums) included.

Sampling settings travel as one :class:`~rotary.infer.sampling.SamplingParams` (``sampling=``); keyword
arguments named after its fields (``temperature=0``, ``top_k=5``, ...) replace its values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from rotary.errors import RotaryError
from rotary.infer.sampling import SamplingParams, check_sampling, sampling_params
from rotary.model import CausalLM, MaskedLM

__all__ = ["check_generation", "check_sampling", "generate"]


def check_generation(model: torch.nn.Module, max_new_tokens: int) -> None:
    """What :func:`generate` would refuse about the model and the length, before the first
    forward pass (sampling settings check themselves when a ``SamplingParams`` is made)."""
    if not isinstance(model, CausalLM):
        if isinstance(model, MaskedLM):
            raise RotaryError("generation needs a causal LM, and this model is a masked LM (an encoder): it "
                              "predicts masked tokens, not continuations; use `rotary fill-mask` on it")
        if type(model).__name__ == "Seq2SeqLM":
            raise RotaryError("generation continues a prompt with a causal LM, and this model is an "
                              "encoder-decoder: translate with `rotary translate` (pre.translate in Python)")
        raise RotaryError(f"generation needs a causal LM, and this model is a {type(model).__name__}: "
                          "train with task causal_lm to generate (a classifier: `rotary classify`)")
    if max_new_tokens < 0:
        raise RotaryError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def _rows(prompts: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    rows = prompts.tolist() if isinstance(prompts, torch.Tensor) else [list(p) for p in prompts]
    if not rows or any(len(p) == 0 for p in rows):
        raise RotaryError("every prompt needs at least one token")
    return rows


def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    sampling: SamplingParams | None = None,
    eos_id: int | None = None,
    seeds: Sequence[int | None] | None = None,
    compile: bool = False,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    **options: Any,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new tokens.

    ``on_tokens`` receives each step's (B,) new ids as they are sampled (a row that has ended
    shows ``eos_id``). A row stops at ``eos_id``, which is kept in its output. The sampling
    ``seed`` seeds every row's own generator (so a prompt samples the same alone or in a batch);
    ``seeds`` gives one per row.
    """
    from rotary.infer.engine import Request, decode

    params = sampling_params(sampling, **options)
    check_generation(model, max_new_tokens)
    if max_new_tokens == 0:
        return [[] for _ in range(len(prompts))]
    rows = _rows(prompts)
    seeds = list(seeds) if seeds is not None else [params.seed] * len(rows)
    if len(seeds) != len(rows):
        raise RotaryError(f"{len(seeds)} seeds for {len(rows)} prompts")
    requests = [Request(r, max_new_tokens, replace(params, seed=s), eos_id=eos_id, tag=i)
                for i, (r, s) in enumerate(zip(rows, seeds))]
    out: list[list[int]] = [[] for _ in rows]
    fill = eos_id if eos_id is not None else 0
    for events in decode(model, requests, compile=compile):
        step = torch.full((len(rows),), fill, dtype=torch.long)
        for e in events:
            out[e.tag].append(e.token)
            step[e.tag] = e.token
        if on_tokens is not None:
            on_tokens(step)
    return out
