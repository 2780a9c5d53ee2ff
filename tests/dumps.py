"""Small MediaWiki XML dumps written by hand, in the layout of Wikimedia's pages-articles files."""

from __future__ import annotations

import bz2
from pathlib import Path
from xml.sax.saxutils import escape

HEAD = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
        "  <siteinfo><sitename>Wikipedia</sitename><dbname>enwiki</dbname></siteinfo>\n")


def page_xml(title: str, wikitext: str, *, ns: int = 0, redirect: str | None = None, page_id: int = 1) -> str:
    """One <page>: a title, a namespace, an optional <redirect/> and one revision's wikitext."""
    redirect_tag = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{redirect_tag}"
            f"    <revision>\n      <id>{page_id * 10}</id>\n      <model>wikitext</model>\n"
            f'      <text xml:space="preserve">{escape(wikitext)}</text>\n    </revision>\n  </page>\n')


def write_dump(path: Path, pages: list[str], *, compress: bool = True) -> Path:
    """``pages`` (from ``page_xml``) as a dump file: bz2-compressed unless ``compress`` is False."""
    xml = (HEAD + "".join(pages) + "</mediawiki>\n").encode("utf-8")
    path.write_bytes(bz2.compress(xml) if compress else xml)
    return path
