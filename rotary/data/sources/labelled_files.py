"""A user's labelled data: ``.jsonl`` / ``.csv`` / ``.tsv`` / ``.parquet`` files, and ``hf:NAME`` datasets.

Each row has a text, optionally a text pair, and a label (a name or an integer); the field names
are options (``text_field``, ``text_pair_field``, ``label_field``). One file is split into
train/val/test by a hash of each example (``val_fraction``, ``test_fraction``, default 0.1 each);
a directory holds ``train``, ``val`` (or ``validation``, ``dev``) and ``test`` files, and a split it
lacks is carved out of train by the same hash. An HF dataset's own splits are used the same way.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.config import closest_key_hint
from rotary.data.sources.base import decode_text_file, file_fingerprint, jsonl_records, parquet_records
from rotary.data.sources.labelled import LabelledData, RawRow, build_labelled, check_max_examples
from rotary.data.sources.splits import LABELLED_SPLITS, check_fractions, example_key, split_of
from rotary.errors import RotaryError, RotaryWarning

LABELLED_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")
# File stems (and HF split names) that mean each split, in order of preference.
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid", "dev"), "test": ("test",)}
_INT = re.compile(r"-?\d+")


class _Fields:
    def __init__(self, text_field: str, text_pair_field: str | None, label_field: str, pair_explicit: bool) -> None:
        self.text, self.pair, self.label = text_field, text_pair_field, label_field
        self.pair_explicit = pair_explicit

    def row(self, record: dict[str, Any], where: str, untyped: bool = False) -> RawRow | None:
        """(text, pair, label, where), or None for a blank text; a missing field is a one-line error."""
        label = record.get(self.label)
        if untyped and isinstance(label, str) and _INT.fullmatch(label.strip()):
            record = {**record, self.label: int(label)}  # CSV has no types: digits are an integer label
        text = record.get(self.text)
        if text is None:
            raise RotaryError(f"{where}: no '{self.text}' field{closest_key_hint(self.text, list(record))}")
        if not isinstance(text, str):
            raise RotaryError(f"{where}: '{self.text}' must be a string, got {type(text).__name__}")
        label = record.get(self.label)
        if label is None or label == "":
            raise RotaryError(f"{where}: no '{self.label}' field{closest_key_hint(self.label, list(record))}")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise RotaryError(f"{where}: '{self.label}' must be a name or an integer, got {label!r}")
        pair = record.get(self.pair) if self.pair else None
        if pair is None and self.pair_explicit:
            raise RotaryError(f"{where}: no '{self.pair}' field (text_pair_field)")
        if pair is not None and not isinstance(pair, str):
            raise RotaryError(f"{where}: '{self.pair}' must be a string, got {type(pair).__name__}")
        if not text.strip():
            return None
        return text, pair, label, where


# Each reader yields (record, "path:line", undecodable byte sequences replaced with U+FFFD in it).
def _jsonl_rows(path: Path) -> Iterator[tuple[dict[str, Any], str, int]]:
    for record, replaced, where in jsonl_records(path):
        yield record, where, replaced


def _csv_rows(path: Path) -> Iterator[tuple[dict[str, Any], str, int]]:
    text, replaced = decode_text_file(path)  # mostly undecodable (GBK, UTF-16, binary): an error
    # A byte-order mark, as spreadsheets write, would otherwise join the first field name.
    f = io.StringIO(text.removeprefix("\ufeff"), newline="")
    reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    for record in reader:
        where = f"{path}:{reader.line_num}"
        yield {k: v for k, v in record.items() if k is not None}, where, replaced
        replaced = 0  # the whole file's count, given once


def _parquet_rows(path: Path) -> Iterator[tuple[dict[str, Any], str, int]]:
    return ((record, where, replaced) for record, replaced, where in parquet_records(path))


def _file_rows(path: Path, fields: _Fields) -> tuple[list[RawRow], int]:
    """The file's rows, and how many undecodable byte sequences were replaced in them (warned)."""
    suffix = path.suffix.lower()
    if suffix not in LABELLED_SUFFIXES:
        raise RotaryError(f"{path}: unsupported labelled file type '{path.suffix}' "
                          f"(supported: {', '.join(LABELLED_SUFFIXES)})")
    reader = _parquet_rows if suffix == ".parquet" else _csv_rows if suffix in (".csv", ".tsv") else _jsonl_rows
    untyped = suffix in (".csv", ".tsv")
    rows, undecodable = [], 0
    for record, where, replaced in reader(path):
        undecodable += replaced
        if (row := fields.row(record, where, untyped)) is not None:
            rows.append(row)
    if not rows:
        raise RotaryError(f"{path}: no labelled examples in it")
    if undecodable:
        warnings.warn(f"{path}: {undecodable:,} byte sequence(s) were not UTF-8 and were replaced with U+FFFD "
                      "(is the file in another encoding? convert it to UTF-8)", RotaryWarning, stacklevel=2)
    return rows, undecodable


