"""Supervised fine-tuning batches: conversations -> (ids, targets, positions, document ids).

A conversation is rendered by the chat template and tokenized once; its loss mask comes from
the template's ``{% generation %}`` spans, by character position (a token overlapping an
assistant span is scored, as transformers' ``return_assistant_tokens_mask`` decides), never
from token values: a pad id equal to EOS cannot hide the end of a turn, and the end-of-turn
token, inside the span, is always a label.

As with the classification batches, optimizer step s takes the next ``batch x processes x
accumulation`` conversations of the stream of epoch orders (a pure function of the seed and s),
so resume is exact and DDP sees what one process sees. Each micro-batch holds its conversations
one per row (right-padded) or, with ``packing``, several per row (first-fit decreasing into rows
of ``seq_len``): positions restart at every conversation and attention stays inside it
(``document_ids``), so a packed batch has the very loss of the unpacked one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rotary.chat.template import CHAT_SPECIALS, DEFAULT_TEMPLATE, TURN_END, render
from rotary.data.labelled_batches import micro_batch_indices
from rotary.data.sampler import eval_shares
from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ids, targets, positions, documents


@dataclass
class Example:
    ids: np.ndarray  # (n,) the rendered conversation's token ids
    scored: np.ndarray  # (n,) bool: the token is the assistant's (its prediction is in the loss)

    @property
    def inputs(self) -> np.ndarray:
        return self.ids[:-1]

    @property
    def targets(self) -> np.ndarray:
        """targets[t] = ids[t + 1] where that token is the assistant's, else IGNORE_INDEX."""
        return np.where(self.scored[1:], self.ids[1:], IGNORE_INDEX)


def assistant_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """True for each token whose character offsets overlap a span (spans and tokens in order)."""
    mask = np.zeros(len(offsets), dtype=bool)
    k = 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0]:
            mask[i] = True
    return mask


