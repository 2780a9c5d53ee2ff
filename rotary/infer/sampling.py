"""Sampling settings and the logits processing shared by offline generation and the server.

One :class:`SamplingParams` per row, so rows of one batch may sample differently (the server
batches requests with different settings). Processing is batched over rows with per-row
parameter tensors; only the random draw is per row, from each row's own generator, so a seeded
row's sample never depends on which other rows share its batch.

Order, as in transformers: repetition penalty -> temperature -> top-k -> top-p -> min-p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from rotary.errors import RotaryError

# Seeds are what torch.Generator.manual_seed takes without wrapping: 0 .. 2**63 - 1 (a negative
# seed would alias a large one, -1 = 2**64 - 1). Sample j of a request uses seed + j.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How one row picks its next token. ``temperature == 0`` is greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.stop, str):
            object.__setattr__(self, "stop", tuple(self.stop))  # a list from the CLI or JSON; frozen: hashable
        check_sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                       repetition_penalty=self.repetition_penalty, stop=self.stop, seed=self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sampling_params(base: SamplingParams | None = None, **options: Any) -> SamplingParams:
    """``base`` (default ``SamplingParams()``) with ``options`` (its field names) replaced: what
    the Python API's keyword arguments become. An unknown option is a RotaryError naming the
    known ones."""
    base = base if base is not None else SamplingParams()
    unknown = sorted(set(options) - {f.name for f in fields(SamplingParams)})
    if unknown:
        known = ", ".join(f.name for f in fields(SamplingParams))
        raise RotaryError(f"unknown sampling option '{unknown[0]}': the options are {known}")
    return replace(base, **options) if options else base


def check_sampling(*, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   min_p: float | None = None, repetition_penalty: float | None = None,
                   stop: Sequence[str] = (), seed: int | None = None, samples: int = 1) -> None:
    """RotaryError for sampling settings that cannot work (``samples``: the seeds seed .. seed +
    samples - 1 must all be valid)."""
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN compares False with everything
        raise RotaryError(f"temperature must be >= 0 and finite, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RotaryError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise RotaryError(f"top_k must be >= 1, got {top_k}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise RotaryError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty is not None and not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise RotaryError(f"repetition_penalty must be > 0 (1 = none), got {repetition_penalty}")
    if isinstance(stop, str) or any(not isinstance(s, str) or not s for s in stop):
        raise RotaryError("stop must be a list of non-empty strings")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RotaryError(f"seed must be an integer, got {seed!r}")
        if not 0 <= seed <= MAX_SEED - max(samples - 1, 0):
            last = "2**63 - 1" if samples <= 1 else f"2**63 - {samples} (sample j uses seed + j)"
            raise RotaryError(f"seed must be between 0 and {last}, got {seed}")


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]  # (B, 1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's penalty (as transformers): a token already in the row's prompt or output has its
    logit divided by ``penalty`` when positive, multiplied when negative. ``seen`` (B, V) bool,
    ``penalty`` (B, 1); 1 leaves a row unchanged."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p per row: the logits of tokens outside a row's set
    become -inf. Greedy rows pass through unscaled (their argmax is taken later)."""
    device = logits.device
    temps = _column([p.temperature if p.temperature > 0 else 1.0 for p in params], device)
    logits = logits / temps
    V = logits.shape[-1]
    if any(p.top_k is not None and p.top_k < V for p in params):
        k = torch.tensor([min(p.top_k or V, V) for p in params], device=device)
        sorted_desc = logits.sort(dim=-1, descending=True).values
        kth = sorted_desc.gather(-1, (k - 1)[:, None])  # (B, 1): each row's k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(p.top_p is not None and p.top_p < 1.0 for p in params):
        top_p = _column([p.top_p if p.top_p is not None else 1.0 for p in params], device)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first one stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs >= top_p) & (top_p < 1.0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if any(p.min_p for p in params):
        min_p = _column([p.min_p or 0.0 for p in params], device)
        probs = logits.softmax(dim=-1)
        # keep tokens at least min_p times as likely as the most likely one
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


def draw(logits: torch.Tensor, params: Sequence[SamplingParams],
         generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Next ids (B,) from processed logits: argmax for greedy rows, else one draw per row from its
    own generator (a loop over rows, not tokens: at most the batch size of small calls)."""
    greedy = logits.argmax(dim=-1)
    if all(p.greedy for p in params):
        return greedy
    probs = logits.float().softmax(dim=-1)
    out = greedy.clone()
    for i, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            out[i] = torch.multinomial(probs[i], 1, generator=g)[0]
    return out


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, min_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab), every row with the same
    settings and one shared generator. temperature 0 = greedy."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    params = [SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)] * logits.shape[0]
    probs = filter_logits(logits, params).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def row_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)
