"""The trainer's view of the data: tokenizer + prepared shards -> reproducible batches.

Batches do not depend on the number of processes: the global batch of optimizer step s is a
pure function of (seed, s), and each process (and each accumulation micro-step) takes its own
contiguous rows of it. So 2 processes with batch B see exactly what 1 process with batch 2B (or
batch B with 2 accumulation steps) sees, and a resumed run continues with the very batches an
uninterrupted run would have used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rotary.data.sampler import lm_window_starts, read_windows
from rotary.errors import RotaryError
from rotary.train.config import TrainConfig
from rotary.train.distributed import DistInfo, barrier


class TrainData:
    def __init__(self, task: str, shards_dir: Path, tokenizer_dir: Path, mlm_probability: float = 0.15,
                 whole_word_mask: bool = False) -> None:
        from rotary.data.prepare import open_shards
        from rotary.tokenizer import load_tokenizer

        self.task = task
        self.shards_dir = Path(shards_dir)
        self.tokenizer_dir = Path(tokenizer_dir)
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.meta, shards = open_shards(self.shards_dir)
        if self.meta.get("tokenizer_hash") != self.tokenizer.hash:
            raise RotaryError(
                f"shards in {self.shards_dir} were prepared with another tokenizer than "
                f"{self.tokenizer_dir}: prepare them again with this tokenizer"
            )
        self.train_tokens, self.val_tokens = shards["train"], shards["val"]
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        if task == "masked_lm" and self.tokenizer.mask_id is None:
            raise RotaryError(f"masked LM needs a [MASK] token, but {self.tokenizer_dir} has none: "
                              "train a wordpiece or char tokenizer")
        self.seq_len = self.batch_size = self.seed = 0
        self.start_table = None
        if task == "masked_lm" and whole_word_mask and not self.meta.get("word_starts"):
            from rotary.data.loader import wordpiece_start_table

            # Without jieba word-start shards, WordPiece's ## continuations mark the words.
            if self.tokenizer.kind != "wordpiece":
                raise RotaryError("whole_word_mask needs a jieba tokenizer (word-start shards) or a "
                                  "wordpiece tokenizer: retrain the tokenizer or set whole_word_mask false")
            self.start_table = wordpiece_start_table(self.tokenizer)

    # -- what the model needs to know ----------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def pad_id(self) -> int | None:
        return self.tokenizer.pad_id

    @property
    def val_bytes_per_token(self) -> float:
        split = self.meta["splits"]["val"]
        return split["bytes"] / max(1, split["tokens"])

    def configure(self, *, seq_len: int, batch_size: int, seed: int, model_vocab: int) -> None:
        if model_vocab < self.vocab_size:
            raise RotaryError(f"shards use {self.vocab_size} token ids but the model has {model_vocab}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        need = seq_len + 1
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(tokens) < need:
                raise RotaryError(
                    f"the {split} split has {len(tokens)} tokens, fewer than one window of {need}: "
                    "use a shorter seq_len or more data"
                )

    # -- batches ---------------------------------------------------------------------------------
    def _shard_path(self, split: str) -> Path:
        return self.shards_dir / f"{split}.bin"

    def train_batches(self, start_step: int, accum: int, info: DistInfo) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Micro-batches in order, from optimizer step ``start_step`` on.

        Step s draws one global batch of batch_size x processes x accum rows; rank r's micro-batch
        a holds rows [(r*accum + a)*B, (r*accum + a + 1)*B). Any split of the same global batch
        over processes and accumulation sees the same rows.
        """
        B = self.batch_size
        rows = B * info.world_size * accum
        path, dtype = self._shard_path("train"), np.dtype(self.meta["dtype"])
        n_tokens = len(self.train_tokens)
        window = self.seq_len + 1 if self.task == "causal_lm" else self.seq_len
        step = start_step
        while True:
            starts = lm_window_starts(n_tokens, window, rows, seed=self.seed, index=step)
            for a in range(accum):
                lo = (info.rank * accum + a) * B
                # A fresh memmap per batch keeps RSS flat on huge shards (nanoGPT #287).
                windows = torch.from_numpy(read_windows(path, dtype, starts[lo : lo + B], window))
                words = self._word_ids("train", windows, starts[lo : lo + B])
                yield self._to_example(windows, self.seed, step, lo, lo + B, rows, words)
            step += 1

    def _word_ids(self, split: str, windows: torch.Tensor, starts: np.ndarray) -> torch.Tensor | None:
        """Whole-word masking: equal ids on the tokens of one word (None = token masking)."""
        if self.task != "masked_lm" or not self.whole_word_mask:
            return None
        if self.start_table is not None:
            flags = torch.from_numpy(self.start_table[windows.numpy()].astype(np.int64))
        else:
            flags = torch.from_numpy(read_windows(self.shards_dir / f"{split}.words.bin", np.dtype(np.uint8),
                                                  starts, windows.shape[1]))
        flags[:, 0] = 1  # a window may open mid-word: that part is a word of its own
        return flags.cumsum(dim=1)

    def _to_example(self, windows: torch.Tensor, seed: int, k: int, lo: int, hi: int, rows: int,
                    word_ids: torch.Tensor | None = None):
        if self.task == "causal_lm":
            return windows[:, :-1], windows[:, 1:]
        from rotary.data.loader import mask_tokens

        # Masks are drawn for the whole global batch, then sliced: world-size independent.
        g = torch.Generator().manual_seed(_mix(seed, k))
        full = torch.zeros(rows, windows.shape[1], dtype=torch.long)
        full[lo:hi] = windows
        full_words = None
        if word_ids is not None:
            full_words = torch.arange(rows * windows.shape[1]).view(rows, -1)  # other rows: 1-token words
            full_words[lo:hi] = word_ids + rows * windows.shape[1]
        inputs, labels = mask_tokens(full, vocab_size=self.vocab_size, mask_id=self.tokenizer.mask_id,
                                     special_ids=self.tokenizer.special_ids, generator=g,
                                     mlm_probability=self.mlm_probability, word_ids=full_words)
        return inputs[lo:hi], labels[lo:hi]

    def eval_batches(self, max_batches: int | None, info: DistInfo) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows over the validation split, in global batches of batch_size x
        processes (each rank takes its rows), so every world size evaluates the same windows.
        ``max_batches`` counts global batches; None = the whole split."""
        window = self.seq_len + 1 if self.task == "causal_lm" else self.seq_len
        stride = self.seq_len  # causal windows overlap by one token: every token is predicted once
        starts = np.arange(0, len(self.val_tokens) - window + 1, stride, dtype=np.int64)
        B = self.batch_size
        G = B * info.world_size
        total = -(-len(starts) // G)  # the last global batch may be short
        if max_batches is not None:
            total = min(total, max_batches)
        path, dtype = self._shard_path("val"), np.dtype(self.meta["dtype"])
        for b in range(total):
            chunk = starts[b * G : (b + 1) * G]
            lo, hi = info.rank * B, min((info.rank + 1) * B, len(chunk))
            if lo >= hi:
                continue
            windows = torch.from_numpy(read_windows(path, dtype, chunk[lo:hi], window))
            words = self._word_ids("val", windows, chunk[lo:hi])
            yield self._to_example(windows, self.seed + 1, b, lo, hi, len(chunk), words)


def _mix(seed: int, k: int) -> int:
    return (seed * 1_000_003 + k * 7919 + 17) % (2**63 - 1)


def prepare_training_data(cfg: TrainConfig, info: DistInfo) -> TrainData:
    """Shards and tokenizer for the run: given ones, or trained/prepared from the corpus (rank 0)."""
    d = cfg.data
    run_dir = cfg.run_dir
    if d.shards is not None:
        shards = Path(d.shards)
        if not (shards / "meta.json").is_file():
            raise RotaryError(f"no prepared shards in {shards} (meta.json missing): run `rotary prepare` first")
        tok_dir = Path(d.tokenizer.path) if d.tokenizer.path else shards / "tokenizer"
        if not tok_dir.is_dir():
            raise RotaryError(f"tokenizer for {shards} not found: set data.tokenizer.path")
        return TrainData(cfg.task, shards, tok_dir, d.mlm_probability, d.whole_word_mask)
    if d.corpus is None:
        raise RotaryError("the recipe names no data: set data.corpus (a corpus name or path) or data.shards")
    tok_dir = Path(d.tokenizer.path) if d.tokenizer.path else run_dir / "tokenizer"
    shards = run_dir / "data"
    if info.is_main:
        from rotary.data.prepare import prepare
        from rotary.tokenizer import train_tokenizer

        if d.tokenizer.path is None and not (tok_dir / "tokenizer.json").is_file():
            train_tokenizer(d.corpus, d.tokenizer.kind, d.tokenizer.vocab_size, tok_dir,
                            jieba=d.tokenizer.jieba, lowercase=d.tokenizer.lowercase)
        prepare(d.corpus, tok_dir, shards, val_fraction=d.val_fraction, progress=cfg.progress)
    barrier(info)
    return TrainData(cfg.task, shards, tok_dir, d.mlm_probability, d.whole_word_mask)
