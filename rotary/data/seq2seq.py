"""Sentence pairs -> prepared shards -> batches by token count, for ``task: seq2seq``.

Prepared shards (``prepare_pairs``): per split, the source and the target token streams
(``{split}.src.npy``, ``{split}.tgt.npy``) and where each sentence starts (``*.off.npy``, one
more entry than sentences), with ``meta.json`` naming the tokenizer. Both sides end with EOS.

Tokenizers: one joint vocabulary in ``tokenizer/``, or one per side: the source's in
``tokenizer/`` and the target's in ``tokenizer/target/`` (one directory that travels with every
checkpoint, as a Marian model's holds ``source.spm`` and ``target.spm``).

Batches (``Seq2SeqData``): a micro-batch holds at most ``batch_size x seq_len`` padded tokens per
side (sentences of similar length together: length bucketing), so short sentences travel in
large batches. The plan of epoch e is a pure function of (seed, e): shuffle, sort each window of
100 micro-batches' worth of pairs by length, cut it by the token budget, shuffle the batches. Step
s takes micro-batches s·W·A .. (s+1)·W·A - 1 of the concatenated plans (W processes, A
accumulation steps; rank r takes its A in order), so a resumed run sees exactly the batches an
uninterrupted one would have.

Sentences longer than ``seq_len`` tokens are **truncated** (a target keeps its EOS), and the count
is reported when training starts: a source longer than the encoder allows is cut, not refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # source ids, source mask, labels
FORMAT = 1
TARGET_TOKENIZER = "target"  # the target side's own vocabulary, inside the (source) tokenizer directory


def load_pair_tokenizers(tokenizer_dir: str | Path) -> tuple[Any, Any]:
    """(source, target) tokenizers of a seq2seq tokenizer directory: the same one for a joint
    vocabulary, or the target's from its ``target/`` subdirectory."""
    from rotary.tokenizer import load_tokenizer

    source = load_tokenizer(tokenizer_dir)
    return source, load_target_tokenizer(tokenizer_dir, source)


def load_target_tokenizer(tokenizer_dir: str | Path, source: Any) -> Any:
    """The target side's tokenizer: its own from ``target/``, else ``source`` (a joint vocabulary)."""
    from rotary.tokenizer import load_tokenizer

    target_dir = Path(tokenizer_dir) / TARGET_TOKENIZER
    return load_tokenizer(target_dir) if target_dir.is_dir() else source


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """(pad, eos) for a seq2seq model: the tokenizer's [PAD] (else EOS) and its EOS/[SEP]."""
    eos = tokenizer.eos_id
    return (tokenizer.pad_id if tokenizer.pad_id is not None else eos), eos


