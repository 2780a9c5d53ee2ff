"""Batches for training and evaluation: LM windows, the DDP block sampler, MLM masking, classification.

Every random batch is a pure function of ``(seed, rank, world_size, step)``: batch ``k`` can be
rebuilt without replaying batches ``0..k-1``, which is what exact resume relies on
(``start_step=k``), and two runs with the same seed see the same data.

Each rank draws its windows from its own contiguous block of the token shard (rank ``r`` of
``W`` owns tokens ``[r*n/W, (r+1)*n/W)``): random reads stay within one region of a large
memmap instead of touching the whole file from every process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rotary.data.sampler import lm_window_starts
from rotary.errors import RotaryError

IGNORE_INDEX = -100
# Re-map a memmap every so many batches: pages touched through one long-lived mapping count
# towards the process's RSS until it is dropped (nanoGPT #287).
REOPEN_EVERY = 1000


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise RotaryError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise RotaryError(f"rank {rank} is not in a world of size {world_size}")


def step_rng(seed: int, rank: int, world_size: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one batch: a pure function of its arguments (no carried state)."""
    return np.random.default_rng(np.random.SeedSequence([_check_seed(seed), rank, world_size, step, stream]))


def step_torch_generator(seed: int, rank: int, world_size: int, step: int, stream: int = 1) -> torch.Generator:
    state = np.random.SeedSequence([_check_seed(seed), rank, world_size, step, stream]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def rank_block(n_tokens: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the contiguous block of tokens that ``rank`` samples from."""
    _check_rank(rank, world_size)
    size = n_tokens // world_size
    return rank * size, (rank + 1) * size


class _Source:
    """A token array that re-maps itself every ``REOPEN_EVERY`` uses when it is a file memmap."""

    def __init__(self, tokens: np.ndarray, reopen_every: int = REOPEN_EVERY) -> None:
        self.tokens = tokens
        self.reopen_every = reopen_every
        self.uses = 0
        self._spec = None
        if isinstance(tokens, np.memmap) and getattr(tokens, "filename", None):
            self._spec = (tokens.filename, tokens.dtype, tokens.offset, tokens.shape)

    def get(self) -> np.ndarray:
        self.uses += 1
        if self._spec is not None and self.uses % self.reopen_every == 0:
            filename, dtype, offset, shape = self._spec
            self.tokens = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape)
        return self.tokens


def _gather(tokens: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    # One slice per row (B slices, not B*T fancy indices): contiguous reads from the memmap.
    return np.stack([tokens[o:o + length] for o in offsets.tolist()])


def _random_offsets(n_tokens: int, length: int, batch_size: int, seed: int, rank: int, world_size: int,
                    step: int) -> np.ndarray:
    """This rank's rows of the global batch ``step`` (the trainer's sampler: see rotary.data.sampler)."""
    _check_rank(rank, world_size)
    if n_tokens < length:
        raise RotaryError(f"the token shard ({n_tokens:,} tokens) is too small for windows of {length} tokens")
    starts = lm_window_starts(n_tokens, length, batch_size * world_size, seed=seed, index=step)
    return starts[rank * batch_size:(rank + 1) * batch_size]


# ---------------------------------------------------------------------------------------------
# Causal LM
# ---------------------------------------------------------------------------------------------


class LMWindows(torch.utils.data.Dataset):
    """Non-overlapping windows of ``seq_len + 1`` tokens (stride ``seq_len``), as ``(x, y)``.

    Window ``i`` covers tokens ``[i*seq_len, i*seq_len + seq_len]``: consecutive windows share
    one token, so every token except the first is a target exactly once.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if seq_len < 1:
            raise RotaryError(f"seq_len must be >= 1, got {seq_len}")
        if len(tokens) < seq_len + 1:
            raise RotaryError(f"the token shard has {len(tokens):,} tokens, fewer than one window of {seq_len + 1}")
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def window(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len + 1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self.window(i).astype(np.int64))
        return w[:-1], w[1:]


def lm_batch(tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int, step: int, rank: int = 0,
             world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of ``random_lm_batches``, on its own."""
    offsets = _random_offsets(len(tokens), seq_len + 1, batch_size, seed, rank, world_size, step)
    w = torch.from_numpy(_gather(tokens, offsets, seq_len + 1).astype(np.int64))
    return w[:, :-1], w[:, 1:]


def random_lm_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int, rank: int = 0,
                      world_size: int = 1, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(x, y)`` batches of random windows, each ``(batch_size, seq_len)`` torch.long.

    ``y`` is ``x`` shifted by one token. Batch ``k`` depends only on (seed, rank, world_size, k);
    resuming at ``start_step=k`` yields exactly the batches a run that never stopped would.
    """
    if seq_len < 1 or batch_size < 1:
        raise RotaryError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    _check_seed(seed)
    rank_block(len(tokens), rank, world_size)
    source = _Source(tokens)
    step = start_step
    while True:
        yield lm_batch(source.get(), seq_len, batch_size, seed=seed, step=step, rank=rank, world_size=world_size)
        step += 1


def _rank_windows(n_tokens: int, seq_len: int, rank: int, world_size: int, stride_extra: int) -> range:
    """The window indices of ``rank``: an equal, contiguous share for every rank (DDP-safe eval)."""
    _check_rank(rank, world_size)
    total = (n_tokens - stride_extra) // seq_len if n_tokens >= seq_len + stride_extra else 0
    per_rank = total // world_size
    if per_rank == 0:
        raise RotaryError(f"the token shard ({n_tokens:,} tokens) has fewer than {world_size} window(s) "
                          f"of {seq_len + stride_extra} tokens")
    return range(rank * per_rank, (rank + 1) * per_rank)


def sequential_lm_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                          max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every non-overlapping window once, in order, for evaluation: deterministic, no seed.

    Ranks get contiguous, equally long runs of windows (so they all run the same number of
    batches); the last batch may be smaller than ``batch_size``.
    """
    if seq_len < 1 or batch_size < 1:
        raise RotaryError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    windows = _rank_windows(len(tokens), seq_len, rank, world_size, stride_extra=1)
    for b, first in enumerate(range(windows.start, windows.stop, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        idx = np.arange(first, min(first + batch_size, windows.stop)) * seq_len
        w = torch.from_numpy(_gather(tokens, idx, seq_len + 1).astype(np.int64))
        yield w[:, :-1], w[:, 1:]


# ---------------------------------------------------------------------------------------------
# Masked LM
# ---------------------------------------------------------------------------------------------


def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_id: int, special_ids: Iterable[int],
                generator: torch.Generator, mlm_probability: float = 0.15,
                word_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose ``mlm_probability`` of the tokens; of those 80% -> [MASK], 10% -> a
    random token, 10% unchanged. Labels are the original ids there and -100 everywhere else.

    Special tokens are never chosen, and random replacements are never special tokens.
    ``word_ids`` (same shape; equal ids on consecutive tokens = one word) turns on whole-word
    masking: a word is chosen or not as a whole.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise RotaryError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if input_ids.dim() != 2:
        raise RotaryError(f"mask_tokens expects (batch, seq_len) ids, got shape {tuple(input_ids.shape)}")
    ids = input_ids.clone()
    specials = torch.as_tensor(sorted(set(special_ids)), dtype=ids.dtype)
    special = torch.isin(ids, specials)
    draw = torch.rand(ids.shape, generator=generator)
    if word_ids is None:
        chosen = draw < mlm_probability
    else:
        if word_ids.shape != ids.shape:
            raise RotaryError(f"word_ids shape {tuple(word_ids.shape)} != input_ids shape {tuple(ids.shape)}")
        starts = torch.ones_like(ids, dtype=torch.bool)
        starts[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        # Index of the first token of each token's word: a running max over start positions.
        first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        chosen = draw.gather(1, first) < mlm_probability
    chosen &= ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    how = torch.rand(ids.shape, generator=generator)
    ids[chosen & (how < 0.8)] = mask_id
    randomize = chosen & (how >= 0.8) & (how < 0.9)
    n_random = int(randomize.sum())
    if n_random:
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[specials[specials < vocab_size].long()] = False
        candidates = allowed.nonzero().squeeze(1).to(ids.dtype)
        ids[randomize] = candidates[torch.randint(len(candidates), (n_random,), generator=generator)]
    return ids, labels


def wordpiece_start_table(tokenizer: Any) -> np.ndarray:
    """Per vocabulary id: 1 if the token starts a word (WordPiece: not a ``##`` continuation)."""
    table = np.ones(tokenizer.vocab_size, dtype=np.uint8)
    for token, i in tokenizer.backend.get_vocab(with_added_tokens=True).items():
        if token.startswith("##"):
            table[i] = 0
    return table


def _mlm_batch(windows: np.ndarray, flags: np.ndarray | None, *, cls_id: int | None, vocab_size: int,
               mask_id: int, special_ids: Sequence[int], mlm_probability: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(windows.astype(np.int64))
    word_ids = None
    if flags is not None:
        f = torch.from_numpy(flags.astype(np.int64))
        f[:, 0] = 1  # a window may open mid-word: that partial word is a word of its own
        if cls_id is not None:
            f = torch.cat([torch.ones(len(f), 1, dtype=f.dtype), f], dim=1)
        word_ids = f.cumsum(dim=1)
    if cls_id is not None:
        ids = torch.cat([torch.full((len(ids), 1), cls_id, dtype=ids.dtype), ids], dim=1)
    return mask_tokens(ids, vocab_size=vocab_size, mask_id=mask_id, special_ids=special_ids, generator=generator,
                       mlm_probability=mlm_probability, word_ids=word_ids)


def _word_flags(tokens_window: np.ndarray, word_starts: np.ndarray | None, start_table: np.ndarray | None,
                offsets: np.ndarray, length: int) -> np.ndarray | None:
    if word_starts is not None:
        return _gather(word_starts, offsets, length)
    if start_table is not None:
        return start_table[tokens_window]
    return None


def mlm_batch(tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int, step: int, vocab_size: int,
              mask_id: int, special_ids: Sequence[int], cls_id: int | None = None,
              word_starts: np.ndarray | None = None, start_table: np.ndarray | None = None,
              mlm_probability: float = 0.15, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of ``random_mlm_batches``, on its own."""
    body = seq_len - (1 if cls_id is not None else 0)
    if body < 1:
        raise RotaryError(f"seq_len {seq_len} leaves no room for text after [CLS]")
    if word_starts is not None and len(word_starts) != len(tokens):
        raise RotaryError(f"word_starts has {len(word_starts):,} entries for {len(tokens):,} tokens")
    offsets = _random_offsets(len(tokens), body, batch_size, seed, rank, world_size, step)
    windows = _gather(tokens, offsets, body)
    flags = _word_flags(windows, word_starts, start_table, offsets, body)
    gen = step_torch_generator(seed, rank, world_size, step)
    return _mlm_batch(windows, flags, cls_id=cls_id, vocab_size=vocab_size, mask_id=mask_id,
                      special_ids=special_ids, mlm_probability=mlm_probability, generator=gen)


def random_mlm_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int, vocab_size: int,
                       mask_id: int, special_ids: Sequence[int], cls_id: int | None = None,
                       word_starts: np.ndarray | None = None, start_table: np.ndarray | None = None,
                       mlm_probability: float = 0.15, rank: int = 0, world_size: int = 1,
                       start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(inputs, labels)`` batches of shape ``(batch_size, seq_len)`` for masked LM.

    Windows are random spans of the shard (documents separated by [SEP]), prefixed with
    ``cls_id`` when given. Whole-word masking uses ``word_starts`` (the ``*.words.bin`` shard
    that ``prepare`` writes for jieba tokenizers) or ``start_table`` (per-id flags, e.g.
    ``wordpiece_start_table``). Like ``random_lm_batches``, batch ``k`` is a pure function of
    (seed, rank, world_size, k), masks included.
    """
    if batch_size < 1:
        raise RotaryError(f"batch_size must be >= 1, got {batch_size}")
    _check_seed(seed)
    rank_block(len(tokens), rank, world_size)
    source = _Source(tokens)
    words = _Source(word_starts) if word_starts is not None else None
    step = start_step
    while True:
        yield mlm_batch(source.get(), seq_len, batch_size, seed=seed, step=step, vocab_size=vocab_size,
                        mask_id=mask_id, special_ids=special_ids, cls_id=cls_id,
                        word_starts=words.get() if words is not None else None, start_table=start_table,
                        mlm_probability=mlm_probability, rank=rank, world_size=world_size)
        step += 1


def sequential_mlm_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *, vocab_size: int, mask_id: int,
                           special_ids: Sequence[int], cls_id: int | None = None, seed: int = 0,
                           word_starts: np.ndarray | None = None, start_table: np.ndarray | None = None,
                           mlm_probability: float = 0.15, rank: int = 0, world_size: int = 1,
                           max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows in order with fixed masks (seeded per batch): a stable MLM eval set."""
    body = seq_len - (1 if cls_id is not None else 0)
    if body < 1 or batch_size < 1:
        raise RotaryError(f"seq_len {seq_len} / batch_size {batch_size} leave no room for text")
    windows_idx = _rank_windows(len(tokens), body, rank, world_size, stride_extra=0)
    for b, first in enumerate(range(windows_idx.start, windows_idx.stop, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        offsets = np.arange(first, min(first + batch_size, windows_idx.stop)) * body
        windows = _gather(tokens, offsets, body)
        flags = _word_flags(windows, word_starts, start_table, offsets, body)
        gen = step_torch_generator(seed, rank, world_size, b, stream=2)
        yield _mlm_batch(windows, flags, cls_id=cls_id, vocab_size=vocab_size, mask_id=mask_id,
                         special_ids=special_ids, mlm_probability=mlm_probability, generator=gen)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


class ClassificationDataset(torch.utils.data.Dataset):
    """Tokenized ``(text, label)`` or, with ``pair=True``, ``(text_a, text_b, label)`` examples.

    MLM tokenizers add ``[CLS] a [SEP] (b [SEP])`` with token types 0/1; causal (BPE)
    tokenizers end each text with ``<|endoftext|>`` instead. Texts are truncated to
    ``max_len`` tokens in all (longest-first for pairs). Tokenization happens once, here,
    in batches.
    """

    def __init__(self, examples: Iterable[Sequence[Any]], tokenizer: Any, max_len: int, pair: bool = False) -> None:
        rows = list(examples)
        if not rows:
            raise RotaryError("no classification examples (empty split?)")
        width = 3 if pair else 2
        for i, row in enumerate(rows):
            if len(row) != width:
                raise RotaryError(f"example {i}: expected {'(text_a, text_b, label)' if pair else '(text, label)'}, "
                                  f"got {len(row)} fields")
            label = row[-1]
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise RotaryError(f"example {i}: the label must be a non-negative integer, got {label!r}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pair = pair
        texts = [r[0] for r in rows]
        pairs = [r[1] for r in rows] if pair else None
        self.labels = np.asarray([int(r[-1]) for r in rows], dtype=np.int64)
        causal = getattr(tokenizer, "is_causal", False)
        extra = (2 if pair else 1) if causal else 0  # <|endoftext|> after each text
        if max_len <= extra:
            raise RotaryError(f"max_len {max_len} leaves no room for text")
        self.input_ids: list[np.ndarray] = []
        self.token_type_ids: list[np.ndarray] = []
        for start in range(0, len(rows), 4096):
            chunk_pairs = pairs[start:start + 4096] if pairs is not None else None
            encs = tokenizer.encode_for_model(texts[start:start + 4096], chunk_pairs, max_len=max_len - extra)
            for e in encs:
                ids = np.asarray(e.ids, dtype=np.int64)
                types = np.asarray(e.type_ids, dtype=np.int64)
                if causal:
                    ids, types = self._add_eos(e, ids, types, tokenizer.eos_id)
                self.input_ids.append(ids)
                self.token_type_ids.append(types)

    @staticmethod
    def _add_eos(enc: Any, ids: np.ndarray, types: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
        # None (a special token) becomes NaN: the conversion runs in C, not per token in Python.
        seq = np.asarray(enc.sequence_ids, dtype=np.float64)
        if len(ids) and (seq == 1).any():
            cut = int(np.argmax(seq == 1))
            ids = np.concatenate([ids[:cut], [eos], ids[cut:], [eos]])
            types = np.concatenate([np.zeros(cut + 1, np.int64), np.ones(len(types) - cut + 1, np.int64)])
        else:
            ids = np.concatenate([ids, [eos]])
            types = np.zeros(len(ids), np.int64)
        return ids, types

    @property
    def num_labels(self) -> int:
        return int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "token_type_ids": self.token_type_ids[i], "label": int(self.labels[i])}


def collate_classification(batch: Sequence[dict[str, Any]], pad_id: int | None) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch: input_ids, attention_mask, token_type_ids, labels."""
    if not batch:
        raise RotaryError("empty batch")
    pad = 0 if pad_id is None else pad_id
    longest = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    types = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, b in enumerate(batch):  # one row copy per example
        n = len(b["input_ids"])
        ids[i, :n] = torch.as_tensor(b["input_ids"])
        mask[i, :n] = 1
        types[i, :n] = torch.as_tensor(b["token_type_ids"])
    labels = torch.as_tensor([b["label"] for b in batch], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def classification_batches(dataset: ClassificationDataset, batch_size: int, *, seed: int = 0, epoch: int = 0,
                           shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                           pad_id: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of padded batches. The order is a pure function of (seed, epoch): the same on
    every process, each rank taking every ``world_size``-th example (the remainder of an
    uneven split is dropped so that all ranks run the same number of batches)."""
    if batch_size < 1:
        raise RotaryError(f"batch_size must be >= 1, got {batch_size}")
    _check_rank(rank, world_size)
    n = len(dataset)
    if shuffle:
        order = np.random.default_rng(np.random.SeedSequence([_check_seed(seed), epoch])).permutation(n)
    else:
        order = np.arange(n)
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]
    if pad_id is None:
        tok = dataset.tokenizer
        pad_id = tok.pad_id if tok.pad_id is not None else getattr(tok, "eos_id", 0)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        yield collate_classification([dataset[int(i)] for i in idx], pad_id)
