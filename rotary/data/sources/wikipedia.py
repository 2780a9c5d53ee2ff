"""Wikipedia dumps: MediaWiki XML (``*-pages-articles*.xml.bz2``, or plain ``.xml``) read page by page.

Asked for as ``wikidump:PATH`` (a dump file, or a directory of them: enwiki's
``pages-articles1.xml-p1p41242.bz2``, ``...2.xml-...``), or by the path of a file ending in
``.xml``, ``.xml.bz2`` or ``.bz2``. A document is an article: its title as the first line (it
names the subject and marks where an article starts, for a few tokens; ``title: false`` leaves it
out), then its plain text (``wikitext``). Redirects and pages outside the main
namespace (talk, user, templates, categories: ``ns`` other than 0) are skipped, and so are
articles left empty by the markup's removal. Val is 5% by hash, as for other files.

Memory stays constant: the file is decompressed as it is read (``bz2`` reads multistream dumps
too) and parsed by the standard library's incremental ``iterparse``, each page cleared once
yielded. ``mwxml`` would do this reading too, with four dependencies of its own (mwtypes,
jsonschema, mwcli, para) and revision objects a pages-articles dump does not need.

The other route to Wikipedia is HF's parquet rows (``hf:wikimedia/wikipedia`` with
``config: 20231101.en``, or its ``.parquet`` files by path): their ``text`` column is already
plain text, read by ``hf_datasets`` / ``files``.
"""

from __future__ import annotations

import bz2
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rotary.data.sources.base import HashSplitCorpus, dist_version, file_fingerprint
from rotary.data.sources.wikitext import wikitext_to_text
from rotary.errors import RotaryError

PREFIX = "wikidump:"
DUMP_SUFFIXES = (".xml", ".bz2")
ARTICLE_NAMESPACE = 0
_BZ2_MAGIC = b"BZh"


@dataclass(frozen=True)
class Page:
    title: str
    namespace: int
    redirect: bool
    wikitext: str


def is_dump_path(path: Path) -> bool:
    """A file that names itself a dump: ``.xml``, ``.xml.bz2``, ``.bz2`` (gensim's sample)."""
    return path.suffix.lower() in DUMP_SUFFIXES


def dump_files(path: Path) -> list[Path]:
    """The dump files of ``path``: the file itself, or every dump file below a directory, sorted."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_dump_path(p) and not p.name.startswith("."))
        if not files:
            raise RotaryError(f"no {'/'.join(DUMP_SUFFIXES)} dump files under {path}")
        return files
    if not path.is_file():
        raise RotaryError(f"Wikipedia dump not found: {path}")
    return [path]


def _open(path: Path) -> IO[bytes]:
    """The dump's XML bytes: decompressed as read when the file is bz2 (by its magic, not its name)."""
    with path.open("rb") as f:
        compressed = f.read(3) == _BZ2_MAGIC
    return bz2.open(path, "rb") if compressed else path.open("rb")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # "{http://www.mediawiki.org/xml/export-0.10/}page" -> "page"


def _page(elem: ET.Element) -> Page:
    fields = {_local(child.tag): child for child in elem}
    revision = fields.get("revision")
    text = None
    if revision is not None:
        text = next((c.text for c in revision if _local(c.tag) == "text"), None)
    title = (fields["title"].text or "") if "title" in fields else ""
    ns = fields.get("ns")
    wikitext = text or ""
    # Old dumps mark a redirect only by its text; new ones also by a <redirect/> element.
    redirect = "redirect" in fields or wikitext.lstrip()[:9].upper() == "#REDIRECT"
    return Page(title, int(ns.text) if ns is not None and ns.text else ARTICLE_NAMESPACE, redirect, wikitext)


def dump_pages(path: Path) -> Iterator[Page]:
    """Every page of one dump file, in order, as it is read (a generator: constant memory)."""
    n = 0
    try:
        with _open(path) as f:
            events = ET.iterparse(f, events=("start", "end"))
            _, root = next(events)
            if _local(root.tag) != "mediawiki":
                raise RotaryError(f"{path}: not a MediaWiki XML dump (its root element is <{_local(root.tag)}>, "
                                  "not <mediawiki>)")
            for event, elem in events:
                if event == "end" and _local(elem.tag) == "page":
                    yield _page(elem)
                    n += 1
                    root.clear()  # drop the page (and every one before it) from the tree
    except EOFError:
        raise RotaryError(f"{path}: the bz2 data ends early, after {n} pages (a truncated download?): "
                          "download the dump again") from None
    except ET.ParseError as err:
        raise RotaryError(f"{path}: not a complete MediaWiki XML dump ({err}, after {n} pages)") from None
    except OSError as err:  # bz2's "Invalid data stream": a .bz2 name on other bytes
        raise RotaryError(f"{path}: not a readable dump ({err})") from None


def articles(path: Path) -> Iterator[Page]:
    """The pages of ``path`` (a file or directory) that are articles: main namespace, no redirects."""
    for file in dump_files(path):
        for page in dump_pages(file):
            if page.namespace == ARTICLE_NAMESPACE and not page.redirect:
                yield page


def article_text(page: Page, *, title: bool = True) -> str:
    """An article as a document: its title line (when ``title``) and its plain text; "" when empty."""
    text = wikitext_to_text(page.wikitext)
    if not text:
        return ""
    return f"{page.title}\n{text}" if title and page.title else text


class WikiDumpCorpus(HashSplitCorpus):
    """The articles of a MediaWiki XML dump file (or a directory of them), one document each."""

    def __init__(self, path: str | Path, *, title: bool = True, val_fraction: float | None = None,
                 max_documents: int | None = None) -> None:
        super().__init__(val_fraction=val_fraction, max_documents=max_documents)
        self.path = Path(path).expanduser()
        self.files = dump_files(self.path)
        self.title = bool(title)
        self.name = f"{PREFIX}{path}"
        self.description = f"Wikipedia dump {self.path} ({len(self.files)} file(s)), one article per document"

    def _all_documents(self) -> Iterator[tuple[str, int]]:
        for file in self.files:
            for page in articles(file):
                yield article_text(page, title=self.title), 0

    def fingerprint(self) -> dict[str, Any]:
        # The parser's version too: a new mwparserfromhell may read the same markup differently.
        return {**super().fingerprint(), "files": file_fingerprint(self.files),
                "title": self.title, "val_fraction": self.val_fraction,
                "mwparserfromhell": dist_version("mwparserfromhell")}