def encode_conversations(tokenizer: Any, template: str, conversations: Sequence[Sequence[dict[str, str]]], *,
                         where: str = "train") -> list[Example]:
    """Each conversation rendered, tokenized (no special tokens added: the template places them)
    and masked; an error names the first conversation the template cannot score."""
    specials = tokenizer.hf_special_tokens()
    rendered = []
    for i, messages in enumerate(conversations):
        r = render(template, messages, special_tokens=specials)
        if not r.assistant_spans:
            raise RotaryError(f"{where} conversation {i + 1}: the chat template marks no assistant text (it needs "
                              "{% generation %}...{% endgeneration %} around what the assistant says)")
        rendered.append(r)
    encodings = tokenizer.encode_batch_raw([r.text for r in rendered])
    return [Example(np.asarray(e.ids, dtype=np.int64), assistant_mask(e.offsets, r.assistant_spans))
            for e, r in zip(encodings, rendered)]


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: the indices of ``lengths`` grouped into rows of at most ``capacity``
    (ties keep their order, so a batch always packs the same way)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate(examples: Sequence[Example], pad_id: int, *, packing: bool, capacity: int) -> Batch:
    """(ids, targets, positions, document ids), each (rows, width): one conversation per row, or
    packed; padding has target IGNORE_INDEX and document id -1."""
    lengths = [len(e.inputs) for e in examples]
    rows = pack(lengths, capacity) if packing else [[i] for i in range(len(examples))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    documents = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, i in enumerate(row):
            n = lengths[i]
            ids[r, at:at + n] = torch.from_numpy(examples[i].inputs)
            targets[r, at:at + n] = torch.from_numpy(examples[i].targets)
            positions[r, at:at + n] = torch.arange(n)
            documents[r, at:at + n] = d
            at += n
    return ids, targets, positions, documents


def chat_template_for(setting: str | None, tokenizer: Any) -> tuple[str, str]:
    """(template, where it came from): the recipe's (text or .jinja path), the tokenizer's, or the default."""
    if setting:
        path = Path(setting)
        if setting.endswith((".jinja", ".j2")) or ("\n" not in setting and "{" not in setting):
            if not path.is_file():
                raise RotaryError(f"data.chat_template: no file {setting} (give a .jinja file or the template text)")
            return path.read_text(encoding="utf-8"), f"template {path}"
        return setting, "the recipe's template"
    if tokenizer.chat_template is not None:
        return tokenizer.chat_template, "the tokenizer's template"
    return DEFAULT_TEMPLATE, "rotary's ChatML template"


def chat_tokenizer(tokenizer: Any, template: str) -> Any:
    """``tokenizer`` with ``template`` and the template's special tokens (added after its ids)."""
    specials = [t for t in CHAT_SPECIALS if t in template]
    return tokenizer.with_chat_template(template, specials, TURN_END if TURN_END in template else None)


class SFTData:
    """Train and validation batches of conversations for ``rotary.train.loop.fit``."""

    def __init__(self, train: Sequence[Any], val: Sequence[Any], tokenizer: Any, tokenizer_dir: Path, *,
                 packing: bool = False, template_source: str = "", drop_long: bool = False) -> None:
        template = tokenizer.chat_template
        if template is None:
            raise RotaryError("SFT needs a tokenizer with a chat template (see rotary.data.sft.chat_tokenizer)")
        self.tokenizer = tokenizer
        self.tokenizer_dir = Path(tokenizer_dir)
        self.packing = bool(packing)
        self.drop_long = bool(drop_long)
        self.train_set = encode_conversations(tokenizer, template, train, where="train")
        self.val_set = encode_conversations(tokenizer, template, val, where="val")
        scored = sum(int(e.scored.sum()) for e in self.train_set)
        self.notes = [f"sft: {len(self.train_set)} train, {len(self.val_set)} val conversations ({scored} assistant "
                      f"tokens in train); chat template: {template_source or 'the tokenizer'}; packing "
                      f"{'on' if self.packing else 'off'}"]
        self.seq_len = self.batch_size = self.seed = 0

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id

    def configure(self, *, seq_len: int, batch_size: int, seed: int, model_vocab: int) -> None:
        if model_vocab < self.vocab_size:
            raise RotaryError(f"the tokenizer has {self.vocab_size} ids but the model {model_vocab}")
        if self.drop_long:
            for split in ("train", "val"):
                kept = [e for e in getattr(self, f"{split}_set") if len(e.inputs) <= seq_len]
                dropped = len(getattr(self, f"{split}_set")) - len(kept)
                if dropped:
                    self.notes.append(f"dropped {dropped} {split} conversations longer than the context "
                                      f"({seq_len + 1} tokens)")
                if not kept:
                    raise RotaryError(f"every {split} conversation is longer than the context: raise seq_len")
                setattr(self, f"{split}_set", kept)
        for split, examples in (("train", self.train_set), ("val", self.val_set)):
            for i, e in enumerate(examples):
                if len(e.inputs) > seq_len:
                    raise RotaryError(f"{split} conversation {i + 1} has {len(e.ids)} tokens, over the context of "
                                      f"{seq_len + 1} (seq_len {seq_len}): raise seq_len (up to model.max_seq_len), "
                                      "shorten that conversation, or set data.drop_long true")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    def _collate(self, examples: Sequence[Example]) -> Batch:
        return collate(examples, self.pad_id, packing=self.packing, capacity=self.seq_len)

    def train_batches(self, start_step: int, accum: int, info: Any) -> Iterator[Batch]:
        for idx in micro_batch_indices(len(self.train_set), self.batch_size, self.seed, start_step, accum, info):
            yield self._collate([self.train_set[int(i)] for i in idx])

    def eval_batches(self, max_batches: int | None, info: Any) -> Iterator[Batch]:
        """The validation conversations in order, in global batches of batch_size x processes; a
        rank whose share runs out gets a padding batch that scores nothing."""
        for share in eval_shares(len(self.val_set), self.batch_size, info.world_size, info.rank, max_batches):
            if share.lo < share.hi:
                yield self._collate(self.val_set[share.lo:share.hi])
                continue
            ids, targets, positions, documents = self._collate(self.val_set[:1])
            yield ids, torch.full_like(targets, IGNORE_INDEX), positions, documents


def prepare_sft_data(cfg: Any, info: Any) -> SFTData:
    """The run's conversations and tokenizer: the init_from run's tokenizer (or data.tokenizer.path)
    with the chat template and its special tokens, saved in the run directory by rank 0."""
    from rotary.data.sources.conversations import load_conversations
    from rotary.io import replace_dir
    from rotary.tokenizer import load_tokenizer

    d = cfg.data
    if d.corpus is None:
        raise RotaryError("the recipe names no conversations: set data.corpus (tatoeba-instruct, a .jsonl/.json/"
                          ".parquet file of messages, or hf:NAME)")
    if not d.tokenizer.path:
        raise RotaryError("sft starts from a tokenizer: set init_from (a causal_lm run) or data.tokenizer.path")
    opts = dict(d.corpus_options)
    data = load_conversations(str(d.corpus), val_fraction=d.val_fraction, max_examples=d.max_documents,
                              config=opts.get("config"), data_files=opts.get("data_files"))
    base = load_tokenizer(d.tokenizer.path)
    template, source = chat_template_for(d.chat_template, base)
    tokenizer = chat_tokenizer(base, template)
    tok_dir = Path(cfg.run_dir) / "tokenizer"
    if info.is_main:
        import shutil

        tmp = Path(cfg.run_dir) / ".tokenizer-partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save(tmp)
        replace_dir(tmp, tok_dir)
    if info.world_size > 1:
        torch.distributed.barrier()
    return SFTData(data.split("train"), data.split("val"), tokenizer, tok_dir, packing=d.packing,
                   template_source=source, drop_long=d.drop_long)
