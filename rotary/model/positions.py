"""Absolute position baselines, added to the token embeddings: learned, sinusoidal, none.

They exist so the RoPE claims can be tested against what came before.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rotary.errors import RotaryError
from rotary.model.config import ModelConfig


def sinusoidal_table(length: int, dim: int, layout: str = "interleaved") -> torch.Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...).

    ``layout="halves"`` puts the same values as [all sines | all cosines] (Marian, fairseq):
    PE[p, i] = sin(p w_i), PE[p, d/2 + i] = cos(p w_i).
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    if layout == "halves":
        table[:, : dim // 2] = torch.sin(pos * div)
        table[:, dim // 2:] = torch.cos(pos * div)
    else:
        table[:, 0::2] = torch.sin(pos * div)
        table[:, 1::2] = torch.cos(pos * div)
    return table.float()


class LearnedPositions(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_len = cfg.max_seq_len
        self.weight = nn.Parameter(torch.empty(cfg.max_seq_len, cfg.d_model))

    def forward(self, positions: torch.Tensor, seq_len: int) -> torch.Tensor:
        if seq_len > self.max_len or (positions.numel() and int(positions.max()) >= self.max_len):
            raise RotaryError(
                f"sequence of {seq_len} tokens is longer than the {self.max_len} learned "
                "positions of this model: shorten the input or use position=rope"
            )
        return self.weight[positions]

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """The rows for ``positions`` with no range check (the caller checked on the host)."""
        return self.weight[positions]


class SinusoidalPositions(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = cfg.d_model
        self.layout = cfg.sinusoidal_layout
        table = sinusoidal_table(cfg.max_seq_len, cfg.d_model, self.layout)  # (max_seq_len, d)
        self.register_buffer("table", table, persistent=False)

    def forward(self, positions: torch.Tensor, seq_len: int) -> torch.Tensor:
        if seq_len > self.table.shape[0]:  # no ceiling: grow on demand
            size = max(seq_len, 2 * self.table.shape[0])
            self.table = sinusoidal_table(size, self.dim, self.layout).to(self.table.device)
        return self.table[positions]

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """The rows for ``positions`` with no growth (the caller sized the table)."""
        return self.table[positions]


def make_absolute_positions(cfg: ModelConfig) -> nn.Module | None:
    if cfg.position == "learned":
        return LearnedPositions(cfg)
    if cfg.position == "sinusoidal":
        return SinusoidalPositions(cfg)
    return None  # rope acts inside attention; none has no positions at all
