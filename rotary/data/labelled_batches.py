"""The batches fine-tuning trains on: labelled examples -> step-indexed classification batches.

Like the LM batches (``rotary.data.lm``), the global batch of optimizer step s is a pure function
of (seed, s): the examples are read in epoch orders (``epoch_order``) laid end to end, step s
takes the next ``rows`` of that stream, and each process (and each accumulation micro-step) takes
its contiguous rows of it. So resume is exact and 2 processes see what 1 process sees.
Evaluation runs every rank through the same number of batches; rows past the end are padding
whose label is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rotary.data.classification import ClassificationDataset, collate_classification
from rotary.data.sampler import epoch_order, eval_shares
from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ids, mask, types, labels


def stream_indices(n: int, seed: int, start: int, count: int) -> np.ndarray:
    """Positions ``start .. start+count-1`` of the endless stream of epoch orders of n examples."""
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        epoch, offset = divmod(start + filled, n)
        take = min(n - offset, count - filled)
        out[filled:filled + take] = epoch_order(n, seed=seed, epoch=epoch)[offset:offset + take]
        filled += take
    return out


def micro_batch_indices(n: int, batch_size: int, seed: int, start_step: int, accum: int,
                        info: Any) -> Iterator[np.ndarray]:
    """The example indices of this rank's micro-batches, step ``start_step`` on, endlessly: step s
    takes the next ``batch_size x processes x accum`` positions of the stream of epoch orders,
    and rank r's micro-batch a holds its rows [(r*accum + a)*B, (r*accum + a + 1)*B)."""
    rows = batch_size * info.world_size * accum
    step = start_step
    while True:
        idx = stream_indices(n, seed, step * rows, rows)
        for a in range(accum):
            lo = (info.rank * accum + a) * batch_size
            yield idx[lo:lo + batch_size]
        step += 1


class ClassificationData:
    """Train and validation batches of a labelled corpus for ``rotary.train.loop.fit``."""

    def __init__(self, train: Sequence[Any], val: Sequence[Any], tokenizer: Any, tokenizer_dir: Path,
                 label_names: Sequence[str], *, max_len: int, pair: bool = False) -> None:
        def rows(examples: Sequence[Any]) -> list[tuple]:
            return [(e.text, e.text_pair, e.label) if pair else (e.text, e.label) for e in examples]

        if not train or not val:
            raise RotaryError("fine-tuning needs a train and a validation split with examples in each")
        if len(label_names) < 2:
            raise RotaryError(f"the training split has {len(label_names)} label: a classifier needs at least 2")
        self.max_len = max_len
        self.tokenizer = tokenizer
        self.tokenizer_dir = Path(tokenizer_dir)
        self.label_names = list(label_names)
        self.train_set = ClassificationDataset(rows(train), tokenizer, max_len, pair=pair)
        self.val_set = ClassificationDataset(rows(val), tokenizer, max_len, pair=pair)
        self.truncated = {name: _count_truncated(ds, max_len) for name, ds in
                          (("train", self.train_set), ("val", self.val_set))}
        self.batch_size = self.seed = 0

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def pad_id(self) -> int | None:
        return self.tokenizer.pad_id

    @property
    def head_settings(self) -> dict[str, Any]:
        return {"num_labels": len(self.label_names), "label_names": self.label_names, "max_len": self.max_len}

    def configure(self, *, seq_len: int, batch_size: int, seed: int, model_vocab: int) -> None:
        if model_vocab < self.vocab_size:
            raise RotaryError(f"the tokenizer has {self.vocab_size} ids but the model {model_vocab}: "
                              "fine-tune with the tokenizer the model was trained with")
        self.batch_size, self.seed = batch_size, seed

    def _collate(self, dataset: ClassificationDataset, idx: np.ndarray) -> Batch:
        pad = self.pad_id if self.pad_id is not None else 0
        b = collate_classification([dataset[int(i)] for i in idx], pad)
        return b["input_ids"], b["attention_mask"], b["token_type_ids"], b["labels"]

    def train_batches(self, start_step: int, accum: int, info: Any) -> Iterator[Batch]:
        for idx in micro_batch_indices(len(self.train_set), self.batch_size, self.seed, start_step, accum, info):
            yield self._collate(self.train_set, idx)

    def eval_batches(self, max_batches: int | None, info: Any) -> Iterator[Batch]:
        """The validation examples in order, in global batches of batch_size x processes; a rank
        whose rows run out gets padding rows labelled -100 (they count nothing)."""
        B, n = self.batch_size, len(self.val_set)
        for share in eval_shares(n, B, info.world_size, info.rank, max_batches):
            idx = np.arange(share.lo, share.lo + B)
            real = idx < n
            batch = self._collate(self.val_set, np.where(real, idx, 0))
            labels = torch.where(torch.from_numpy(real), batch[3], torch.full_like(batch[3], IGNORE_INDEX))
            yield batch[0], batch[1], batch[2], labels


def _count_truncated(dataset: ClassificationDataset, max_len: int) -> int:
    """Examples that filled max_len: they were (most likely) cut, and the log says how many."""
    return int(sum(len(ids) >= max_len for ids in dataset.input_ids))