def _carve(raw: dict[str, list[RawRow]], missing: set[str], val_fraction: float, test_fraction: float) -> None:
    """Move the train rows that the hash puts in a split the source lacks into that split."""
    kept = []
    for row in raw["train"]:
        split = split_of(example_key(row[0], row[1]), val_fraction, test_fraction)
        (raw[split] if split in missing else kept).append(row)
    raw["train"] = kept


def _split_files(directory: Path) -> dict[str, Path]:
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix.lower() in LABELLED_SUFFIXES]
    found: dict[str, Path] = {}
    for split, stems in SPLIT_NAMES.items():
        for stem in stems:
            match = [p for p in files if p.stem.lower() == stem]
            if match:
                found[split] = match[0]
                break
    if "train" not in found:
        names = ", ".join(p.name for p in files) or "none"
        raise RotaryError(f"{directory}: no train file (train.jsonl, train.csv, train.tsv or train.parquet; "
                          f"found: {names})")
    return found


def load_labelled_path(path: Path, *, text_field: str = "text", text_pair_field: str | None = None,
                       label_field: str = "label", label_names: list[str] | None = None, val_fraction: float = 0.1,
                       test_fraction: float = 0.1, max_examples: int | None = None) -> LabelledData:
    """A labelled file (hash-split) or a directory of train/val/test files."""
    val_fraction, test_fraction = check_fractions(val_fraction, test_fraction)
    fields = _Fields(text_field, text_pair_field or "text_pair", label_field, text_pair_field is not None)
    if path.is_dir():
        files = _split_files(path)
    else:
        files = {"train": path}
    raw: dict[str, list[RawRow]] = {s: [] for s in LABELLED_SPLITS}
    undecodable = 0
    for split, file in files.items():
        raw[split], replaced = _file_rows(file, fields)
        undecodable += replaced
    _carve(raw, set(LABELLED_SPLITS) - set(files), val_fraction, test_fraction)
    fingerprint = {"files": file_fingerprint(files.values()), "fields": [text_field, fields.pair, label_field],
                   "fractions": [val_fraction, test_fraction], "label_names": label_names}
    return build_labelled(str(path), raw, label_names=label_names, fingerprint=fingerprint,
                          description=f"labelled examples from {path}", max_examples=check_max_examples(max_examples),
                          stats={"undecodable_replacements": undecodable})


def load_labelled_hf(name: str, *, config: str | None = None, data_files: Any = None, text_field: str = "text",
                     text_pair_field: str | None = None, label_field: str = "label",
                     label_names: list[str] | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     max_examples: int | None = None) -> LabelledData:
    """``datasets.load_dataset(name, config)`` (or ``load_from_disk`` for a saved directory):
    its train / validation / test splits, and a hash split of train for those it lacks."""
    val_fraction, test_fraction = check_fractions(val_fraction, test_fraction)
    from rotary.data.sources.hf_datasets import load_dataset_dict

    ds = load_dataset_dict(name, config=config, data_files=data_files)
    have: dict[str, str] = {}
    for split, candidates in SPLIT_NAMES.items():
        found = next((c for c in candidates if c in ds), None)
        if found is not None:
            have[split] = found
    if "train" not in have:
        raise RotaryError(f"hf:{name}: no train split (splits: {', '.join(ds)})")
    columns = ds[have["train"]].column_names
    for col in (text_field, label_field):
        if col not in columns:
            raise RotaryError(f"hf:{name}: no column '{col}'{closest_key_hint(col, columns)}")
    if text_pair_field is None and "text_pair" in columns:
        text_pair_field = "text_pair"
    elif text_pair_field is not None and text_pair_field not in columns:
        raise RotaryError(f"hf:{name}: no column '{text_pair_field}'{closest_key_hint(text_pair_field, columns)}")
    feature = ds[have["train"]].features.get(label_field)
    if label_names is None and getattr(feature, "names", None):
        label_names = list(feature.names)  # a ClassLabel: the dataset names its integers
    fields = _Fields(text_field, text_pair_field, label_field, text_pair_field is not None)
    wanted = [c for c in (text_field, text_pair_field, label_field) if c]
    raw: dict[str, list[RawRow]] = {s: [] for s in LABELLED_SPLITS}
    for split, hf_split in have.items():
        data = ds[hf_split]
        for start in range(0, len(data), 4096):  # batched column access: far faster than per row
            batch = data.select_columns(wanted)[start:start + 4096]
            for i in range(len(batch[text_field])):
                record = {c: batch[c][i] for c in wanted}
                row = fields.row(record, f"hf:{name}[{hf_split}] row {start + i}")
                if row is not None:
                    raw[split].append(row)
    _carve(raw, set(LABELLED_SPLITS) - set(have), val_fraction, test_fraction)
    fingerprint = {"hf": name, "config": config, "data_files": data_files,
                   "dataset_fingerprints": {k: getattr(v, "_fingerprint", None) for k, v in ds.items()},
                   "fields": wanted, "fractions": [val_fraction, test_fraction], "label_names": label_names}
    return build_labelled(f"hf:{name}", raw, label_names=label_names, fingerprint=fingerprint,
                          description=f"HF dataset {name}", max_examples=check_max_examples(max_examples))
