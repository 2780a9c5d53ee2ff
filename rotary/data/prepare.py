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

import collections
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from rotary.data.encode import encode_documents, init_worker, worker_encode
from rotary.data.shards import (
    PREPARE_FORMAT_VERSION,
    SPLITS,
    choose_dtype,
    read_meta_if_any,
    shard_path,
    shards_complete,
)
from rotary.errors import RotaryError
from rotary.io import atomic_write_text, fsync_dir

# A batch is flushed to the tokenizer when it holds this many characters (or batch_docs documents).
BATCH_CHARS = 1 << 21


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


class _Progress:
    """Feeds the progress bar: MB/s from the bar itself, tokens/s in its postfix."""

    def __init__(self, bar: Any, start_time: float) -> None:
        self.bar, self.start_time, self.tokens = bar, start_time, 0

    def update(self, split: str, nbytes: int, ntokens: int) -> None:
        self.tokens += ntokens
        if self.bar is not None:
            self.bar.update(nbytes)
            elapsed = max(time.perf_counter() - self.start_time, 1e-9)
            self.bar.set_postfix_str(f"{split}, {self.tokens / elapsed:,.0f} tok/s", refresh=False)


def _write_split(split: str, corpus: Any, tok: Any, out: Path, dtype: str, word_starts: bool, batch_docs: int,
                 pool: Any, workers: int, progress: _Progress) -> dict[str, Any]:
    """Encode one split into its shard(s) under hidden partial names (:func:`partial_path`): the
    caller renames every split's shards together, once all are written, just before meta.json."""
    stats = {"documents": 0, "characters": 0, "bytes": 0, "tokens": 0}
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(_partial_open(shard_path(out, split)))
        fw = stack.enter_context(_partial_open(shard_path(out, split, True))) if word_starts else None

        def consume(batch: list[str], result: tuple[np.ndarray, np.ndarray | None]) -> None:
            ids, flags = result
            f.write(memoryview(ids))
            if fw is not None and flags is not None:
                fw.write(memoryview(flags))
            nbytes = sum(len(d.encode("utf-8", "surrogatepass")) for d in batch)
            stats["documents"] += len(batch)
            stats["characters"] += sum(len(d) for d in batch)
            stats["bytes"] += nbytes
            stats["tokens"] += len(ids)
            progress.update(split, nbytes, len(ids))

        pending: collections.deque = collections.deque()
        if pool is None:
            # One encoding thread: while it is inside the Rust tokenizer (which releases the
            # GIL and uses every core) this thread reads and decodes the next batch.
            executor = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            window = 2
            for batch in _batches(corpus.documents(split), batch_docs):
                pending.append((batch, executor.submit(encode_documents, tok, batch, dtype, word_starts)))
                if len(pending) >= window:
                    done, fut = pending.popleft()
                    consume(done, fut.result())
        else:
            # Smaller batches keep every process busy; a bounded window of jobs in flight
            # keeps memory flat (Pool.imap would read the whole corpus ahead).
            window = 2 * workers
            for batch in _batches(corpus.documents(split), max(1, min(batch_docs, 64))):
                pending.append((batch, _AsyncResult(pool.apply_async(worker_encode, ((batch, dtype, word_starts),)))))
                if len(pending) >= window:
                    done, fut = pending.popleft()
                    consume(done, fut.result())
        while pending:
            done, fut = pending.popleft()
            consume(done, fut.result())
    stats["undecodable_replacements"] = corpus.replacements[split]
    return stats


def partial_path(final: Path) -> Path:
    """Where a shard is written until the whole dataset is: ``.train.bin.partial``."""
    return final.parent / f".{final.name}.partial"


