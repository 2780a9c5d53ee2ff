"""Writing token shards: each split's documents read in batches, encoded (``rotary.data.encode``)
while the next batch is read, or in a pool of processes for jieba tokenizers (their word
segmentation is Python), and appended to the split's partial shard, which ``prepare`` renames
into place once every split is whole.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from rotary.data.encode import encode_documents, init_worker, worker_encode
from rotary.data.shards import SPLITS, shard_path

# A batch is flushed to the tokenizer when it holds this many characters (or batch_docs documents).
BATCH_CHARS = 1 << 21


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


@contextlib.contextmanager
def jieba_pool(jieba: bool, workers: int, tokenizer_dir: str | Path) -> Iterator[Any]:
    """Worker processes for a jieba tokenizer (jieba is Python), else None. TOKENIZERS_PARALLELISM
    is set while forking so that the children do not warn about (or deadlock on) the Rust pool;
    the parent's own setting comes back right after."""
    if not jieba or workers <= 1:
        yield None
        return
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
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def write_splits(corpus: Any, tok: Any, out: Path, dtype: str, batch_docs: int, pool: Any, workers: int,
                  progress: bool, start_time: float) -> dict[str, dict[str, Any]]:
    """Every split's partial shards, with a progress bar over the corpus's bytes."""
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
            splits[split] = _write_split(split, corpus, tok, out, dtype, tok.jieba, batch_docs, pool,
                                         workers, progress_state)
        if bar is not None:  # done: the last line says 100%, whatever the estimate was
            bar.total = bar.n
            bar.refresh()
    except BaseException:
        if bar is not None:
            bar.leave = False  # the error is the last word, not a bar stuck at 0% above it
        raise
    finally:
        if bar is not None:
            bar.close()
    return splits
