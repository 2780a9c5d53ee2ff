"""A character n-gram language model with interpolated modified Kneser-Ney smoothing.

The classical bar for ``rotary demo``: a count-based model trained on the same training text and
scored on the same validation text as the neural model, in bits per UTF-8 byte.

Smoothing follows Chen & Goodman (1999), "An empirical study of smoothing techniques for language
modeling", section 3 (interpolated modified Kneser-Ney): each order has three discounts D1, D2,
D3+ estimated from its count-of-counts (``discounts``); the highest order uses raw counts, lower
orders continuation counts (how many distinct characters precede the n-gram); the unigram level
interpolates with the uniform distribution over the training alphabet plus one unknown-character
bucket, so characters never seen in training still get a finite probability.

Units: the model predicts Unicode characters (code points), not bytes. ``bits_per_byte`` sums
-log2 p over every character of the text and divides by the text's UTF-8 byte count, so a
non-ASCII character's bits are spread over its 2-4 bytes and the figure is comparable with
compressors and with byte-level tokenizers.

Implementation: every distinct k-gram of the training text gets an integer id; a k-gram's key is
``id(its (k-1)-gram prefix) * B + last character`` (B = alphabet size + 1), unique within int64
for any alphabet, so counting is np.unique and lookup np.searchsorted, with no hash collisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rotary.errors import RotaryError


def discounts(n1: int, n2: int, n3: int, n4: int) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the numbers of n-grams seen exactly 1, 2, 3, 4 times.

    Y = n1/(n1+2 n2), D1 = 1-2Y n2/n1, D2 = 2-3Y n3/n2, D3+ = 3-4Y n4/n3. Only degenerate
    count-of-counts (a tiny text, some n_k = 0) need more: an undefined D_k falls back to Y (Ney's
    single discount), and each D_k is kept in [0.01, k] so that a discounted count stays
    non-negative and some mass is always left for the lower order.
    """
    n = (n1, n2, n3, n4)
    y = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
    out = []
    for k in (1, 2, 3):
        d = k - (k + 1) * y * n[k] / n[k - 1] if n[k - 1] > 0 else y
        out.append(min(max(d, 0.01), float(k)))
    return out[0], out[1], out[2]


@dataclass
class _Level:
    """Everything order k needs: its k-grams and the statistics of their (k-1)-gram contexts."""

    keys: np.ndarray       # sorted keys of the distinct k-grams (prefix id * B + last char)
    counts: np.ndarray     # raw counts (highest order) or continuation counts (lower orders)
    ctx_total: np.ndarray  # per (k-1)-gram id: sum of counts over the k-grams it starts
    ctx_gamma: np.ndarray  # per (k-1)-gram id: D1 N1 + D2 N2 + D3 N3+ (the mass given to order k-1)
    d: tuple[float, float, float]


