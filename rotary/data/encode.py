"""Encoding documents into one flat array of token ids (in-process or in a pool worker).

Documents are encoded in batches by the Rust tokenizer (its own thread pool: all cores), the
ids of a batch are joined with numpy, and each document is followed by the separator token
(``<|endoftext|>`` for causal tokenizers, ``[SEP]`` for MLM ones). Jieba tokenizers also give
word-start flags, for whole-word masking.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

import numpy as np

# Long documents are cut into pieces of about this many characters so that the tokenizer's
# threads share the work; cuts fall where they cannot change the tokens (see split_document).
CHUNK_CHARS = 1 << 16

# A newline between two non-space characters: the byte-level BPE regex always ends a piece
# there, WordPiece/char split on whitespace, and jieba splits at non-Han characters, so
# encoding the two sides separately gives exactly the tokens of the whole.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def split_document(text: str, size: int | None = None) -> list[str]:
    """Cut a long document into pieces of ~``size`` (default CHUNK_CHARS) characters whose tokens
    concatenate exactly."""
    size = CHUNK_CHARS if size is None else size  # read at call time: tests shrink it
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


_worker_tok: Any = None


def init_worker(tokenizer_dir: str) -> None:
    global _worker_tok
    # Each worker is one of N processes: the Rust pool inside it would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from rotary.tokenizer import load_tokenizer

    _worker_tok = load_tokenizer(tokenizer_dir)


def encode_documents(tok: Any, docs: list[str], dtype: str, word_starts: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Token ids of ``docs``, each followed by ``tok.eos_id``; plus word-start flags if asked.

    No Python loop over tokens: the tokenizer returns one list per piece and numpy joins them.
    """
    pieces: list[str] = []
    doc_of_piece: list[int] = []
    for i, d in enumerate(docs):
        parts = split_document(d)
        pieces.extend(parts)
        doc_of_piece.extend([i] * len(parts))
    groups: list[list[int]] = []
    if word_starts:
        segmented = [tok.segment(p) for p in pieces]
        groups = [g for _, g in segmented]
        encs = tok.encode_batch_raw(pieces, pretokenized=[w for w, _ in segmented])
    else:
        encs = tok.encode_batch_raw(pieces, fast=True)
    ids_lists = [e.ids for e in encs]
    lengths = np.fromiter((len(x) for x in ids_lists), dtype=np.int64, count=len(ids_lists))
    # Room for one separator after each document: piece p of document d lands at
    # offset(p) + d, since d separators precede it.
    n_tokens = int(lengths.sum())
    out = np.empty(n_tokens + len(docs), dtype=dtype)
    doc_idx = np.asarray(doc_of_piece, dtype=np.int64)
    last_piece = np.r_[doc_idx[1:] != doc_idx[:-1], True]
    eos_pos = np.cumsum(lengths)[last_piece] + np.arange(len(docs))
    is_eos = np.zeros(len(out), dtype=bool)
    is_eos[eos_pos] = True
    out[is_eos] = tok.eos_id
    # chain.from_iterable runs in C: no Python bytecode per token.
    out[~is_eos] = np.fromiter(itertools.chain.from_iterable(ids_lists), dtype=dtype, count=n_tokens)
    flags = None
    if word_starts:
        flags = np.ones(len(out), dtype=np.uint8)
        # add_special_tokens=False: every token belongs to a piece, so no word id is None. A
        # jieba word cut into several pieces (one not in the vocabulary) is one word.
        wid = np.concatenate([np.zeros(0, dtype=np.int64)] + [
            np.asarray(g, dtype=np.int64)[np.asarray(e.word_ids, dtype=np.int64)]
            for e, g in zip(encs, groups) if e.word_ids])
        # A token starts a word when its word index differs from the previous token's; the
        # first token of every piece does too (pieces are cut at word boundaries).
        starts = np.ones(n_tokens, dtype=np.uint8)
        if n_tokens:
            starts[1:] = wid[1:] != wid[:-1]
            piece_first = np.cumsum(lengths) - lengths
            starts[piece_first[lengths > 0]] = 1
        flags[~is_eos] = starts
    return out, flags


def worker_encode(args: tuple[list[str], str, bool]) -> tuple[np.ndarray, np.ndarray | None]:
    docs, dtype, word_starts = args
    return encode_documents(_worker_tok, docs, dtype, word_starts)
