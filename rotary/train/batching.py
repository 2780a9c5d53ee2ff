"""The batch arithmetic of a training step: per device x accumulation x world size."""

from __future__ import annotations

from dataclasses import dataclass

from rotary.train.config import TrainConfig


def grad_accum_steps(cfg: TrainConfig, seq_len: int, world_size: int) -> int:
    """Micro-batches per optimizer step: the recipe's, or what ``global_batch_tokens`` needs."""
    if cfg.grad_accum_steps is not None:
        return cfg.grad_accum_steps
    if cfg.global_batch_tokens is not None:
        return max(1, round(cfg.global_batch_tokens / (cfg.batch_size * seq_len * world_size)))
    return 1


@dataclass(frozen=True)
class Batching:
    world_size: int
    batch_size: int  # sequences per device per micro-batch
    accum: int
    seq_len: int

    @property
    def global_rows(self) -> int:
        return self.batch_size * self.accum * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_rows * self.seq_len

    def steps_per_epoch(self, train_tokens: int) -> int:
        """Optimizer steps in one pass over ``train_tokens`` (windows of seq_len tokens)."""
        return max(1, (train_tokens // self.seq_len) // self.global_rows)
