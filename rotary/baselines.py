"""The classical bar a fine-tuned classifier must clear: char 1-3-gram TF-IDF + logistic regression.

Fitted on the same train split the classifier saw, C chosen by macro-F1 on val, scored on the
split the classifier is scored on. ``rotary finetune`` and ``rotary eval`` print it beside their
own accuracy, as the demo prints its Kneser-Ney row. A result is cached in
``$ROTARY_BASELINE_CACHE``, else ``$ROTARY_CACHE/baselines/`` (default ``~/.cache/rotary``),
by a hash of the texts and labels of
all three splits, so a second evaluation of the same data costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

C_GRID = (0.25, 1.0, 4.0, 16.0)
METHOD = "char 1-3-gram TF-IDF + LR"
VERSION = 1  # of the method: a change of features or grid makes new cache keys


def _texts(examples: Sequence[Any]) -> list[str]:
    # a pair is read as one text: the baseline has no notion of two segments
    return [e.text if e.text_pair is None else f"{e.text} {e.text_pair}" for e in examples]


def _key(train: Sequence[Any], val: Sequence[Any], scored: Sequence[Any], num_labels: int) -> str:
    h = hashlib.sha256(f"{METHOD} v{VERSION} C{C_GRID} labels {num_labels}\n".encode())
    for name, split in (("train", train), ("val", val), ("scored", scored)):
        h.update(f"\x00{name}\x00".encode())
        for text, e in zip(_texts(split), split):
            h.update(f"{e.label}\t{text}\x01".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def macro_f1_of(truth: Sequence[int], predicted: Sequence[int], num_labels: int) -> float:
    """Macro-F1 as rotary scores its classifiers (``rotary.tasks.macro_f1``), so that the bar and
    the fine-tuned model are measured alike."""
    from sklearn.metrics import confusion_matrix

    from rotary.tasks import macro_f1

    return float(macro_f1(confusion_matrix(truth, predicted, labels=list(range(num_labels))).tolist()))


def fit_char_tfidf_lr(train: Sequence[Any], val: Sequence[Any], num_labels: int) -> tuple[Callable, float]:
    """(predict(examples) -> labels, C) of the model with the best val macro-F1 over C_GRID,
    never refit on val."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y_train, y_val = [e.label for e in train], [e.label for e in val]
    if len(set(y_train)) < 2:
        raise ValueError("the train split has a single label: no classifier to fit")
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    x_train = vec.fit_transform(_texts(train))
    x_val = vec.transform(_texts(val))
    best, best_c, best_f1 = None, C_GRID[0], -1.0
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        f1 = macro_f1_of(y_val, model.predict(x_val), num_labels) if val else 0.0
        if f1 > best_f1:
            best, best_c, best_f1 = model, c, f1
    return (lambda examples: [int(p) for p in best.predict(vec.transform(_texts(examples)))]), best_c


def char_tfidf_lr(train: Sequence[Any], val: Sequence[Any], scored: Sequence[Any],
                  num_labels: int) -> dict[str, Any]:
    """Accuracy and macro-F1 on ``scored`` of :func:`fit_char_tfidf_lr`'s model."""
    from sklearn.metrics import accuracy_score

    start = time.perf_counter()
    predict, c = fit_char_tfidf_lr(train, val, num_labels)
    y, pred = [e.label for e in scored], predict(scored)
    return {"method": METHOD, "C": c, "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": macro_f1_of(y, pred, num_labels),
            "examples": len(scored), "seconds": round(time.perf_counter() - start, 2)}


def baseline(train: Sequence[Any], val: Sequence[Any], scored: Sequence[Any], num_labels: int,
             *, cache: bool = True) -> dict[str, Any] | None:
    """:func:`char_tfidf_lr`, cached; None when no baseline can be fitted (one label, no text)."""
    import os

    from rotary.data.sources.download import cache_dir
    from rotary.io import atomic_write_text

    folder = Path(os.environ.get("ROTARY_BASELINE_CACHE") or cache_dir() / "baselines")
    path = folder / f"{_key(train, val, scored, num_labels)}.json"
    if cache and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache entry is recomputed
    try:
        result = char_tfidf_lr(train, val, scored, num_labels)
    except ValueError:  # a single label, or no character n-gram at all
        return None
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(result, indent=2))
        except OSError:
            pass  # a read-only cache costs the next run some seconds, nothing more
    return result


def compare_line(accuracy: float, bar: dict[str, Any] | None) -> str:
    """"char 1-3-gram TF-IDF + LR on the same splits: accuracy 0.8425 (C 16): rotary loses by 1.7 points"."""
    if bar is None:
        return f"{METHOD}: not fitted (the train split has a single label)"
    points = 100 * (accuracy - bar["accuracy"])
    verdict = f"rotary beats it by {points:+.1f} points" if points > 0 else (
        "rotary ties it" if points == 0 else f"rotary loses by {-points:.1f} points")
    return (f"{METHOD} on the same splits (C {bar['C']:g} chosen on val): accuracy {bar['accuracy']:.4f}, "
            f"macro-F1 {bar['macro_f1']:.4f}: {verdict}")
