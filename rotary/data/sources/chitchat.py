"""chitchat: open-domain English chats between two people (BYU PCC lab's dataset, MIT licence),
``chitchat_dataset/dataset.json`` of the ``chitchat-dataset==0.9.0`` wheel on PyPI (7,168 chats).

Multi-turn conversations for SFT beside the single-turn ``tatoeba-instruct``. The first use
downloads the wheel with the ordinary pip client, checks the pinned sha256s of the wheel and of
the file, and keeps it in ``$ROTARY_CACHE/chitchat/``. A chat is turns of consecutive messages
by one person (joined by newlines); the person who opened it is the user, the other the
assistant. Chats with one person only (3,150) are left out, and long chats are cut into windows
of ``WINDOW_TURNS`` turns that open with a user turn and end with an assistant turn, so each fits
a small model's context. Splits: by a hash of each window (5% / 5%, as for conversation files).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from rotary.data.sources.download import cache_dir, fetch_pinned, pip_download
from rotary.errors import RotaryError

PACKAGE = "chitchat-dataset==0.9.0"
WHEEL = "chitchat_dataset-0.9.0-py3-none-any.whl"
MEMBER = "chitchat_dataset/dataset.json"
WHEEL_SHA256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"
FILE_SHA256 = "d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a"
WINDOW_TURNS = 6  # three exchanges: a window of a long chat


def _run_pip(dest: Path) -> None:
    """The download itself (tests replace it): PyPI's wheel of the package into ``dest``."""
    pip_download(PACKAGE, dest, binary=True)


def chitchat_file() -> Path:
    return fetch_pinned("chitchat", PACKAGE, WHEEL, MEMBER, archive_sha256=WHEEL_SHA256, file_sha256=FILE_SHA256,
                        target=cache_dir() / "chitchat" / "dataset.json", run_pip=lambda dest: _run_pip(dest),
                        binary=True)


def chat_windows(chat: dict[str, Any], where: str) -> list[list[dict[str, str]]]:
    """One chat of the file -> its windows of user/assistant turns (none for a one-person chat)."""
    turns = chat.get("messages")
    if not isinstance(turns, list):
        raise RotaryError(f"{where}: a chat needs a list of messages: delete the file to download it again")
    speakers: list[str] = []
    texts: list[str] = []
    for turn in turns:
        lines = [m["text"].strip() for m in turn if isinstance(m, dict) and str(m.get("text", "")).strip()]
        if not lines:
            continue
        speaker = turn[0].get("sender")
        if speakers and speakers[-1] == speaker:  # the same person again: one turn
            texts[-1] += "\n" + "\n".join(lines)
        else:
            speakers.append(speaker)
            texts.append("\n".join(lines))
    if len(set(speakers)) < 2:
        return []
    roles = ["user" if s == speakers[0] else "assistant" for s in speakers]
    messages = [{"role": r, "content": t} for r, t in zip(roles, texts)]
    windows = []
    for start in range(0, len(messages) - 1, WINDOW_TURNS):
        window = messages[start:start + WINDOW_TURNS]
        if window[-1]["role"] != "assistant":
            window = window[:-1]
        if len(window) >= 2:
            windows.append(window)
    return windows


@functools.lru_cache(maxsize=1)
def _windows(path: str, mtime_ns: int) -> tuple[list[dict[str, str]], ...]:
    try:
        chats = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RotaryError(f"{path}: not the chitchat JSON ({err}): delete it to download it again") from None
    if not isinstance(chats, dict):
        raise RotaryError(f"{path}: not a dict of chats: delete it to download it again")
    out = []
    for key, chat in chats.items():
        out.extend(chat_windows(chat, f"{path}: chat {key}"))
    return tuple(out)


def chitchat_splits() -> dict[str, list[list[dict[str, str]]]]:
    from rotary.data.sources.conversations import TEST_FRACTION, VAL_FRACTION, hash_splits

    path = chitchat_file()
    return hash_splits(_windows(str(path), path.stat().st_mtime_ns), VAL_FRACTION, TEST_FRACTION)
