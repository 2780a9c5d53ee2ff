"""Conversations for supervised fine-tuning: rows of a file, an HF dataset or a built-in set.

A row is one of (the shapes of OpenAI/HF chat data, of prompt-completion sets, and of Alpaca):
- ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`` (multi-turn);
- ``{"prompt": ..., "response": ...}`` (``completion`` for ``response`` too);
- ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be empty or absent);
the last two may carry a ``system`` string. Every conversation needs an assistant turn.

Splits are fixed: an HF dataset's own train/validation/test where it has them; otherwise a
conversation goes to test / val / train by a hash of its text (``test_fraction`` /
``val_fraction``), so the same file always splits the same way, whatever its order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotary.chat.template import check_messages
from rotary.data.sources.base import hash_fraction, jsonl_records, parquet_records
from rotary.errors import RotaryError

Messages = list[dict[str, str]]
SPLITS = ("train", "val", "test")
VAL_FRACTION = TEST_FRACTION = 0.05


@dataclass
class ConversationData:
    name: str
    splits: dict[str, list[Messages]]

    def split(self, name: str) -> list[Messages]:
        return self.splits[name]


def row_messages(row: Any, where: str) -> Messages:
    """The messages of one row in any of the accepted shapes (a one-line error otherwise)."""
    if not isinstance(row, dict):
        raise RotaryError(f"{where}: a conversation row is a JSON object, not {type(row).__name__}")
    if "messages" in row:
        messages = check_messages(row["messages"], where=where)
    else:
        prompt = row.get("prompt", row.get("instruction"))
        answer = next((row[k] for k in ("response", "completion", "output") if k in row), None)
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise RotaryError(f"{where}: a row needs messages, prompt + response, or instruction + output "
                              f"(it has {', '.join(sorted(row)) or 'no fields'})")
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if isinstance(row.get("system"), str) and row["system"]:
            messages.insert(0, {"role": "system", "content": row["system"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise RotaryError(f"{where}: the conversation has no assistant turn, so nothing to learn from: "
                          "add one or drop the row")
    return messages


def _file_rows(path: Path) -> Iterator[tuple[Any, str]]:
    if path.suffix == ".jsonl":
        for record, _, where in jsonl_records(path, "a JSON object (one conversation)"):
            yield record, where
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RotaryError(f"{path}: not valid UTF-8 JSON ({err})") from None
        if not isinstance(data, list):
            raise RotaryError(f"{path}: a .json conversation file holds a list of rows")
        for i, record in enumerate(data):
            yield record, f"{path}: row {i + 1}"
    elif path.suffix == ".parquet":
        for record, _, where in parquet_records(path):
            yield record, where
    else:
        raise RotaryError(f"{path}: conversations come as .jsonl, .json or .parquet (not {path.suffix or 'no suffix'})")


def _unit(messages: Messages) -> float:
    return hash_fraction(json.dumps(messages, ensure_ascii=False, sort_keys=True))


def hash_splits(conversations: Iterable[Messages], val_fraction: float, test_fraction: float) -> dict[str, list]:
    out: dict[str, list[Messages]] = {s: [] for s in SPLITS}
    for messages in conversations:
        u = _unit(messages)
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(messages)
    return out


def _hf_splits(name: str, config: str | None, data_files: Any, val_fraction: float,
               test_fraction: float) -> dict[str, list[Messages]]:
    from rotary.data.sources.hf_datasets import load_dataset_dict

    ds = load_dataset_dict(name, config=config, data_files=data_files)
    named = {"train": "train", "val": next((k for k in ("validation", "val", "dev") if k in ds), None),
             "test": "test" if "test" in ds else None}
    if "train" not in ds:
        raise RotaryError(f"HF dataset '{name}' has no train split (it has {', '.join(ds)})")
    rows = {split: [row_messages(r, f"{name}[{key}] row {i + 1}") for i, r in enumerate(ds[key])]
            for split, key in named.items() if key is not None}
    if len(rows) == 3:
        return rows
    carved = hash_splits(rows["train"], val_fraction if "val" not in rows else 0.0,
                         test_fraction if "test" not in rows else 0.0)
    return {s: rows.get(s, carved[s]) if s != "train" else carved["train"] for s in SPLITS}


def load_conversations(spec: str, *, val_fraction: float | None = None, test_fraction: float | None = None,
                       max_examples: int | None = None, config: str | None = None,
                       data_files: Any = None) -> ConversationData:
    """The train/val/test conversations of a built-in set, a file, or ``hf:NAME``."""
    val = VAL_FRACTION if val_fraction is None else float(val_fraction)
    test = TEST_FRACTION if test_fraction is None else float(test_fraction)
    if spec in BUILTIN:
        splits = BUILTIN[spec]()
    elif spec.startswith("hf:"):
        splits = _hf_splits(spec[3:], config, data_files, val, test)
    else:
        path = Path(spec)
        if not path.is_file():
            known = ", ".join(BUILTIN)
            raise RotaryError(f"conversations not found: {spec} (built-in: {known}; or a .jsonl/.json/.parquet "
                              "file, or hf:NAME)")
        splits = hash_splits((row_messages(r, where) for r, where in _file_rows(path)), val, test)
    if max_examples is not None:
        splits = {s: rows[:max_examples] for s, rows in splits.items()}
    for s in ("train", "val"):
        if not splits[s]:
            raise RotaryError(f"{spec}: the {s} split has no conversations (a file needs enough rows for its "
                              f"{'val_fraction' if s == 'val' else 'train split'}): add rows or change the fractions")
    return ConversationData(spec, splits)


# -- built-in sets -----------------------------------------------------------------------------

# Translation prompts from the built-in Tatoeba pairs (tatoeba-zh-en): answers that can be
# checked (chrF against the references), in both directions, Tatoeba's own component split.
ZH_EN_PROMPT = "Translate into English: {}"
EN_ZH_PROMPT = "把这句话翻译成中文：{}"


def tatoeba_instruct() -> dict[str, list[Messages]]:
    from rotary.data.sources.tatoeba import tatoeba_splits

    out: dict[str, list[Messages]] = {}
    for split, rows in tatoeba_splits().items():
        convs = []
        for i, (zh, en) in enumerate(rows):
            prompt, answer = (ZH_EN_PROMPT.format(zh), en) if i % 2 == 0 else (EN_ZH_PROMPT.format(en), zh)
            convs.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
        out[split] = convs
    return out


def chitchat() -> dict[str, list[Messages]]:
    from rotary.data.sources.chitchat import chitchat_splits

    return chitchat_splits()


def chatterbot() -> dict[str, list[Messages]]:
    from rotary.data.sources.chatterbot import chatterbot_splits

    return chatterbot_splits()


def xiehouyu_instruct() -> dict[str, list[Messages]]:
    from rotary.data.sources.xiehouyu import xiehouyu_splits

    return xiehouyu_splits()


BUILTIN = {"tatoeba-instruct": tatoeba_instruct, "xiehouyu-instruct": xiehouyu_instruct, "chitchat": chitchat,
           "chatterbot": chatterbot}
