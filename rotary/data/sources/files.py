"""Local files: ``.txt`` (one document per file, line or paragraph), ``.jsonl``, ``.parquet``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.config import closest_key_hint
from rotary.data.sources.base import (
    JSONL_SUFFIXES,
    SUPPORTED_SUFFIXES,
    TEXT_SUFFIXES,
    HashSplitCorpus,
    decode_text_file,
    file_fingerprint,
    jsonl_records,
    parquet_records,
)
from rotary.errors import RotaryError


class FilesCorpus(HashSplitCorpus):
    """Local files: ``.txt`` (one document per file, line or paragraph), ``.jsonl``, ``.parquet``.

    A directory means every supported file below it, in sorted order. With a single ``.txt``
    document (one file, ``split_by="file"``) a hash split cannot work, so the validation split
    is the last ``val_fraction`` of the text, cut at a line boundary (the nanoGPT convention);
    so it is for a few documents that a hash would put all on one side (the tail rule).
    """

    def __init__(self, path: str | Path, *, text_field: str = "text", split_by: str = "file",
                 val_fraction: float | None = None, max_documents: int | None = None) -> None:
        super().__init__(val_fraction=val_fraction, max_documents=max_documents)
        self.path = Path(path)
        self.name = str(path)
        if split_by not in ("file", "paragraph", "line"):
            raise RotaryError(f"split_by must be file, paragraph or line, got {split_by!r}")
        self.split_by = split_by
        self.text_field = text_field
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
                yield from parquet_records(path, [self.text_field])

    def _jsonl_records(self, path: Path) -> Iterator[tuple[dict[str, Any], int, str]]:
        return jsonl_records(path, f"a JSON object with a '{self.text_field}' field")

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

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "files": file_fingerprint(self.files), "split_by": self.split_by,
                "text_field": self.text_field, "val_fraction": self.val_fraction}

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.files)

