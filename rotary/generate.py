"""Text generation with a preallocated KV cache: greedy, temperature, top-k and top-p sampling.

The prompt is processed in one forward pass (prefill); each further token costs one forward pass
of a single position against the cache. Prompts of different lengths are left-padded and the
model counts positions from the attention mask, so padding never shifts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM


def check_sampling(*, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """RotaryError for sampling settings that cannot work."""
    if temperature < 0:
        raise RotaryError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RotaryError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise RotaryError(f"top_k must be >= 1, got {top_k}")


def check_generation(model: torch.nn.Module, max_new_tokens: int, *, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None) -> None:
    """Everything :func:`generate` would refuse that is known before the first forward pass, so
    callers can check before they print anything."""
    if not isinstance(model, CausalLM):
        if isinstance(model, MaskedLM):
            raise RotaryError("generation needs a causal LM, and this model is a masked LM (an encoder): it "
                              "predicts masked tokens, not continuations; use `rotary fill-mask` on it")
        raise RotaryError(f"generation needs a causal LM, and this model is a {type(model).__name__}: "
                          "train with task causal_lm to generate (a classifier: `rotary classify`)")
    if max_new_tokens < 0:
        raise RotaryError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab). temperature 0 = greedy."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first one stays).
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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


def iter_tokens(
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
    """Continue each prompt, yielding each step's (B,) new ids as they are sampled.

    A row that reached ``eos_id`` keeps yielding ``eos_id``; the iteration ends after
    ``max_new_tokens`` steps or when every row has ended. The KV cache makes each step one
    token's forward pass.
    """
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


def generate(
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
    on_tokens: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new tokens.

    Collects :func:`iter_tokens`; ``on_tokens`` receives each step's (B,) new ids as they are
    sampled. A row stops at ``eos_id`` (which is kept in its output).
    """
    steps = []
    for nxt in iter_tokens(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_id=eos_id, pad_id=pad_id, seed=seed):
        steps.append(nxt)
        if on_tokens is not None:
            on_tokens(nxt)
    B = len(prompts)
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]  # (B, steps)
    if eos_id is not None:  # cut each row after its first EOS
        rows = [r[: r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return rows
