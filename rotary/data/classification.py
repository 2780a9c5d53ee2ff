"""Classification batches: tokenized (text, label) or (text_a, text_b, label) examples, padded.

An epoch's order is a pure function of (seed, epoch) (``rotary.data.sampler.epoch_order``), the
same on every process; each rank takes every ``world_size``-th example.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rotary.data.sampler import epoch_order
from rotary.data.sources.labelled import Example
from rotary.errors import RotaryError


def _as_row(row: Sequence[Any] | Example, pair: bool) -> Sequence[Any]:
    if not isinstance(row, Example):
        return row
    if pair and row.text_pair is None:
        raise RotaryError(f"example {row.text[:30]!r}: no text_pair for a pair classifier")
    if not pair and row.text_pair is not None:
        raise RotaryError(f"example {row.text[:30]!r} has a text_pair: build the dataset with pair=True")
    return (row.text, row.text_pair, row.label) if pair else (row.text, row.label)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise RotaryError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class ClassificationDataset(torch.utils.data.Dataset):
    """Tokenized ``(text, label)`` or, with ``pair=True``, ``(text_a, text_b, label)`` examples.

    MLM tokenizers add ``[CLS] a [SEP] (b [SEP])`` with token types 0/1; causal (BPE)
    tokenizers end each text with ``<|endoftext|>`` instead. Texts are truncated to
    ``max_len`` tokens in all (longest-first for pairs). Tokenization happens once, here,
    in batches.
    """

    def __init__(self, examples: Iterable[Sequence[Any] | Example], tokenizer: Any, max_len: int,
                 pair: bool = False) -> None:
        # LabelledData's Example rows (rotary.data.sources.load_labelled) or plain tuples.
        rows = [_as_row(r, pair) for r in examples]
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
    if world_size < 1 or not 0 <= rank < world_size:
        raise RotaryError(f"rank {rank} is not in a world of size {world_size}")
    n = len(dataset)
    if shuffle:
        order = epoch_order(n, seed=_check_seed(seed), epoch=epoch)
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
