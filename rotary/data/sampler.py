"""Window sampling over a memory-mapped token shard, independent of the number of processes.

The shard is cut into one contiguous block per row of the global batch; row g draws a window
uniformly inside block g. Rank r owns rows [r*B, (r+1)*B),
so it only ever reads its own contiguous stretch of the shard (random access across a huge
memmap is slow), and the global batch of index k is the same on 1 process or 64.
"""

from __future__ import annotations

from pathlib import Path

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


def read_windows(path: str | Path, dtype: np.dtype, starts: np.ndarray, window: int) -> np.ndarray:
    """Windows (len(starts), window) as int64, read through a short-lived memmap."""
    tokens = np.memmap(path, dtype=dtype, mode="r")
    idx = starts[:, None] + np.arange(window, dtype=np.int64)[None, :]
    out = tokens[idx].astype(np.int64)
    del tokens
    return out
