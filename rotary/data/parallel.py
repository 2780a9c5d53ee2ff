"""Parallel (translation) data: source/target sentence pairs in train, val and test splits.

``load_parallel(spec)`` takes

* the built-in ``tatoeba-zh-en`` (``rotary.data.sources.tatoeba``; ``direction`` zh-en or en-zh),
* a ``.tsv`` file of ``source<TAB>target`` lines, or a ``.jsonl`` file with ``source_field`` and
  ``target_field`` (default "source" / "target"),
* two line-aligned files joined by a comma, ``train.de,train.en`` (line counts must agree),
* ``hf:NAME`` (``datasets.load_dataset``, with ``config`` and ``data_files``; ``hf:DIR`` for a
  ``save_to_disk`` directory): records with the two fields, or a ``translation`` dict keyed by
  language (``direction`` de-en picks translation["de"] -> translation["en"]). The dataset's own
  validation and test splits are used; those it lacks are carved out of train by source.

Files are split by a hash of the source sentence (``val_fraction``, ``test_fraction``), so every
pair with the same source, i.e. all its references, lands in one split. A row without one of its
sides is an error naming the line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotary.config import closest_key_hint
from rotary.corpus_names import PARALLEL_NAMES
from rotary.data.sources.base import jsonl_records
from rotary.errors import RotaryError

PARALLEL_SPLITS = ("train", "val", "test")
BUILTIN_PARALLEL = PARALLEL_NAMES


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


@dataclass
class ParallelData:
    """Pairs per split, and the languages (the target's decides sacrebleu's tokenisation)."""

    name: str
    source_lang: str | None
    target_lang: str | None
    splits: dict[str, list[Pair]]

    def pairs(self, split: str) -> list[Pair]:
        if split not in PARALLEL_SPLITS:
            raise RotaryError(f"unknown split '{split}' (valid: {', '.join(PARALLEL_SPLITS)})")
        return self.splits[split]

    def references(self, split: str) -> tuple[list[str], list[list[str]]]:
        """Distinct sources of ``split`` (first-seen order) and all references of each."""
        refs: dict[str, list[str]] = {}
        for p in self.pairs(split):
            refs.setdefault(p.source, []).append(p.target)
        return list(refs), list(refs.values())

    def texts(self, split: str = "train") -> Iterable[str]:
        """Both sides of every pair (a joint vocabulary is trained on these)."""
        for p in self.pairs(split):
            yield p.source
            yield p.target


def _unit(text: str) -> float:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=b"parallel").digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_source(pairs: list[Pair], val_fraction: float, test_fraction: float) -> dict[str, list[Pair]]:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise RotaryError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise RotaryError("val_fraction + test_fraction leave nothing to train on")
    out: dict[str, list[Pair]] = {s: [] for s in PARALLEL_SPLITS}
    for p in pairs:
        u = _unit(p.source)
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(p)
    return out


def _pair(source: Any, target: Any, where: str) -> Pair:
    src = " ".join(str(source).split()) if source is not None else ""
    tgt = " ".join(str(target).split()) if target is not None else ""
    if not src or not tgt:
        side = "source" if not src else "target"
        raise RotaryError(f"{where}: the {side} side is empty or missing; every row needs both sentences")
    return Pair(src, tgt)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise RotaryError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    # "\n" only: str.splitlines() also breaks at U+2028, \x85, \x0c ..., which crawled corpora contain
    lines = text.lstrip("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def _tsv_pairs(path: Path) -> list[Pair]:
    pairs = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise RotaryError(f"{path} line {n}: expected source<TAB>target, found {len(fields)} field(s)")
        pairs.append(_pair(fields[0], fields[1], f"{path} line {n}"))
    return pairs


def _jsonl_pairs(path: Path, source_field: str, target_field: str) -> list[Pair]:
    pairs = []
    for record, replaced, where in jsonl_records(path):
        if replaced:  # a translation pair is never guessed at
            raise RotaryError(f"{where}: not UTF-8 text ({replaced} undecodable byte sequences): convert it to UTF-8")
        pairs.append(_pair(record.get(source_field), record.get(target_field),
                           f"{where} (fields '{source_field}', '{target_field}')"))
    return pairs


def _two_files(source: Path, target: Path) -> list[Pair]:
    for p in (source, target):
        if not p.is_file():
            raise RotaryError(f"parallel file not found: {p}")
    src, tgt = _read_lines(source), _read_lines(target)
    if len(src) != len(tgt):
        raise RotaryError(f"{source} has {len(src)} lines but {target} has {len(tgt)}: two-file parallel data "
                          "must be line-aligned")
    return [_pair(s, t, f"{source}/{target.name} line {n}") for n, (s, t) in enumerate(zip(src, tgt), 1)
            if s.strip() or t.strip()]


def _languages(direction: str | None) -> tuple[str | None, str | None]:
    if direction is None:
        return None, None
    parts = direction.split("-")
    if len(parts) != 2 or not all(parts):
        raise RotaryError(f"direction must look like src-tgt (e.g. zh-en), got '{direction}'")
    return parts[0], parts[1]


def _hf_splits(name: str, config: str | None, data_files: Any, source_field: str, target_field: str,
               src_lang: str | None, tgt_lang: str | None) -> dict[str, list[Pair] | None]:
    """The train / val / test pairs of an HF dataset (None for a split it lacks)."""
    from rotary.data.sources.hf_datasets import load_dataset_dict
    from rotary.data.sources.labelled_files import SPLIT_NAMES

    ds = load_dataset_dict(name, config=config, data_files=data_files)
    out: dict[str, list[Pair] | None] = {}
    for split, candidates in SPLIT_NAMES.items():
        found = next((c for c in candidates if c in ds), None)
        if found is None:
            out[split] = None
            continue
        part = ds[found]
        columns = part.column_names
        if "translation" in columns and src_lang and tgt_lang:
            languages = sorted(part[0]["translation"]) if len(part) else []
            if {src_lang, tgt_lang} - set(languages):
                raise RotaryError(f"hf:{name}: its translations are in {', '.join(languages)}, not "
                                  f"{src_lang}-{tgt_lang}: set direction")
            rows = ((r.get(src_lang), r.get(tgt_lang)) for r in part["translation"])
        else:
            for col in (source_field, target_field):
                if col not in columns:
                    raise RotaryError(f"hf:{name}: no column '{col}' (columns: {', '.join(columns)}; a "
                                      "'translation' column needs direction=src-tgt)")
            rows = zip(part[source_field], part[target_field])
        out[split] = [_pair(src, tgt, f"hf:{name} {found} record {i}") for i, (src, tgt) in enumerate(rows)]
    if out["train"] is None:
        raise RotaryError(f"hf:{name}: no train split (splits: {', '.join(ds)})")
    return out


def check_parallel_options(options: dict[str, Any], where: str = "data.corpus_options") -> dict[str, Any]:
    """``options``, when every key is a keyword of :func:`load_parallel`; else a one-line error
    naming the unknown key and the closest valid one."""
    import inspect

    valid = [n for n, p in inspect.signature(load_parallel).parameters.items() if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if key not in valid:
            raise RotaryError(f"{where}: unknown option '{key}' for parallel data{closest_key_hint(key, valid)}")
    return options


def load_parallel(spec: str, *, direction: str | None = None, source_field: str = "source",
                  target_field: str = "target", val_fraction: float | None = None,
                  test_fraction: float | None = None, max_pairs: int | None = None,
                  config: str | None = None, data_files: Any = None) -> ParallelData:
    """Parallel data by built-in name, path, ``src_path,tgt_path`` or ``hf:NAME`` (see the module doc).
    Files are split 5% val / 5% test unless ``val_fraction`` / ``test_fraction`` say otherwise."""
    src_lang, tgt_lang = _languages(direction)
    if spec == "tatoeba-zh-en" and (val_fraction is not None or test_fraction is not None):
        raise RotaryError("tatoeba-zh-en has a fixed split (by sentence-graph components): val_fraction and "
                          "test_fraction do not apply")
    val_fraction = 0.05 if val_fraction is None else val_fraction
    test_fraction = 0.05 if test_fraction is None else test_fraction
    if spec == "tatoeba-zh-en":
        from rotary.data.sources.tatoeba import tatoeba_splits

        src_lang, tgt_lang = src_lang or "zh", tgt_lang or "en"
        if {src_lang, tgt_lang} != {"zh", "en"}:
            raise RotaryError(f"tatoeba-zh-en translates zh-en or en-zh, not {src_lang}-{tgt_lang}")
        zh_first = src_lang == "zh"
        splits = {s: [Pair(zh, en) if zh_first else Pair(en, zh) for zh, en in rows]
                  for s, rows in tatoeba_splits().items()}
    elif spec.startswith("hf:"):
        held = _hf_splits(spec[3:], config, data_files, source_field, target_field, src_lang, tgt_lang)
        # splits the dataset lacks are carved out of train by source
        carved = split_by_source(held["train"], val_fraction if held["val"] is None else 0.0,
                                 test_fraction if held["test"] is None else 0.0)
        splits = {s: held[s] if held[s] is not None else carved[s] for s in PARALLEL_SPLITS}
        splits["train"] = carved["train"]
    else:
        if "," in spec:
            a, b = spec.split(",", 1)
            pairs = _two_files(Path(a).expanduser(), Path(b).expanduser())
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise RotaryError(f"unknown parallel data '{spec}': a built-in ({', '.join(BUILTIN_PARALLEL)}), "
                                  "a .tsv/.jsonl file, src,tgt line-aligned files, or hf:NAME")
            suffix = path.suffix.lower()
            if suffix == ".tsv":
                pairs = _tsv_pairs(path)
            elif suffix in (".jsonl", ".ndjson"):
                pairs = _jsonl_pairs(path, source_field, target_field)
            else:
                raise RotaryError(f"{path}: parallel data is .tsv or .jsonl (or two line-aligned files: a,b)")
        if not pairs:
            raise RotaryError(f"{spec} holds no sentence pairs")
        splits = split_by_source(pairs, val_fraction, test_fraction)
    if max_pairs is not None:
        if max_pairs <= 0:
            raise RotaryError(f"max_pairs must be positive, got {max_pairs}")
        splits = {s: p[:max_pairs] for s, p in splits.items()}
    return ParallelData(spec, src_lang, tgt_lang, splits)
