"""Classical baselines for the labelled corpora, on exactly the splits rotary fine-tunes and scores on.

The splits come from ``rotary.data.sources.load_labelled``, which checks them against the
committed manifests (``rotary/data/splits/*.json``), so these figures and rotary's are measured
on the same test texts. Hyper-parameters (C) are chosen on val; test is scored once, at the end.

    majority        the most frequent training label
    char-tfidf-lr   TF-IDF of character 1-3-grams + logistic regression
    jieba-tfidf-svm TF-IDF of rjieba word uni+bigrams + LinearSVC
    snownlp-nb      snownlp's Naive Bayes sentiment model retrained on the train split only
                    (its shipped model was trained on all reviews, test included; sentiment only)

    python bench/classification_baselines.py                       # both built-ins
    python bench/classification_baselines.py --corpus thucnews --out docs/results/baselines.json

The char TF-IDF + LR row is ``rotary.baselines``, the bar ``rotary finetune`` prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rotary import cpu_model  # noqa: E402
from rotary.baselines import C_GRID  # noqa: E402


def accuracy_f1(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n)), zero_division=0))}


def _texts(examples: Sequence[Any]) -> list[str]:
    # A pair is read as one text: these baselines have no notion of two segments.
    return [e.text if e.text_pair is None else f"{e.text} {e.text_pair}" for e in examples]


def _tuned(make: Callable[[float], Any], x_train: Any, y_train: list[int], x_val: Any, y_val: list[int],
           n: int) -> tuple[Any, float]:
    """The model with the best val macro-F1 over C_GRID, refit never on val."""
    best, best_c, best_f1 = None, C_GRID[0], -1.0
    for c in C_GRID:
        model = make(c).fit(x_train, y_train)
        f1 = accuracy_f1(y_val, model.predict(x_val), n)["macro_f1"]
        if f1 > best_f1:
            best, best_c, best_f1 = model, c, f1
    return best, best_c


def run_corpus(name: str, max_examples: int | None = None) -> list[dict[str, Any]]:
    import numpy as np
    import rjieba
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    from rotary import load_labelled
    from rotary.baselines import fit_char_tfidf_lr

    data = load_labelled(name, max_examples=max_examples)
    n = data.num_labels
    split = {s: data.split(s) for s in ("train", "val", "test")}
    text = {s: _texts(v) for s, v in split.items()}
    y = {s: [e.label for e in v] for s, v in split.items()}
    rows: list[dict[str, Any]] = []

    def record(method: str, predict: Callable[[str], Sequence[int]], seconds: float, **extra: Any) -> None:
        row = {"corpus": name, "method": method, "seconds": round(seconds, 1), **extra}
        for s in ("val", "test"):
            for k, v in accuracy_f1(y[s], predict(s), n).items():
                row[f"{s}_{k}"] = round(v, 4)
        row["test_n"] = len(y["test"])
        rows.append(row)

    t = time.perf_counter()
    majority = int(np.bincount(y["train"], minlength=n).argmax())
    record("majority", lambda s: [majority] * len(y[s]), time.perf_counter() - t)

    t = time.perf_counter()
    predict, c = fit_char_tfidf_lr(split["train"], split["val"], n)  # the bar finetune and eval print
    record("char-tfidf-lr", lambda s: predict(split[s]), time.perf_counter() - t, C=c)

    t = time.perf_counter()
    cut = {s: [rjieba.cut(doc) for doc in text[s]] for s in text}
    wvec = TfidfVectorizer(analyzer=lambda words: words + [a + " " + b for a, b in zip(words, words[1:])],
                           sublinear_tf=True)
    w = {"train": wvec.fit_transform(cut["train"])}
    w.update({s: wvec.transform(cut[s]) for s in ("val", "test")})
    svm, c = _tuned(lambda c: LinearSVC(C=c), w["train"], y["train"], w["val"], y["val"], n)
    record("jieba-tfidf-svm", lambda s: svm.predict(w[s]), time.perf_counter() - t, C=c)

    if name == "chinese-sentiment":
        from snownlp.sentiment import Sentiment

        t = time.perf_counter()
        nb = Sentiment()  # a fresh model: the shipped one has seen the test reviews
        nb.train([d for d, label in zip(text["train"], y["train"]) if label == 0],
                 [d for d, label in zip(text["train"], y["train"]) if label == 1])
        record("snownlp-nb", lambda s: [int(nb.classify(d) >= 0.5) for d in text[s]], time.perf_counter() - t)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'corpus':<18} {'method':<16} {'val acc':>8} {'val F1':>8} {'test acc':>9} {'test F1':>8} {'s':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['corpus']:<18} {r['method']:<16} {r['val_accuracy']:>8.4f} {r['val_macro_f1']:>8.4f} "
              f"{r['test_accuracy']:>9.4f} {r['test_macro_f1']:>8.4f} {r['seconds']:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", help="a labelled corpus (repeatable; default: both built-ins)")
    ap.add_argument("--max-examples", type=int, help="cap each split (a quick check, not a figure)")
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args(argv)
    from rotary import RotaryError

    corpora = args.corpus or ["chinese-sentiment", "thucnews"]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        for name in corpora:
            rows += run_corpus(name, args.max_examples)
    except RotaryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(rows)
    wall = time.perf_counter() - start
    print(f"\n{wall:.0f} s on {cpu_model()}")
    if args.out:
        from rotary import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps({"rows": rows, "wall_s": round(wall, 1),
                                                "cpu": cpu_model(), "platform": platform.platform()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
