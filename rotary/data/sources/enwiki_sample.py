"""``enwiki-sample``: a real English Wikipedia dump, shortened: the 206 pages (106 articles once
redirects and the one project page are skipped) of
``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
in the ``gensim==4.4.0`` wheel on PyPI (LGPL-2.1 package; the text CC-BY-SA 3.0 and GFDL,
Wikipedia's contributors; 1.7 MB compressed, 6.1 MB of XML, 2.9 M characters of plain text).

The first use downloads the wheel with the ordinary pip client (``pip download --no-deps``; the
file needs none of gensim's dependencies), checks the pinned sha256s of the wheel and of the
file, and keeps the file in ``$ROTARY_CACHE/enwiki-sample/`` (default ``~/.cache/rotary``). gensim
ships compiled wheels, one per platform: the pinned one is CPython 3.11's manylinux x86_64 wheel,
asked for by its tags on any machine (its test data is the same in every wheel). Documents and
the 5% val split by hash are ``wikipedia.WikiDumpCorpus``'s; the articles' text is parsed once
per process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.data.sources.base import CORPUS_FORMAT_VERSION, HashSplitCorpus, dist_version
from rotary.data.sources.download import cache_dir, fetch_pinned, pip_download
from rotary.data.sources.wikipedia import article_text, articles

PACKAGE = "gensim==4.4.0"
WHEEL = "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
WHEEL_TAGS = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311")
MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WHEEL_SHA256 = "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"
FILE_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"


def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's wheel of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=True, wheel_tags=WHEEL_TAGS)


def enwiki_sample_file() -> Path:
    """The cached dump file, downloaded and checked on first use."""
    return fetch_pinned("enwiki-sample", PACKAGE, WHEEL, MEMBER, archive_sha256=WHEEL_SHA256,
                        file_sha256=FILE_SHA256, target=cache_dir() / "enwiki-sample" / Path(MEMBER).name,
                        run_pip=lambda dest: _run_pip(dest), binary=True)


@functools.lru_cache(maxsize=4)
def _articles(path: str, mtime_ns: int, title: bool) -> tuple[str, ...]:
    """Every article's document, parsed once (2.9 MB: parsing costs seconds, keeping it nothing)."""
    return tuple(text for page in articles(Path(path)) if (text := article_text(page, title=title)))


class EnwikiSampleCorpus(HashSplitCorpus):
    name = "enwiki-sample"
    description = f"English Wikipedia, 106 articles of a shortened 2016 dump ({PACKAGE}'s test data), val = 5% by hash"

    def __init__(self, *, title: bool = True, val_fraction: float | None = None,
                 max_documents: int | None = None) -> None:
        super().__init__(val_fraction=val_fraction, max_documents=max_documents)
        self.title = bool(title)

    def documents_of_dump(self) -> tuple[str, ...]:
        path = enwiki_sample_file()
        return _articles(str(path), path.stat().st_mtime_ns, self.title)

    def _all_documents(self) -> Iterator[tuple[str, int]]:
        for text in self.documents_of_dump():
            yield text, 0

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "format": CORPUS_FORMAT_VERSION, "max_documents": self.max_documents,
                "sha256": FILE_SHA256, "title": self.title, "val_fraction": self.val_fraction,
                "mwparserfromhell": dist_version("mwparserfromhell")}

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.documents_of_dump())
