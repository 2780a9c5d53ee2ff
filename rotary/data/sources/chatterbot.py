"""chatterbot: short English and Chinese dialogues on everyday topics (greetings, food, history,
science, ...) from the ``chatterbot-corpus==1.3.3`` wheel on PyPI (BSD licence), the YAML files of
``chatterbot_corpus/data/english/`` and ``.../chinese/`` (2,026 and 467 dialogues).

The first use downloads the wheel with the ordinary pip client and keeps it, sha256-pinned (the
wheel's digest pins every file in it), in ``$ROTARY_CACHE/chatterbot/``. A dialogue is a list of
lines spoken in turn: the first is the user's, the next the assistant's, and so on; a trailing
user line (an odd count) is dropped, as are dialogues of one line and the one that is not a list.
Splits: by a hash of each
dialogue (5% / 5%, as for conversation files).
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any

from rotary.data.sources.download import cache_dir, fetch_pinned_archive, pip_download

PACKAGE = "chatterbot-corpus==1.3.3"
WHEEL = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
WHEEL_SHA256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
LANGUAGES = ("english", "chinese")


def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's wheel of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=True)


def chatterbot_wheel() -> Path:
    return fetch_pinned_archive("chatterbot", PACKAGE, WHEEL, archive_sha256=WHEEL_SHA256,
                                target_dir=cache_dir() / "chatterbot", run_pip=lambda dest: _run_pip(dest), binary=True)


def dialogue_messages(lines: Any) -> list[dict[str, str]]:
    """One dialogue (lines spoken in turn) -> user/assistant messages; [] when it has no reply, or
    is not a list (english/trivia.yml holds one dialogue flattened into a string by its YAML)."""
    if not isinstance(lines, list):
        return []
    texts = [str(line).strip() for line in lines if line is not None and str(line).strip()]
    texts = texts[: len(texts) // 2 * 2]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


@functools.lru_cache(maxsize=1)
def _dialogues(path: str, mtime_ns: int) -> tuple[list[dict[str, str]], ...]:
    import yaml

    out = []
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".yml")
                       and n.split("/")[-2:-1] and n.split("/")[-2] in LANGUAGES)
        for name in names:
            data = yaml.safe_load(zf.read(name).decode("utf-8"))
            for lines in (data or {}).get("conversations") or []:
                messages = dialogue_messages(lines)
                if messages:
                    out.append(messages)
    return tuple(out)


def chatterbot_splits() -> dict[str, list[list[dict[str, str]]]]:
    from rotary.data.sources.conversations import TEST_FRACTION, VAL_FRACTION, hash_splits

    path = chatterbot_wheel()
    return hash_splits(_dialogues(str(path), path.stat().st_mtime_ns), VAL_FRACTION, TEST_FRACTION)
