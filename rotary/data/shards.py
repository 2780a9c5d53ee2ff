"""Prepared token shards on disk: ``{split}.bin`` (flat token ids), ``{split}.words.bin`` (word
starts, jieba tokenizers only) and ``meta.json``, and reading them back as memmaps.

Shards are uint16 when every id fits, else uint32, and are read back with ``open_shards`` as
read-only memmaps (never copied into memory). ``meta.json`` is written last by ``prepare``, so
a directory without it is never taken as complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rotary.errors import RotaryError

PREPARE_FORMAT_VERSION = 1
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")
# Ids of vocabularies this large go to uint32 (the rule; it leaves 65535 free as well).
UINT16_VOCAB_LIMIT = 65536


def choose_dtype(vocab_size: int, requested: str | None = None) -> str:
    """uint16 when the vocabulary is below 65,536 ids, else uint32; a too-small request is an error."""
    needs32 = vocab_size >= UINT16_VOCAB_LIMIT
    if requested in (None, "auto"):
        return "uint32" if needs32 else "uint16"
    if requested not in DTYPES:
        raise RotaryError(f"dtype must be auto, uint16 or uint32, got {requested!r}")
    if requested == "uint16" and needs32:
        raise RotaryError(f"a vocabulary of {vocab_size:,} tokens does not fit uint16 "
                          f"(at most {UINT16_VOCAB_LIMIT - 1:,}); use --dtype uint32 or auto")
    if vocab_size > 2**32:
        raise RotaryError(f"a vocabulary of {vocab_size:,} tokens does not fit uint32")
    return requested


def shard_path(out: Path, split: str, words: bool = False) -> Path:
    return out / (f"{split}.words.bin" if words else f"{split}.bin")


def shards_complete(out: Path, meta: dict[str, Any]) -> bool:
    """Every shard meta.json names exists with the size it records."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for s in SPLITS:
        n = meta["splits"][s]["tokens"]
        p = shard_path(out, s)
        if not p.is_file() or p.stat().st_size != n * itemsize:
            return False
        if meta.get("word_starts"):
            w = shard_path(out, s, words=True)
            if not w.is_file() or w.stat().st_size != n:
                return False
    return True


def read_meta_if_any(out: Path) -> dict[str, Any] | None:
    """meta.json of ``out``, or None when there is none (yet)."""
    path = out / "meta.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RotaryError(f"{path}: invalid JSON ({err.msg}); delete it or pass --overwrite") from None


def read_meta(prepared_dir: str | Path) -> dict[str, Any]:
    """meta.json of a complete prepared directory: anything else is a one-line error."""
    out = Path(prepared_dir)
    if not out.is_dir():
        raise RotaryError(f"prepared data not found: {out} (run `rotary prepare` first)")
    meta = read_meta_if_any(out)
    if meta is None:
        raise RotaryError(f"{out} is not a complete prepared dataset (no meta.json): run `rotary prepare` again")
    if meta.get("version") != PREPARE_FORMAT_VERSION:
        raise RotaryError(f"{out}: prepared with format {meta.get('version')}, this rotary reads "
                          f"{PREPARE_FORMAT_VERSION}: run `rotary prepare --overwrite`")
    if not shards_complete(out, meta):
        raise RotaryError(f"{out}: shard sizes do not match meta.json (interrupted copy?): "
                          "run `rotary prepare --overwrite`")
    return meta


def _memmap(path: Path, dtype: str, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def open_shards(prepared_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, {"train": tokens, "val": tokens}) as read-only memmaps with the dtype from meta.json."""
    out = Path(prepared_dir)
    meta = read_meta(out)
    shards = {s: _memmap(shard_path(out, s), meta["dtype"], meta["splits"][s]["tokens"]) for s in SPLITS}
    return meta, shards


def open_word_starts(prepared_dir: str | Path) -> dict[str, np.ndarray] | None:
    """{"train": flags, "val": flags} (uint8, 1 = a word starts here) or None when not prepared."""
    out = Path(prepared_dir)
    meta = read_meta(out)
    if not meta.get("word_starts"):
        return None
    return {s: _memmap(shard_path(out, s, True), "uint8", meta["splits"][s]["tokens"]) for s in SPLITS}
