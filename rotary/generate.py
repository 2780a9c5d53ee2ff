"""Text generation: greedy, temperature, top-k, top-p, min-p and repetition penalty.

Every prompt goes through the decode engine (``rotary.engine``): one prefill pass for all
prompts, then one forward pass of a single token per step against a slot KV cache, each row at
its own length (no padding inside the cache, so a row's tokens do not depend on its neighbours
beyond float rounding). Each row samples from its own generator: with a seed, a prompt gives
the same text alone or in any batch. Dynamic NTK models, whose cached keys change rotation with
the length, use the left-padded ``KVCache`` path below instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM
from rotary.sampling import SamplingParams, check_sampling, sample_next

__all__ = ["check_generation", "check_sampling", "generate", "iter_tokens", "left_pad", "sample_next"]


def check_generation(model: torch.nn.Module, max_new_tokens: int, *, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                     repetition_penalty: float | None = None) -> None:
    """Everything :func:`generate` would refuse that is known before the first forward pass, so
    callers can check before they print anything."""
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
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=repetition_penalty)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) left-padded to the longest prompt, and the attention mask."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise RotaryError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, longest - len(p):] = 1
    return ids, mask


def _iter_tokens_kvcache(
    model: CausalLM,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """:func:`iter_tokens` over a left-padded ``KVCache``, for dynamic NTK and linear
    attention (one shared generator)."""
    check_generation(model, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    if max_new_tokens == 0:
        return
    device = model.device
    if isinstance(prompts, torch.Tensor):
        ids, mask = prompts.long(), torch.ones_like(prompts, dtype=torch.long)
    else:
        pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
        ids, mask = left_pad(prompts, pad)
    ids, mask = ids.to(device), mask.to(device)
    B, T = ids.shape
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    cache = model.new_kv_cache(B, T + max_new_tokens)
    padded = not bool(mask.all())
    full_mask = torch.ones((B, T + max_new_tokens), dtype=torch.long, device=device)
    full_mask[:, :T] = mask
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        with torch.no_grad():
            logits = model(ids, attention_mask=mask if padded else None, kv_cache=cache, last_only=True)
        for n in range(1, max_new_tokens + 1):
            nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=generator)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            yield nxt
            if n == max_new_tokens or (eos_id is not None and bool(done.all())):
                break
            step_mask = full_mask[:, : T + n] if padded else None
            with torch.no_grad():
                logits = model(nxt[:, None], attention_mask=step_mask, kv_cache=cache, last_only=True)
    finally:
        model.train(was_training)


def _rows(prompts: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    rows = prompts.tolist() if isinstance(prompts, torch.Tensor) else [list(p) for p in prompts]
    if not rows or any(len(p) == 0 for p in rows):
        raise RotaryError("every prompt needs at least one token")
    return rows


def iter_tokens(
    model: CausalLM,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    seed: int | None = None,
    seeds: Sequence[int | None] | None = None,
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Continue each prompt, yielding each step's (B,) new ids as they are sampled.

    A row that reached ``eos_id`` keeps yielding ``eos_id``; the iteration ends after
    ``max_new_tokens`` steps or when every row has ended. ``seed`` seeds every row's own
    generator (so a prompt samples the same alone or in a batch); ``seeds`` gives one per row.
    ``pad_id`` is accepted for the left-padded path; the engine does not pad.
    """
    from rotary.engine import Engine, Request

    check_generation(model, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                     repetition_penalty=repetition_penalty)
    if max_new_tokens == 0:
        return
    rows = _rows(prompts)
    cfg = model.config
    if cfg.decodes_with_kvcache:
        if min_p is not None or repetition_penalty not in (None, 1.0) or seeds is not None:
            raise RotaryError("min_p, repetition_penalty and per-row seeds need the decode engine, which dynamic "
                              "NTK and linear-attention models do not use")
        yield from _iter_tokens_kvcache(model, rows, max_new_tokens, temperature=temperature, top_k=top_k,
                                        top_p=top_p, eos_id=eos_id, pad_id=pad_id, seed=seed)
        return
    seeds = list(seeds) if seeds is not None else [seed] * len(rows)
    if len(seeds) != len(rows):
        raise RotaryError(f"{len(seeds)} seeds for {len(rows)} prompts")
    was_training = model.training
    engine = Engine(model, slots=len(rows), max_len=max(len(r) for r in rows) + max_new_tokens, compile=compile)
    try:
        requests = [Request(r, max_new_tokens, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                                              min_p=min_p, repetition_penalty=repetition_penalty,
                                                              seed=s), eos_id=eos_id, tag=i)
                    for i, (r, s) in enumerate(zip(rows, seeds))]
        fill = eos_id if eos_id is not None else 0
        events = engine.start(requests)
        while events:
            step = torch.full((len(rows),), fill, dtype=torch.long)
            for e in events:
                step[e.tag] = e.token
            yield step
            events = engine.step()
    finally:
        model.train(was_training)


def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    seed: int | None = None,
    seeds: Sequence[int | None] | None = None,
    compile: bool = False,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new tokens.

    Collects :func:`iter_tokens`; ``on_tokens`` receives each step's (B,) new ids as they are
    sampled. A row stops at ``eos_id`` (which is kept in its output).
    """
    steps = []
    for nxt in iter_tokens(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           min_p=min_p, repetition_penalty=repetition_penalty, eos_id=eos_id, pad_id=pad_id,
                           seed=seed, seeds=seeds, compile=compile):
        steps.append(nxt)
        if on_tokens is not None:
            on_tokens(nxt)
    B = len(prompts)
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]  # (B, steps)
    if eos_id is not None:  # cut each row after its first EOS
        rows = [r[: r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return rows
