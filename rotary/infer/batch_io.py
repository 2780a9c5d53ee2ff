"""Batch files for the verbs that label texts (``classify``, ``fill-mask``): rows in, rows out.

An input is JSON Lines (``{"text": ..., "text_pair": ..., "id": ...}``) or plain text, one text
per line, read from a file or stdin (``-``). Every input line gives one output row, blank lines
too (their row says it was blank), so that line N of the output answers line N of the input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError

FORMATS = ("auto", "jsonl", "text")


@dataclass
class Row:
    """One input line: ``text`` is None for a blank line."""

    id: Any
    text: str | None
    text_pair: str | None = None


def _input_format(name: str, lines: list[str], fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".txt"):
        return "text"
    first = next((ln for ln in lines if ln.strip()), "")
    try:
        return "jsonl" if isinstance(json.loads(first), dict) else "text"
    except json.JSONDecodeError:
        return "text"


def read_rows(source: str, fmt: str = "auto", *, pairs: bool = True) -> list[Row]:
    """The rows of ``source`` (a path, or ``-`` for stdin). Plain text rows are numbered from 1
    (their ``id``); a JSON row keeps its own ``id``, else gets its line number."""
    # Bytes, decoded here: text mode would turn a lone "\r" inside a line into a line break, and
    # then output row N would no longer answer input line N.
    if source == "-":
        raw, name = sys.stdin.buffer.read(), "stdin"
    else:
        path = Path(source)
        if path.is_dir():
            raise RotaryError(f"--input {path} is a directory: give a .jsonl or .txt file, or - for stdin")
        if not path.is_file():
            raise RotaryError(f"--input {path} does not exist")
        raw, name = path.read_bytes(), str(path)
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RotaryError(f"--input {name} is not UTF-8 text") from None
    lines = content.split("\n")  # not splitlines(): U+2028 inside a text is not a line break
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a blank one
    lines = [ln.removesuffix("\r") for ln in lines]
    kind = _input_format(name, lines, fmt)
    rows = [_parse(line, n, name, kind, pairs) for n, line in enumerate(lines, 1)]
    if not any(r.text is not None for r in rows):
        raise RotaryError(f"--input {name} has no texts")
    has_pair = [r.text_pair is not None for r in rows if r.text is not None]
    if any(has_pair) and not all(has_pair):
        raise RotaryError(f"{name}: some rows have a text_pair and some do not: give it on every row or none")
    return rows


def _parse(line: str, n: int, name: str, kind: str, pairs: bool) -> Row:
    if not line.strip():
        return Row(id=n, text=None)
    if kind == "text":
        return Row(id=n, text=line)
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise RotaryError(f"{name}:{n}: not JSON ({err.msg}); for plain text lines pass --format text") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise RotaryError(f"{name}:{n}: a row needs a \"text\" string")
    pair = data.get("text_pair")
    if pair is not None and (not pairs or not isinstance(pair, str)):
        raise RotaryError(f"{name}:{n}: \"text_pair\" must be a string" if pairs
                          else f"{name}:{n}: this verb takes no \"text_pair\"")
    return Row(id=data.get("id", n), text=data["text"], text_pair=pair)


def blank_row(row: Row) -> dict[str, Any]:
    """The output row of a blank input line: it keeps the alignment and says why it is empty."""
    return {"id": row.id, "text": None, "skipped": "blank line"}


def write_rows(rows: Iterable[dict[str, Any]], output: str | None) -> int:
    """JSON Lines to ``output`` (written whole, under a temporary name) or to stdout."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from rotary.io import atomic_write_text

        atomic_write_text(Path(output), text)
    return text.count("\n")


def check_output(source: str | None, output: str | None) -> None:
    """Refuse an ``--output`` that is a directory or the ``--input`` file."""
    if output and output != "-" and Path(output).is_dir():
        raise RotaryError(f"--output {output} is a directory: give the path of a .jsonl file")
    if source and output and source != "-" and output != "-" and Path(output).exists() \
            and Path(output).resolve() == Path(source).resolve():
        raise RotaryError("--output would overwrite --input: choose another file")
