"""The batches the trainer uses for causal and masked LM: tokenizer + prepared shards -> batches.

Batches do not depend on the number of processes: the global batch of optimizer step s is a
pure function of (seed, s) (see ``rotary.data.sampler``), and each process (and each
accumulation micro-step) takes its own contiguous rows of it. So 2 processes with batch B see
exactly what 1 process with batch 2B (or batch B with 2 accumulation steps) sees, and a resumed
run continues with the very batches an uninterrupted run would have used.

``prepare_training_data`` gives a run its shards and tokenizer: the recipe's, or trained and
prepared from its corpus by rank 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rotary.data.masking import mask_tokens, word_ids_from_starts, wordpiece_start_table
from rotary.data.sampler import eval_shares, lm_window_starts, mask_seed, read_windows
from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor]


class Ranks(Protocol):
    """Where this process stands (``rotary.train.distributed.DistInfo`` is one)."""

    rank: int
    world_size: int


class TrainData:
    """Causal or masked LM batches over prepared shards, for ``task`` "causal_lm" or "masked_lm"."""

    def __init__(self, task: str, shards_dir: Path, tokenizer_dir: Path, mlm_probability: float = 0.15,
                 whole_word_mask: bool = False) -> None:
        from rotary.data.shards import open_shards
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
        from rotary.tasks import MASKED_TASKS

        self.masked = task in MASKED_TASKS
        if self.masked and self.tokenizer.mask_id is None:
            raise RotaryError(f"masked LM needs a [MASK] token, but {self.tokenizer_dir} has none: "
                              "train one that has (--data.tokenizer.kind wordpiece or char)")
        self.seq_len = self.batch_size = self.seed = 0
        self.start_table = None
        if self.masked and whole_word_mask and not self.meta.get("word_starts"):
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
            if split == "val" and len(tokens) == 0:
                raise RotaryError(f"the shards in {self.shards_dir} have an empty validation split (prepared with "
                                  "--val-fraction 0?), and training evaluates on it: prepare them again with a val "
                                  "fraction above 0")
            if len(tokens) < need:
                raise RotaryError(
                    f"the {split} split has {len(tokens)} tokens, fewer than one window of {need}: "
                    "use a shorter seq_len or more data"
                )

    # -- batches ---------------------------------------------------------------------------------
    @property
    def _window(self) -> int:
        # A causal window holds one token more: inputs are its first seq_len, targets its last.
        return self.seq_len + 1 if self.task == "causal_lm" else self.seq_len

    def train_batches(self, start_step: int, accum: int, info: Ranks) -> Iterator[Batch]:
        """Micro-batches (inputs, labels), each (batch_size, seq_len), from step ``start_step`` on.

        Step s draws one global batch of batch_size x processes x accum rows; rank r's micro-batch
        a holds rows [(r*accum + a)*B, (r*accum + a + 1)*B). Any split of the same global batch
        over processes and accumulation sees the same rows.
        """
        B = self.batch_size
        rows = B * info.world_size * accum
        n_tokens, window = len(self.train_tokens), self._window
        step = start_step
        while True:
            starts = lm_window_starts(n_tokens, window, rows, seed=self.seed, index=step)
            mine = [(info.rank * accum + a) * B for a in range(accum)]
            yield from self._examples("train", starts, [(lo, lo + B) for lo in mine], self.seed, step)
            step += 1

    def eval_batches(self, max_batches: int | None, info: Ranks) -> Iterator[Batch]:
        """Non-overlapping windows over the validation split, in global batches of batch_size x
        processes (each rank takes its rows), so every world size evaluates the same windows.
        ``max_batches`` counts global batches; None = the whole split.

        Every rank yields as many batches as the others: under FSDP each forward pass is a
        collective (all_gather), so a rank whose share of the short last batch is empty gets a
        padding batch whose labels are all IGNORE_INDEX: it counts no tokens but still runs."""
        window = self._window
        stride = self.seq_len  # causal windows overlap by one token: every token is predicted once
        starts = np.arange(0, len(self.val_tokens) - window + 1, stride, dtype=np.int64)
        B = self.batch_size
        for b, first, stop, lo, hi in eval_shares(len(starts), B, info.world_size, info.rank, max_batches):
            if lo < hi:
                # The validation masks have their own seed: eval batch b is not train batch b.
                yield from self._examples("val", starts[first:stop], [(lo - first, hi - first)], self.seed + 1, b)
                continue
            pad = torch.full((min(B, stop - first), self.seq_len), self.pad_id or 0, dtype=torch.long)
            yield pad, torch.full_like(pad, IGNORE_INDEX)

    def _examples(self, split: str, starts: np.ndarray, shares: list[tuple[int, int]],
                  seed: int, k: int) -> Iterator[Batch]:
        """(inputs, labels) of rows [lo, hi) of global batch ``k`` (windows at ``starts``), per share."""
        path, dtype, window = self.shards_dir / f"{split}.bin", np.dtype(self.meta["dtype"]), self._window
        if self.task == "causal_lm":
            for lo, hi in shares:
                windows = torch.from_numpy(read_windows(path, dtype, starts[lo:hi], window))
                yield windows[:, :-1], windows[:, 1:]  # (rows, seq_len) each
            return
        # MLM masks the whole global batch, then slices: mask_tokens' draws (the random
        # replacements in particular) run over all rows in order, so a rank that masked only its
        # own rows would get other tokens than a single process does.
        windows = torch.from_numpy(read_windows(path, dtype, starts, window))
        g = torch.Generator().manual_seed(mask_seed(seed, k))
        inputs, labels = mask_tokens(windows, vocab_size=self.vocab_size, mask_id=self.tokenizer.mask_id,
                                     special_ids=self.tokenizer.special_ids, generator=g,
                                     mlm_probability=self.mlm_probability,
                                     word_ids=self._word_ids(split, windows, starts))
        for lo, hi in shares:
            yield inputs[lo:hi], labels[lo:hi]

    def _word_ids(self, split: str, windows: torch.Tensor, starts: np.ndarray) -> torch.Tensor | None:
        """Whole-word masking: equal ids on the tokens of one word (None = token masking)."""
        if not self.masked or not self.whole_word_mask:
            return None
        if self.start_table is not None:
            flags = self.start_table[windows.numpy()]
        else:
            flags = read_windows(self.shards_dir / f"{split}.words.bin", np.dtype(np.uint8), starts,
                                 windows.shape[1])
        return word_ids_from_starts(torch.from_numpy(flags))


class RunSpec(Protocol):
    """What ``prepare_training_data`` reads of a recipe (``rotary.train.config.TrainConfig``)."""

    task: str
    data: Any
    run_dir: Path
    progress: bool


class MainRank(Ranks, Protocol):
    @property
    def is_main(self) -> bool: ...


def prepare_training_data(cfg: RunSpec, info: MainRank) -> TrainData:
    """Shards and tokenizer for the run: given ones, or trained/prepared from the corpus (rank 0).

    With ``data.shards`` the recipe's corpus and tokenizer keys are set to what the shards were
    made from, so the run's recipe.yaml says where its data came from (not a default or the
    corpus of the recipe the shards replaced).
    """
    d = cfg.data
    if d.shards is not None:
        return _given_shards(cfg)
    if d.corpus is None:
        raise RotaryError("the recipe names no data: set data.corpus (a corpus name or path) or data.shards")
    tok_dir = Path(d.tokenizer.path) if d.tokenizer.path else cfg.run_dir / "tokenizer"
    shards = cfg.run_dir / "data"
    if info.is_main:
        from rotary.data.prepare import prepare
        from rotary.tokenizer import train_tokenizer

        # The tokenizer trains on the training split prepare will write: the same options.
        opts = d.corpus_opts()
        if d.tokenizer.path is None and not (tok_dir / "tokenizer.json").is_file():
            train_tokenizer(d.corpus, d.tokenizer.kind, d.tokenizer.vocab_size, tok_dir,
                            jieba=d.tokenizer.jieba, lowercase=d.tokenizer.lowercase,
                            val_fraction=d.val_fraction, **opts)
        prepare(d.corpus, tok_dir, shards, val_fraction=d.val_fraction, progress=cfg.progress,
                corpus_opts=opts)
    if info.world_size > 1:  # the other ranks wait for rank 0's shards
        torch.distributed.barrier()
    return TrainData(cfg.task, shards, tok_dir, d.mlm_probability, d.whole_word_mask)


def _given_shards(cfg: RunSpec) -> TrainData:
    from rotary.data.shards import read_meta

    d = cfg.data
    shards = Path(d.shards)
    if not (shards / "meta.json").is_file():
        raise RotaryError(f"no prepared shards in {shards} (meta.json missing): run `rotary prepare` first")
    meta = read_meta(shards)
    if d.tokenizer.path:
        tok_dir = Path(d.tokenizer.path)
    else:
        # prepare records the tokenizer it used; a copy next to the shards comes first.
        recorded = Path(meta["tokenizer_dir"]) if meta.get("tokenizer_dir") else None
        tok_dir = shards / "tokenizer"
        if not tok_dir.is_dir() and recorded is not None and recorded.is_dir():
            tok_dir = recorded
    if not tok_dir.is_dir():
        if d.tokenizer.path:
            raise RotaryError(f"data.tokenizer.path {tok_dir} is not a directory: give the tokenizer directory "
                              "(it holds tokenizer.json), or remove data.tokenizer.path to use the shards' own")
        raise RotaryError(f"tokenizer for {shards} not found (neither {shards / 'tokenizer'} nor the one prepare "
                          "recorded): set data.tokenizer.path")
    data = TrainData(cfg.task, shards, tok_dir, d.mlm_probability, d.whole_word_mask)
    tok = data.tokenizer
    d.corpus = meta.get("source", d.corpus)
    d.tokenizer.path, d.tokenizer.kind, d.tokenizer.vocab_size = str(tok_dir), tok.kind, tok.vocab_size
    d.tokenizer.jieba, d.tokenizer.lowercase = tok.jieba, tok.lowercase
    return data
