"""Three-way hash splits (train / val / test) and the committed manifests of the labelled built-ins.

An example's identity is its text, or its text and its pair: ``example_key``. The split of an
example is a pure function of that key (a blake2b hash, ``split_of``), so duplicates can never
straddle two splits and the split does not depend on the order of the source.

The labelled built-ins commit their split as a manifest, ``rotary/data/splits/<name>.json``: per
split the first 12 hex digits of the sha1 of every key, the counts and the label counts. Loading
checks the computed split against it, so rotary and ``bench/classification_baselines.py`` score
exactly the same texts, and a changed source is an error instead of a silently different test set.
Regenerate a manifest (only when a source's pinned version changes) with
``python -m rotary.data.sources.splits NAME``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rotary.data.sources.base import hash_fraction
from rotary.errors import RotaryError

LABELLED_SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = 1
MANIFEST_DIR = Path(__file__).resolve().parents[1] / "splits"


def example_key(text: str, text_pair: str | None = None) -> str:
    """The identity of an example: its text, and its pair after a separator no text contains."""
    return text if text_pair is None else f"{text}\x1f{text_pair}"


def text_id(key: str) -> str:
    """The short id a manifest records: the first 12 hex digits of the key's sha1."""
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """test for the lowest ``test_fraction`` of hash values, val for the next ``val_fraction``.

    Test comes first so that raising ``val_fraction`` never moves an example out of test.
    """
    h = hash_fraction(key)
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def check_fractions(val_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    out = []
    for what, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise RotaryError(f"{what} must be a number in (0, 1), got {value!r}") from None
        if not 0.0 < value < 1.0:
            raise RotaryError(f"{what} must be in (0, 1), got {value}")
        out.append(value)
    if out[0] + out[1] >= 1.0:
        raise RotaryError(f"val_fraction + test_fraction must be below 1 (got {out[0]} + {out[1]}): "
                          "nothing would be left to train on")
    return out[0], out[1]


def manifest_path(name: str) -> Path:
    return MANIFEST_DIR / f"{name}.json"


def build_manifest(name: str, source: str, fractions: dict[str, float],
                   splits: dict[str, Iterable[tuple[str, str]]]) -> dict[str, Any]:
    """A manifest from ``splits``: split -> (key, label name) pairs."""
    ids: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    labels: dict[str, dict[str, int]] = {}
    for split in LABELLED_SPLITS:
        rows = list(splits[split])
        ids[split] = sorted(text_id(k) for k, _ in rows)
        counts[split] = len(rows)
        labels[split] = dict(sorted(Counter(label for _, label in rows).items()))
    return {"name": name, "format": MANIFEST_FORMAT, "source": source, "fractions": fractions,
            "counts": counts, "label_counts": labels, "ids": ids}


def check_manifest(name: str, source: str, fractions: dict[str, float],
                   splits: dict[str, Iterable[tuple[str, str]]]) -> None:
    """Compare a computed split with the committed manifest; any difference is a one-line error."""
    path = manifest_path(name)
    try:
        committed = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RotaryError(f"{name}: the split manifest {path} is missing: reinstall rotary") from None
    except json.JSONDecodeError as err:
        raise RotaryError(f"{name}: the split manifest {path} is damaged ({err.msg}): reinstall rotary") from None
    computed = build_manifest(name, source, fractions, splits)
    fix = f"the source changed (rotary pins {committed.get('source')}); reinstall that version"
    if committed.get("fractions") != fractions:
        raise RotaryError(f"{name}: fractions {fractions} differ from the manifest's {committed.get('fractions')}")
    for split in LABELLED_SPLITS:
        want, got = set(committed["ids"][split]), set(computed["ids"][split])
        if want != got:
            raise RotaryError(f"{name}: the {split} split differs from its committed manifest {path.name} "
                              f"({len(got - want)} texts not in it, {len(want - got)} missing): {fix}")
        if committed["label_counts"][split] != computed["label_counts"][split]:
            raise RotaryError(f"{name}: the {split} split's labels differ from its committed manifest "
                              f"{path.name}: {fix}")


def write_manifest(name: str) -> Path:
    """Recompute a built-in's split and commit it (a maintainer's step, never run on load)."""
    from rotary.data.sources import BUILTIN_LABELLED  # the registry imports this module
    from rotary.io import atomic_write_text

    if name not in BUILTIN_LABELLED:
        raise RotaryError(f"no labelled built-in '{name}' (known: {', '.join(BUILTIN_LABELLED)})")
    loader = BUILTIN_LABELLED[name]
    source, fractions, splits = loader.split_rows()
    manifest = build_manifest(name, source, fractions, splits)
    path = manifest_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One id per line keeps the committed file diffable.
    text = json.dumps(manifest, ensure_ascii=False, indent=1)
    atomic_write_text(path, text + "\n")
    return path


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(write_manifest(arg))
