"""The one seed scheme of the data: which windows and which random draws batch k uses.

Every random choice of a batch is a pure function of (seed, batch index), never of carried
state or of the number of processes, so batch k can be rebuilt without replaying batches
0..k-1 (exact resume) and a global batch is the same on 1 process or 64.

Window sampling over a memory-mapped token shard: the shard is cut into one contiguous block
per row of the global batch; row g draws a window uniformly inside block g. Rank r owns rows
[r*B, (r+1)*B), so it only ever reads its own contiguous stretch of the shard (random access
across a huge memmap is slow).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np


def lm_window_starts(n_tokens: int, window: int, rows: int, *, seed: int, index: int) -> np.ndarray:
    """Start offsets (rows,) of the global batch number ``index``: a pure function of its inputs.

    Row g draws a window lying wholly inside token block g (n_tokens // rows tokens), so the
    rows of different ranks never touch the same tokens. A shard too short for that falls back
    to blocks of start positions, which may overlap by less than a window.
    """
    n_starts = n_tokens - window + 1
    if n_starts <= 0:
        raise ValueError(f"shard of {n_tokens} tokens is shorter than one window of {window}")
    block = n_tokens // rows
    if block >= window:
        lo = np.arange(rows, dtype=np.int64) * block
        size = np.full(rows, block - window + 1, dtype=np.int64)
    else:
        edges = (np.arange(rows + 1, dtype=np.float64) * n_starts / rows).astype(np.int64)
        lo = edges[:-1]
        size = np.maximum(edges[1:] - lo, 1)
    u = np.random.default_rng([seed, index]).random(rows)
    return np.minimum(lo + (u * size).astype(np.int64), n_starts - 1)


def mask_seed(seed: int, index: int) -> int:
    """The seed of batch ``index``'s masking generator (MLM): distinct per (seed, index)."""
    return (seed * 1_000_003 + index * 7919 + 17) % (2**63 - 1)


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """A permutation (n,) of the examples for one epoch: the same on every process."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def read_windows(path: str | Path, dtype: np.dtype, starts: np.ndarray, window: int) -> np.ndarray:
    """Windows (len(starts), window) as int64, read through a short-lived memmap.

    A fresh mapping per batch keeps RSS flat on huge shards: pages touched through one
    long-lived mapping count towards the process's RSS until it is dropped (nanoGPT #287).
    """
    tokens = np.memmap(path, dtype=dtype, mode="r")
    idx = starts[:, None] + np.arange(window, dtype=np.int64)[None, :]  # (rows, window)
    out = tokens[idx].astype(np.int64)
    del tokens
    return out


class EvalShare(NamedTuple):
    """One global validation batch, examples [start, stop), and this rank's rows of it, [lo, hi)."""

    index: int
    start: int
    stop: int
    lo: int
    hi: int


def eval_shares(n: int, batch_size: int, world_size: int, rank: int,
                max_batches: int | None = None) -> Iterator[EvalShare]:
    """Examples [0, n) in order, in global batches of batch_size x processes (the last one short),
    ``max_batches`` of them at most (None = all). Every rank gets every batch: under FSDP each
    forward pass is a collective, so a rank whose share is empty (lo == hi) must still run a
    padding batch that scores nothing."""
    G = batch_size * world_size
    total = -(-n // G)
    if max_batches is not None:
        total = min(total, max_batches)
    for b in range(total):
        lo = min(b * G + rank * batch_size, n)
        yield EvalShare(b, b * G, min((b + 1) * G, n), lo, min(lo + batch_size, n))