class KneserNey:
    """Interpolated modified Kneser-Ney character ``order``-gram model: ``KneserNey(8).fit(train)``."""

    def __init__(self, order: int) -> None:
        if int(order) < 1:
            raise RotaryError(f"n-gram order must be at least 1, got {order}")
        self.order = int(order)
        self.alphabet = np.zeros(0, dtype=np.int64)  # sorted code points seen in train
        self.levels: list[_Level] = []

    @property
    def base(self) -> int:
        return len(self.alphabet) + 1  # character ids 1..V, 0 = unknown

    def _ids(self, text: str) -> np.ndarray:
        """Character ids of ``text``: 1..V for the training alphabet, 0 for anything else."""
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        if not len(self.alphabet):
            return np.zeros(len(cps), dtype=np.int64)
        pos = np.searchsorted(self.alphabet, cps).clip(max=len(self.alphabet) - 1)
        return np.where(self.alphabet[pos] == cps, pos + 1, 0)

    def fit(self, text: str) -> KneserNey:
        """Count every k-gram of ``text`` (k = 1..order); its characters become the alphabet."""
        if not text:
            raise RotaryError("cannot fit an n-gram model on an empty text")
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        self.alphabet = np.unique(cps)
        x = self._ids(text)
        b, n = self.base, len(x)
        # Distinct k-grams per order, and for each its k-gram id at every end position (-1: none).
        keys: list[np.ndarray] = []
        raw: list[np.ndarray] = []
        suffix: list[np.ndarray] = []  # [k - 1]: per distinct (k+1)-gram, the id of its last k chars
        idx = np.int32 if n < 2**31 else np.int64  # positions and ids: half the memory traffic of int64
        prev = np.zeros(n, dtype=idx)  # id of the (k-1)-gram ending at each position (empty: 0)
        # end positions of the (k-1)-grams sorted by id: one position later, the k-grams come sorted
        # by prefix already, so the stable sort by full key below only has short runs to merge
        prev_order = np.arange(-1, n - 1, dtype=idx)
        for k in range(1, self.order + 1):
            pos = prev_order + 1
            pos = pos[pos < n]
            if not len(pos):
                keys.append(np.zeros(0, dtype=np.int64))
                raw.append(np.zeros(0, dtype=np.int64))
                suffix.append(np.zeros(0, dtype=np.int64))
                continue
            key = (prev[pos - 1].astype(np.int64) if k > 1 else 0) * b + x[pos]
            srt = np.argsort(key, kind="stable")
            pos, key = pos[srt], key[srt]
            first = np.empty(len(key), dtype=bool)
            first[0], first[1:] = True, key[1:] != key[:-1]
            inv = np.cumsum(first, dtype=idx) - 1  # id of the k-gram at each of the sorted positions
            keys.append(key[first])
            raw.append(np.diff(np.append(np.flatnonzero(first), len(key))))
            if k > 1:
                # the k-gram ending at i has the (k-1)-gram ending at i as its suffix: prev[i]
                suf = np.empty(len(keys[-1]), dtype=np.int64)
                suf[inv] = prev[pos]
                suffix.append(suf)
            prev = np.full(n, -1, dtype=idx)
            prev[pos] = inv
            prev_order = pos
        self.levels = []
        for k in range(1, self.order + 1):
            if k == self.order:
                counts = raw[k - 1]
            else:
                # continuation count of a k-gram: how many distinct (k+1)-grams end with it
                counts = np.bincount(suffix[k - 1], minlength=len(keys[k - 1]))
            cc = np.bincount(counts, minlength=5)
            d = discounts(int(cc[1]), int(cc[2]), int(cc[3]), int(cc[4]))
            n_ctx = len(keys[k - 2]) if k > 1 else 1
            ctx = keys[k - 1] // b
            bucket = np.minimum(counts, 3)
            weight = np.array([0.0, d[0], d[1], d[2]])[bucket]
            self.levels.append(_Level(
                keys=keys[k - 1], counts=counts,
                ctx_total=np.bincount(ctx, weights=counts, minlength=n_ctx),
                ctx_gamma=np.bincount(ctx, weights=weight, minlength=n_ctx), d=d))
        return self

    def _probs(self, x: np.ndarray) -> np.ndarray:
        """P(x[i] | up to order-1 preceding ids) for every position of the id array ``x``."""
        if not self.levels:
            raise RotaryError("fit the n-gram model before scoring")
        b, n = self.base, len(x)
        p = np.full(n, 1.0 / b)  # order 0: uniform over the alphabet + unknown
        prev = np.zeros(n, dtype=np.int64)  # train id of the (k-1)-gram ending at each position, -1: unseen
        for k, lv in enumerate(self.levels, start=1):
            if not len(lv.keys):  # the training text is shorter than k: nothing to add
                prev = np.full(n, -1, dtype=np.int64)
                continue
            ctx = np.zeros(n, dtype=np.int64)
            if k > 1:
                ctx[0] = -1  # the first character has no context at all
                ctx[1:] = prev[:-1]
            has = ctx >= 0
            ctx = np.where(has, ctx, 0)
            key = ctx * b + x
            pos = np.searchsorted(lv.keys, key).clip(max=len(lv.keys) - 1)
            found = has & (lv.keys[pos] == key)
            c = np.where(found, lv.counts[pos], 0)
            total = np.where(has, lv.ctx_total[ctx], 0.0)
            gamma = np.where(has, lv.ctx_gamma[ctx], 0.0)
            dc = np.array([0.0, *lv.d])[np.minimum(c, 3)]
            seen = total > 0
            # P_k = (max(c - D(c), 0) + gamma * P_{k-1}) / total; an unseen context passes P_{k-1} through
            p = np.where(seen, (np.maximum(c - dc, 0.0) + gamma * p) / np.where(seen, total, 1.0), p)
            prev = np.where(found, pos, -1)
        return p

    def next_char_probs(self, context: str) -> dict[str | None, float]:
        """P(next char | context) for every training character and ``None`` (the unknown bucket)."""
        chars: list[str | None] = [None, *(chr(int(c)) for c in self.alphabet)]
        ctx = self._ids(context)[max(0, len(context) - self.order + 1):]
        rows = np.array([np.append(ctx, i) for i in range(self.base)], dtype=np.int64)
        # each row scored as its own text: its last probability conditions on the whole context
        return {ch: float(self._probs(row)[-1]) for ch, row in zip(chars, rows)}

    def bits(self, text: str) -> float:
        """Total -log2 P of every character of ``text``, each given its preceding order-1 characters."""
        if not text:
            return 0.0
        return float(-np.log2(self._probs(self._ids(text))).sum())

    def bits_per_byte(self, text: str) -> float:
        """``bits(text)`` over the UTF-8 bytes of ``text`` (characters are scored, bytes divide)."""
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
        if not n_bytes:
            raise RotaryError("no text to score")
        bpb = self.bits(text) / n_bytes
        if not math.isfinite(bpb):
            raise RotaryError("n-gram model gave a non-finite score")
        return bpb