def _flatten(rows: list[list[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.fromiter((t for r in rows for t in r), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


def prepare_pairs(data: Any, tokenizer_dir: str | Path, out_dir: str | Path, *, splits: tuple[str, ...] = (
        "train", "val")) -> Path:
    """Tokenize a :class:`~rotary.data.parallel.ParallelData`'s splits into ``out_dir`` (written
    to a temp directory and renamed, so a cut run leaves no shards that look complete). Each side
    is encoded with its own tokenizer (:func:`load_pair_tokenizers`)."""
    import shutil
    import tempfile

    src_tok, tgt_tok = load_pair_tokenizers(tokenizer_dir)
    out = Path(out_dir)
    dtype = np.dtype(np.uint16 if max(src_tok.vocab_size, tgt_tok.vocab_size) < 2**16 else np.uint32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    counts = {}
    try:
        for split in splits:
            pairs = data.pairs(split)
            if not pairs:
                raise RotaryError(f"the {split} split of {data.name} is empty")
            # both sides end with EOS (Marian's convention: the encoder sees where the source ends)
            src = [ids + [src_tok.eos_id] for ids in src_tok.encode_batch([p.source for p in pairs])]
            tgt = [ids + [tgt_tok.eos_id] for ids in tgt_tok.encode_batch([p.target for p in pairs])]
            for side, rows in (("src", src), ("tgt", tgt)):
                flat, offsets = _flatten(rows, dtype)
                np.save(tmp / f"{split}.{side}.npy", flat)
                np.save(tmp / f"{split}.{side}.off.npy", offsets)
            counts[split] = len(pairs)
        meta = {"format": FORMAT, "source": data.name, "source_lang": data.source_lang,
                "target_lang": data.target_lang, "pairs": counts, "dtype": dtype.name,
                "tokenizer_hash": src_tok.hash, "target_tokenizer_hash": tgt_tok.hash,
                "tokenizer_dir": str(Path(tokenizer_dir).resolve())}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class Seq2SeqData:
    """Token-budget batches of prepared pairs (see the module doc)."""

    WINDOW = 100  # micro-batches' worth of pairs sorted together by length

    def __init__(self, shards_dir: Path, tokenizer_dir: Path) -> None:
        self.shards_dir, self.tokenizer_dir = Path(shards_dir), Path(tokenizer_dir)
        meta_path = self.shards_dir / "meta.json"
        if not meta_path.is_file():
            raise RotaryError(f"no prepared pairs in {self.shards_dir} (meta.json missing)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.tokenizer, self.target_tokenizer = load_pair_tokenizers(self.tokenizer_dir)
        # shards from before per-side vocabularies recorded one hash, the joint tokenizer's
        target_hash = self.meta.get("target_tokenizer_hash", self.meta.get("tokenizer_hash"))
        if target_hash != self.meta.get("tokenizer_hash") and not self.per_side:
            raise RotaryError(f"pairs in {self.shards_dir} have a target vocabulary of their own, but "
                              f"{self.tokenizer_dir} has no {TARGET_TOKENIZER}/ directory: give the run's "
                              "tokenizer/ with both")
        if self.meta.get("tokenizer_hash") != self.tokenizer.hash or target_hash != self.target_tokenizer.hash:
            raise RotaryError(f"pairs in {self.shards_dir} were prepared with other tokenizers than "
                              f"{self.tokenizer_dir}: prepare them again")
        self.pad, self.eos = special_ids(self.tokenizer)
        self.target_pad, self.target_eos = special_ids(self.target_tokenizer)
        self.sides = {split: {side: (np.load(self.shards_dir / f"{split}.{side}.npy", mmap_mode="r"),
                                     np.load(self.shards_dir / f"{split}.{side}.off.npy"))
                              for side in ("src", "tgt")} for split in ("train", "val")}
        self.seq_len = self.budget = self.seed = 0
        self.notes: list[str] = []
        self._plans: list[list[np.ndarray]] = []
        self.head_settings: dict[str, Any] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        """The decoder's padding and start id: the target side's."""
        return self.target_pad

    @property
    def per_side(self) -> bool:
        return self.target_tokenizer is not self.tokenizer

    @property
    def model_settings(self) -> dict[str, Any]:
        """Model config keys the data decides: a target vocabulary of its own needs its own embedding."""
        if not self.per_side:
            return {}
        return {"decoder_vocab_size": self.target_tokenizer.vocab_size, "share_embeddings": False}

    def lengths(self, split: str) -> np.ndarray:
        """(pairs,) the padded width each pair needs: its longer side, cut at seq_len."""
        src, tgt = (np.diff(self.sides[split][s][1]) for s in ("src", "tgt"))
        return np.minimum(np.maximum(src, tgt), self.seq_len)

    def configure(self, *, seq_len: int, batch_size: int, seed: int, model_vocab: int,
                  model_target_vocab: int | None = None) -> None:
        if model_vocab < self.vocab_size:
            raise RotaryError(f"sources use {self.vocab_size} token ids but the model's encoder has {model_vocab}: "
                              "remove model.vocab_size")
        target_vocab = model_target_vocab if model_target_vocab is not None else model_vocab
        if target_vocab < self.target_tokenizer.vocab_size:
            raise RotaryError(f"targets use {self.target_tokenizer.vocab_size} token ids but the model's decoder "
                              f"has {target_vocab}: remove model.decoder_vocab_size")
        if seq_len < 2:
            raise RotaryError(f"seq_len must be at least 2 for translation, got {seq_len}")
        self.seq_len, self.budget, self.seed = seq_len, batch_size * seq_len, seed
        self._plans = []
        for split in ("train", "val"):
            for side, what in (("src", "sources"), ("tgt", "targets")):
                n = int((np.diff(self.sides[split][side][1]) > seq_len).sum())
                if n:
                    self.notes.append(f"{n} {split} {what} longer than seq_len={seq_len} tokens are truncated")

    # -- batches ---------------------------------------------------------------------------------
    def _cut(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Consecutive runs of ``order`` whose rows x longest length fit the token budget."""
        batches, start, widest = [], 0, 0
        for i, idx in enumerate(order):
            widest_if = max(widest, int(lengths[idx]))
            if i > start and (i - start + 1) * widest_if > self.budget:
                batches.append(order[start:i])
                start, widest_if = i, int(lengths[idx])
            widest = widest_if
        batches.append(order[start:])
        return batches

    def _plan(self, epoch: int) -> list[np.ndarray]:
        while len(self._plans) <= epoch:
            e = len(self._plans)
            rng = np.random.default_rng([self.seed, e])
            lengths = self.lengths("train")
            order = rng.permutation(len(lengths))
            per_window = max(1, self.budget // max(1, int(lengths.mean()))) * self.WINDOW
            batches = []
            for lo in range(0, len(order), per_window):
                window = order[lo:lo + per_window]
                window = window[np.argsort(lengths[window], kind="stable")]
                batches += self._cut(window, lengths)
            self._plans.append([batches[i] for i in rng.permutation(len(batches))])
        return self._plans[epoch]

    def _micro(self, m: int) -> np.ndarray:
        epoch = 0
        while m >= len(self._plan(epoch)):
            m -= len(self._plan(epoch))
            epoch += 1
        return self._plan(epoch)[m]

    def train_batches(self, start_step: int, accum: int, info: Any) -> Iterator[Batch]:
        step = start_step
        while True:
            first = (step * info.world_size + info.rank) * accum
            for a in range(accum):
                yield self._batch("train", self._micro(first + a))
            step += 1

    def eval_batches(self, max_batches: int | None, info: Any) -> Iterator[Batch]:
        """The validation pairs sorted by length, cut by the budget; rank r takes batches r, r + W,
        ... and a rank short of one gets a padding batch (no scored tokens), so all run alike."""
        lengths = self.lengths("val")
        batches = self._cut(np.argsort(lengths, kind="stable"), lengths)
        # a fixed order (the same for every run), so a capped evaluation is not the shortest pairs only
        batches = [batches[i] for i in np.random.default_rng(0).permutation(len(batches))]
        if max_batches is not None:
            batches = batches[: max_batches * info.world_size]
        W = info.world_size
        for b in range(0, -(-len(batches) // W) * W, W):
            k = b + info.rank
            if k < len(batches):
                yield self._batch("val", batches[k])
            else:
                src = torch.full((1, 1), self.pad)
                yield src, torch.ones_like(src), torch.full((1, 1), IGNORE_INDEX)

    def _batch(self, split: str, rows: np.ndarray) -> Batch:
        L = self.seq_len
        out = []
        for side, eos in (("src", self.eos), ("tgt", self.target_eos)):
            flat, offsets = self.sides[split][side]
            seqs = []
            for i in rows:
                ids = np.asarray(flat[offsets[i]:offsets[i + 1]], dtype=np.int64)
                if len(ids) > L:  # both sides end with EOS, kept when cut
                    ids = np.concatenate([ids[: L - 1], [eos]])
                seqs.append(ids)
            width = max(len(s) for s in seqs)
            fill = self.pad if side == "src" else IGNORE_INDEX
            table = np.full((len(seqs), width), fill, dtype=np.int64)
            for j, s in enumerate(seqs):
                table[j, : len(s)] = s
            out.append(torch.from_numpy(table))
        src, labels = out
        # the mask from lengths: the pad id may also be a real token (BPE pads with its EOS)
        lengths = torch.from_numpy(np.minimum(np.diff(self.sides[split]["src"][1])[rows], L))
        mask = (torch.arange(src.shape[1])[None, :] < lengths[:, None]).long()
        return src, mask, labels