@contextlib.contextmanager
def _partial_open(final: Path) -> Iterator[IO]:
    path = partial_path(final)
    try:
        with open(path, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


class _AsyncResult:
    """multiprocessing's AsyncResult with the Future method name."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def result(self) -> Any:
        return self._result.get()


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def _inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _batches(docs: Iterator[str], batch_docs: int) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for d in docs:
        batch.append(d)
        chars += len(d)
        if len(batch) >= batch_docs or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


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
    word_starts = tok.jieba
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RotaryError(f"--out {out} exists and is not a directory")

    inputs = {"version": PREPARE_FORMAT_VERSION, "tokenizer_hash": tok.hash, "corpus": corpus.fingerprint(),
              "dtype": dtype, "word_starts": word_starts}
    inputs_hash = _inputs_hash(inputs)
    existing = read_meta_if_any(out)
    notes: list[str] = []
    if existing is not None and not overwrite:
        if existing.get("tokenizer_hash") != tok.hash:
            raise RotaryError(
                f"{out} was prepared with another tokenizer (hash {existing.get('tokenizer_hash')}, "
                f"from {existing.get('tokenizer_dir')}) but {tokenizer_dir} has hash {tok.hash}: "
                "use a new --out or pass --overwrite")
        if existing.get("source") != corpus.name:
            raise RotaryError(f"{out} holds corpus '{existing.get('source')}', not '{corpus.name}': "
                              "use a new --out or pass --overwrite")
        if existing.get("inputs_hash") == inputs_hash and shards_complete(out, existing):
            info = PreparedInfo(out, existing, skipped=True,
                                notes=[f"nothing to do: {out} is up to date (same corpus, tokenizer and options)"])
            if print_summary:
                print(info.notes[0])
            return info
        notes.append("inputs changed since the last run: rebuilt")

    out.mkdir(parents=True, exist_ok=True)
    # From here on the directory is incomplete until the new meta.json lands.
    with contextlib.suppress(FileNotFoundError):
        (out / "meta.json").unlink()
    # What a run killed outright left (partial shards, temp files), and the shards of an earlier
    # run, which no meta.json describes any more: nothing in --out may look like usable shards.
    stale_files = [*out.glob(".*.bin.*.tmp"), *out.glob(".*.bin.partial"), *out.glob(".meta.json.*.tmp"),
                   *(shard_path(out, s, w) for s in SPLITS for w in (False, True))]
    for stale in stale_files:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()

    pool = None
    if word_starts and workers > 1:
        # jieba is Python: run it (and the tokenizer) in processes. TOKENIZERS_PARALLELISM is
        # set while forking so that the children do not warn about (or deadlock on) the Rust
        # pool; the parent's own setting comes back right after.
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            pool = ctx.Pool(workers, initializer=init_worker, initargs=(str(tokenizer_dir),))
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved

    splits: dict[str, dict[str, Any]] = {}
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            # With max_documents the corpus's size says nothing about how much will be read: no
            # percentage then (bytes and rates only), rather than a bar that stops at 17%.
            capped = getattr(corpus, "max_documents", None) is not None
            bar = tqdm(total=None if capped else corpus.size_hint(), unit="B", unit_scale=True, unit_divisor=1000,
                       desc=f"prepare {corpus.name}", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        progress_state = _Progress(bar, start_time)
        for split in SPLITS:
            splits[split] = _write_split(split, corpus, tok, out, dtype, word_starts, batch_docs, pool,
                                         workers, progress_state)
        if bar is not None:  # done: the last line says 100%, whatever the estimate was
            bar.total = bar.n
            bar.refresh()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()

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
                "(--val-fraction, data.val_fraction)")
        notes.append("warning: the validation split is empty (--val-fraction 0)")

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
        "word_starts": word_starts,
        "splits": splits,
        # Flat copies of the per-split numbers, for readers that want one key per number.
        **{f"{k}_{s}": splits[s][k] for s in SPLITS for k in ("tokens", "documents", "characters", "bytes")},
        "undecodable_replacements": sum(splits[s]["undecodable_replacements"] for s in SPLITS),
        "inputs_hash": inputs_hash,
        "inputs": inputs,
    }
    for s in SPLITS:  # every shard is whole: they take their names together, then meta.json says so
        for words in (False, True) if word_starts else (False,):
            os.replace(partial_path(shard_path(out, s, words)), shard_path(out, s, words))
    fsync_dir(out)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    fsync_dir(out)
    info = PreparedInfo(out, meta, seconds=time.perf_counter() - start_time, notes=notes)
    if print_summary:
        print(info.summary_table())
    return info
