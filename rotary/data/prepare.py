"""Text -> token shards: ``train.bin`` / ``val.bin`` (flat token ids) plus ``meta.json``.

The pipeline: read the corpus in batches, encode them (``rotary.data.encode``) while the next
batch is read, append the ids to the split's shard. Tokenizers that pre-split with jieba run in
a pool of processes instead, since their word segmentation loop is Python. The on-disk format
and reading it back are ``rotary.data.shards``.

Every file is written to a temp name and renamed; ``meta.json`` is written last, so a directory
without it is never taken as complete. Re-running with the same inputs does nothing; a
different tokenizer is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotary.data.shards import (
    PREPARE_FORMAT_VERSION,
    SPLITS,
    choose_dtype,
    read_meta_if_any,
    shard_path,
    shards_complete,
)
from rotary.data.write_shards import jieba_pool, partial_path, write_splits
from rotary.errors import RotaryError
from rotary.io import atomic_write_text, fsync_dir

# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedInfo:
    """What ``prepare`` made (or found already made)."""

    out_dir: Path
    meta: dict[str, Any]
    skipped: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    def split(self, name: str) -> dict[str, Any]:
        return self.meta["splits"][name]

    def summary_table(self) -> str:
        rows = [("split", "documents", "characters", "bytes", "tokens", "bytes/token", "replaced")]
        for s in SPLITS:
            m = self.meta["splits"][s]
            bpt = f"{m['bytes'] / m['tokens']:.2f}" if m["tokens"] else "-"
            rows.append((s, f"{m['documents']:,}", f"{m['characters']:,}", f"{m['bytes']:,}",
                         f"{m['tokens']:,}", bpt, f"{m['undecodable_replacements']:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("tokens include one separator after every document")
        total_bytes = sum(self.meta["splits"][s]["bytes"] for s in SPLITS)
        total_tokens = sum(self.meta["splits"][s]["tokens"] for s in SPLITS)
        tail = (f"dtype {self.meta['dtype']}, vocab {self.meta['vocab_size']:,}, tokenizer "
                f"{self.meta['tokenizer_hash']}, source {self.meta['source']}")
        lines.append(tail)
        if self.seconds > 0 and not self.skipped:
            lines.append(f"{self.seconds:.1f} s: {total_bytes / self.seconds / 1e6:.2f} MB/s, "
                         f"{total_tokens / self.seconds:,.0f} tokens/s")
        replaced = sum(self.meta["splits"][s]["undecodable_replacements"] for s in SPLITS)
        if replaced:
            lines.append(f"warning: {replaced:,} undecodable byte sequence(s) were replaced with U+FFFD")
        lines.extend(self.notes)
        return "\n".join(lines)


def _inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(corpus: Any, tokenizer_dir: str | Path, out_dir: str | Path, *, val_fraction: float | None = None,
            num_workers: int | None = None, batch_docs: int = 1024, progress: bool = True,
            dtype: str | None = None, overwrite: bool = False, corpus_opts: dict[str, Any] | None = None,
            print_summary: bool | None = None) -> PreparedInfo:
    """Tokenize ``corpus`` (a name, path or Corpus) with the tokenizer in ``tokenizer_dir`` into ``out_dir``.

    ``num_workers`` sets the tokenizer's threads (or jieba processes); default: all cores.
    Tokenizers that use jieba also write ``{split}.words.bin``: one uint8 per token, 1 where a
    word starts, for whole-word masking.
    """
    from rotary.data.sources import load_corpus
    from rotary.tokenizer import load_tokenizer

    start_time = time.perf_counter()
    print_summary = progress if print_summary is None else print_summary
    if batch_docs < 1:
        raise RotaryError(f"batch_docs must be >= 1, got {batch_docs}")
    workers = num_workers or os.cpu_count() or 1
    if workers < 1:
        raise RotaryError(f"num_workers must be >= 1, got {num_workers}")
    if num_workers:
        # Read by the Rust thread pool when it starts; has no effect once it has started.
        os.environ.setdefault("RAYON_NUM_THREADS", str(num_workers))
    tok = load_tokenizer(tokenizer_dir)
    corpus = load_corpus(corpus, val_fraction=val_fraction, **(corpus_opts or {}))
    dtype = choose_dtype(tok.vocab_size, dtype)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RotaryError(f"--out {out} exists and is not a directory")
    inputs = {"version": PREPARE_FORMAT_VERSION, "tokenizer_hash": tok.hash, "corpus": corpus.fingerprint(),
              "dtype": dtype, "word_starts": tok.jieba}
    notes: list[str] = []
    done = _up_to_date(out, tok, tokenizer_dir, corpus, _inputs_hash(inputs), overwrite, notes)
    if done is not None:
        if print_summary:
            print(done.notes[0])
        return done
    made = not out.exists()
    _clear(out)
    try:
        with jieba_pool(tok.jieba, workers, tokenizer_dir) as pool:
            splits = write_splits(corpus, tok, out, dtype, batch_docs, pool, workers, progress, start_time)
        _check_splits(splits, corpus, out, notes)
    except BaseException:
        if made:  # a failed first prepare leaves no directory that looks like output
            shutil.rmtree(out, ignore_errors=True)
        raise
    meta = {
        "version": PREPARE_FORMAT_VERSION,
        "source": corpus.name,
        "source_options": {**({"val_fraction": val_fraction} if val_fraction is not None else {}),
                           **(corpus_opts or {})},  # to read the same documents back (rotary demo)
        "source_description": corpus.description,
        "tokenizer_hash": tok.hash,
        "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
        "tokenizer_kind": tok.kind,
        "pre_tokenizer": "jieba" if tok.jieba else None,
        "vocab_size": tok.vocab_size,
        "dtype": dtype,
        "eos_id": tok.eos_id,
        "special_ids": tok.special_ids,
        "pad_id": tok.pad_id,
        "mask_id": tok.mask_id,
        "cls_id": tok.cls_id,
        "sep_id": tok.sep_id,
        "separator": "eos after every document",
        "word_starts": tok.jieba,
        "splits": splits,
        # Flat copies of the per-split numbers, for readers that want one key per number.
        **{f"{k}_{s}": splits[s][k] for s in SPLITS for k in ("tokens", "documents", "characters", "bytes")},
        "undecodable_replacements": sum(splits[s]["undecodable_replacements"] for s in SPLITS),
        "inputs_hash": _inputs_hash(inputs),
        "inputs": inputs,
    }
    _publish(out, meta)
    info = PreparedInfo(out, meta, seconds=time.perf_counter() - start_time, notes=notes)
    if print_summary:
        print(info.summary_table())
    return info


def _up_to_date(out: Path, tok: Any, tokenizer_dir: str | Path, corpus: Any, inputs_hash: str, overwrite: bool,
                notes: list[str]) -> PreparedInfo | None:
    """The existing shards when they are complete and made from the same inputs (nothing to do);
    shards of another tokenizer or corpus are an error without ``overwrite``."""
    existing = read_meta_if_any(out)
    if existing is None or overwrite:
        return None
    if existing.get("tokenizer_hash") != tok.hash:
        raise RotaryError(
            f"{out} was prepared with another tokenizer (hash {existing.get('tokenizer_hash')}, "
            f"from {existing.get('tokenizer_dir')}) but {tokenizer_dir} has hash {tok.hash}: "
            "use a new --out or pass --overwrite")
    if existing.get("source") != corpus.name:
        raise RotaryError(f"{out} holds corpus '{existing.get('source')}', not '{corpus.name}': "
                          "use a new --out or pass --overwrite")
    if existing.get("inputs_hash") == inputs_hash and shards_complete(out, existing):
        return PreparedInfo(out, existing, skipped=True,
                            notes=[f"nothing to do: {out} is up to date (same corpus, tokenizer and options)"])
    notes.append("inputs changed since the last run: rebuilt")
    return None


def _clear(out: Path) -> None:
    """From here on the directory is incomplete until the new meta.json lands: remove the old one,
    what a run killed outright left (partial shards, temp files) and the shards of an earlier
    run, which no meta.json describes any more; nothing in ``out`` may look like usable shards."""
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / "meta.json").unlink()
    stale_files = [*out.glob(".*.bin.*.tmp"), *out.glob(".*.bin.partial"), *out.glob(".meta.json.*.tmp"),
                   *(shard_path(out, s, w) for s in SPLITS for w in (False, True))]
    for stale in stale_files:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _check_splits(splits: dict[str, dict[str, Any]], corpus: Any, out: Path, notes: list[str]) -> None:
    """An empty training split, or an empty validation split the corpus did not ask for, is an
    error (the partial shards go)."""
    def remove_shards() -> None:
        for s in SPLITS:
            for words in (False, True):
                with contextlib.suppress(FileNotFoundError):
                    partial_path(shard_path(out, s, words)).unlink()

    if splits["train"]["documents"] == 0:
        remove_shards()
        raise RotaryError(f"corpus '{corpus.name}' has no text in its training split (empty file?)")
    if splits["val"]["documents"] == 0:
        fraction = getattr(corpus, "val_fraction", getattr(corpus, "test_fraction", None))
        if fraction != 0:
            # Training cannot evaluate on nothing: fail here, with the fix, not at `rotary train`.
            remove_shards()
            detail = "" if fraction is None else f", val fraction {fraction}"
            raise RotaryError(
                f"corpus '{corpus.name}' gives an empty validation split ({splits['train']['characters']:,} "
                f"characters in all{detail}): add text, or raise the val fraction "
                "(rotary prepare --val-fraction, rotary train --data.val_fraction)")
        notes.append("warning: the validation split is empty (--val-fraction 0): `rotary train` cannot use these "
                      "shards, it evaluates on that split")


def _publish(out: Path, meta: dict[str, Any]) -> None:
    """Every shard is whole: they take their names together, then meta.json says so."""
    for s in SPLITS:
        for words in (False, True) if meta["word_starts"] else (False,):
            os.replace(partial_path(shard_path(out, s, words)), shard_path(out, s, words))
    fsync_dir(out)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    fsync_dir(out)
