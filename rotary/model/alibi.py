"""ALiBi (Press et al. 2022, "Train Short, Test Long"): no position embeddings; each head adds
``-slope * distance`` to its attention scores, through SDPA's additive mask.

Distances are between *positions*, not indices: with left padding the backbone passes positions
that count real tokens only, so a padded row scores as it would alone.
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_head: int) -> torch.Tensor:
    """The paper's head slopes (its reference code): for n a power of two the geometric sequence
    starting at 2^(-8/n) with that ratio; otherwise the 2^floor(log2 n) slopes of the power of two
    below, then every other slope of the next power of two for the remaining heads."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))  # = 2^(-8/n)
        return [start ** (i + 1) for i in range(n)]

    if n_head <= 0:
        raise ValueError(f"n_head must be positive, got {n_head}")
    if math.log2(n_head).is_integer():
        slopes = power_of_two(n_head)
    else:
        below = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_two(below) + power_of_two(2 * below)[0::2][: n_head - below]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_mask(
    slopes: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    allowed: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """The additive float mask (B|1, H, T, S): ``-slope_h * |q - k|`` where attention is allowed,
    -inf elsewhere.

    ``query_positions`` is (T,) or (B, T), ``key_positions`` (S,) or (B, S); ``allowed`` is the
    boolean mask (B|1, 1, T, S) or None (then ``causal`` decides: keys after the query are hidden).
    Causal models only see keys at or before the query, where the distance is ``q - k``; an
    encoder's keys on both sides get the symmetric ``|q - k|`` (as the paper's encoder variant).
    """
    q = query_positions.to(torch.float32)
    k = key_positions.to(torch.float32)
    if q.dim() == 1:
        q = q[None]
    if k.dim() == 1:
        k = k[None]
    distance = (q[:, None, :, None] - k[:, None, None, :]).abs()  # (B|1, 1, T, S)
    bias = -slopes.to(distance.device)[None, :, None, None] * distance  # (B|1, H, T, S)
    if allowed is None and causal:
        allowed = q[:, None, :, None] >= k[:, None, None, :]  # (B|1, 1, T, S)
    if allowed is None:
        return bias
    return bias.masked_fill(~allowed, float("-inf"))
