"""Loading a tokenizer directory: rotary's own (checked against its recorded hash) or any folder
with a ``tokenizer.json`` (a transformers checkpoint's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.tokenizer.segment import SEGMENTER
from rotary.tokenizer.tokenizer import RECORD, Tokenizer, content_hash


def _infer_kind(backend: Any) -> str:
    model = json.loads(backend.to_str())["model"]["type"]
    return {"BPE": "bpe", "WordPiece": "wordpiece", "WordLevel": "char"}.get(model) or "bpe"


def load_tokenizer(path: str | Path | Tokenizer) -> Tokenizer:
    """Load a directory written by ``Tokenizer.save`` (or any dir / file with a tokenizer.json)."""
    if isinstance(path, Tokenizer):
        return path
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if not path.exists():
        raise RotaryError(f"tokenizer not found: {path} (train one with `rotary tokenizer train`)")
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
        if (path / "tokenizer" / "tokenizer.json").is_file():  # a run directory: its tokenizer is inside
            raise RotaryError(f"{path} has no tokenizer.json; its tokenizer is {path / 'tokenizer'}: give that")
        raise RotaryError(f"{path} has no tokenizer.json (train one with `rotary tokenizer train`)")
    text = file.read_text(encoding="utf-8")
    try:
        backend = HFTokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise RotaryError(f"{file}: not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
    record_path = file.parent / RECORD
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RotaryError(f"{record_path}: invalid JSON ({err.msg})") from None
        pre = record.get("pre_tokenizer")
        if pre not in (None, "jieba"):
            raise RotaryError(f"{record_path}: unknown pre_tokenizer {pre!r} (rotary knows: jieba)")
        segmenter = record.get("segmenter")
        if pre == "jieba" and segmenter not in (None, SEGMENTER):
            raise RotaryError(f"{record_path}: unknown segmenter {segmenter!r} (rotary knows: {SEGMENTER})")
        tok = Tokenizer(backend, record.get("kind") or _infer_kind(backend), jieba=pre == "jieba",
                        lowercase=bool(record.get("lowercase")), meta=record, source_json=text)
        saved = record.get("hash")
        # A jieba tokenizer saved before rjieba (format 1, no "segmenter") was hashed without
        # it: check that hash, then it is a new tokenizer (its ids come from rjieba now), so
        # shards prepared with the old segmentation do not match it.
        expected = tok.hash if segmenter is not None or pre is None else content_hash(text, tok.kind, pre, None)
        if saved is not None and saved != expected:
            raise RotaryError(f"{file.parent}: tokenizer.json does not match the hash in {RECORD} "
                              f"({expected} != {saved}); it was edited or half-copied")
        return tok
    return Tokenizer(backend, _infer_kind(backend), meta=_hf_special_tokens(file.parent), source_json=text)


def _hf_special_tokens(directory: Path) -> dict[str, str]:
    """EOS/PAD token names and the chat template from a transformers folder's tokenizer_config.json
    or special_tokens_map.json (the former wins; a ``chat_template.jinja`` file, as newer
    transformers saves it, wins over both), for folders rotary did not write."""
    names: dict[str, str] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((directory / fname).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("eos_token", "pad_token", "chat_template"):
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                names[key] = value
    if (directory / "chat_template.jinja").is_file():
        names["chat_template"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    return names
