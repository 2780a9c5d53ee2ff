"""The Kneser-Ney character n-gram (rotary/evaluation/ngram.py): normalisation, discounts, a hand-computed
case, the demo's bar."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from rotary.evaluation.ngram import KneserNey, discounts

SMALL = "the cat sat on the mat; the dog sat on the log. A cat, a dog, a mat!\nthe end\n" * 2 + "zebra quiz"


def count_of_counts(counts: Counter) -> tuple[int, int, int, int]:
    cc = Counter(counts.values())
    return cc[1], cc[2], cc[3], cc[4]


def test_discounts_follow_chen_goodman():
    # Y = 100/180 = 5/9; D1 = 1 - 2Y 40/100 = 5/9; D2 = 2 - 3Y 20/40 = 7/6; D3+ = 3 - 4Y 12/20 = 5/3
    assert discounts(100, 40, 20, 12) == pytest.approx((5 / 9, 7 / 6, 5 / 3), abs=1e-12)
    y = 2 / (2 + 2 * 1)
    assert discounts(2, 1, 1, 1) == pytest.approx((1 - 2 * y / 2, 2 - 3 * y, 3 - 4 * y), abs=1e-12)
    # degenerate count-of-counts (tiny texts) stay usable: in [0.01, k], some mass left over
    for d, k in zip(discounts(0, 0, 1, 1), (1, 2, 3)):
        assert 0.01 <= d <= k


def test_each_order_uses_the_discounts_of_its_own_counts():
    """Highest order: raw counts; lower orders: continuation counts (distinct left neighbours)."""
    order = 4
    model = KneserNey(order).fit(SMALL)
    for k in range(1, order + 1):
        if k == order:
            counts = Counter(SMALL[i - k + 1: i + 1] for i in range(k - 1, len(SMALL)))
        else:  # how many distinct (k+1)-grams end with each k-gram
            counts = Counter(g[1:] for g in {SMALL[i - k: i + 1] for i in range(k, len(SMALL))})
        assert model.levels[k - 1].d == pytest.approx(discounts(*count_of_counts(counts)), abs=1e-12), k


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_every_context_is_a_distribution_over_the_alphabet_and_unknown(order):
    model = KneserNey(order).fit(SMALL)
    seen = {SMALL[max(0, i - order + 1): i] for i in range(len(SMALL))}
    unseen = {"", "q", "xq", "zz", "the€", "\u00e9t ", "tac ", "a mat"}
    for ctx in sorted(seen | unseen):
        probs = model.next_char_probs(ctx)
        assert len(probs) == len(set(SMALL)) + 1 and None in probs
        assert min(probs.values()) > 0
        assert math.fsum(probs.values()) == pytest.approx(1.0, abs=1e-9), repr(ctx)


def test_hand_computed_unigram_and_bigram():
    # unigram (raw counts) a1 b1 c2 d3 e4: n1..n4 = 2,1,1,1, Y = 1/2, D = 0.5, 0.5, 1;
    # gamma = 0.5*2 + 0.5*1 + 1*2 = 3.5 over 11 characters, uniform 1/6 over {a..e, unknown}
    uni = KneserNey(1).fit("abccdddeeee")
    want = {"a": 0.5, "b": 0.5, "c": 1.5, "d": 2.0, "e": 3.0, None: 0.0}
    got = uni.next_char_probs("")
    for ch, discounted in want.items():
        assert got[ch] == pytest.approx((discounted + 3.5 / 6) / 11, abs=1e-12), ch
    # bigram on "abababab": ab x4, ba x3 -> n3 = n4 = 1, D3+ = 3 - 4 * 0.5 = 1 (D1, D2 fall back to Y = 0.5)
    # unigram continuation counts a:1 (after b), b:1 (after a): D1 = 1, so P1 = 1/3 each (a, b, unknown)
    bi = KneserNey(2).fit("abababab")
    assert bi.next_char_probs("a") == pytest.approx({"b": (4 - 1 + 1 / 3) / 4, "a": 1 / 12, None: 1 / 12}, abs=1e-12)
    assert bi.next_char_probs("b") == pytest.approx({"a": (3 - 1 + 1 / 3) / 3, "b": 1 / 9, None: 1 / 9}, abs=1e-12)
    # "abab": a with no context (P1), then b|a, a|b, b|a
    bits = -math.log2(1 / 3) - 2 * math.log2(5 / 6) - math.log2(7 / 9)
    assert bi.bits("abab") == pytest.approx(bits, abs=1e-9)
    assert bi.bits_per_byte("abab") == pytest.approx(bits / 4, abs=1e-9)




def reference_kneser_ney(text: str, order: int):
    """Interpolated modified Kneser-Ney written from Chen & Goodman with dictionaries over strings,
    independent of the model's array layout: returns P(char | context) (char None: unknown)."""
    alphabet = sorted(set(text))
    levels = []
    for k in range(1, order + 1):
        if k == order:  # raw counts
            counts = Counter(text[i - k + 1: i + 1] for i in range(k - 1, len(text)))
        else:  # continuation counts: distinct left neighbours
            counts = Counter(g[1:] for g in {text[i - k: i + 1] for i in range(k, len(text))})
        d = (0.0, *discounts(*count_of_counts(counts)))
        total: Counter = Counter()
        gamma: Counter = Counter()
        for g, c in counts.items():
            total[g[:-1]] += c
            gamma[g[:-1]] += d[min(c, 3)]
        levels.append((counts, d, total, gamma))

    def prob(ch: str | None, context: str) -> float:
        p = 1.0 / (len(alphabet) + 1)  # order 0: uniform over the alphabet and the unknown bucket
        for k, (counts, d, total, gamma) in enumerate(levels, start=1):
            h = context[len(context) - k + 1:] if k > 1 else ""
            if len(h) < k - 1 or not total[h]:  # no such history, or an unseen context: pass P_{k-1} on
                continue
            c = counts[h + ch] if ch is not None else 0
            p = (max(c - d[min(c, 3)], 0.0) + gamma[h] * p) / total[h]
        return p

    return alphabet, prob


@pytest.mark.parametrize("order", [2, 3, 5])
def test_probabilities_equal_a_dictionary_reference(order):
    """Every level's discounted count and back-off mass, against a direct implementation: a
    dropped or misrouted term (the lower order replaced by the uniform, a discount of the wrong
    bucket, the wrong context) changes some of these numbers while each distribution still sums to 1."""
    model = KneserNey(order).fit(SMALL)
    alphabet, prob = reference_kneser_ney(SMALL, order)
    contexts = {SMALL[max(0, i - order + 1): i] for i in range(0, len(SMALL), 3)} | {"", "q", "zz", "tac "}
    for ctx in sorted(contexts):
        got = model.next_char_probs(ctx)
        want = {ch: prob(ch, ctx) for ch in [None, *alphabet]}
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15), repr(ctx)

@pytest.mark.parametrize("order", [0, -1])
def test_order_below_one_is_refused_when_built(order):
    # an order-0 model has no levels at all: it must be refused up front, not fail later as "fit first"
    from rotary.errors import RotaryError

    with pytest.raises(RotaryError, match="at least 1"):
        KneserNey(order)

def test_higher_orders_do_better_on_repetitive_text():
    text = "the quick brown fox jumps over the lazy dog, then sleeps. " * 30
    probe = text[17:200]  # more of the same, from mid-sentence: long contexts predict it almost surely
    bpb = [KneserNey(n).fit(text).bits_per_byte(probe) for n in (1, 2, 3, 5)]
    assert bpb == sorted(bpb, reverse=True) and bpb[-1] < 0.6 * bpb[0], bpb


def test_unseen_characters_are_finite_and_bytes_divide():
    model = KneserNey(3).fit("abcabcabcab ca bc" * 5)
    text = "abc xyz\u00e9\u4e2d"  # unseen ASCII, a 2-byte and a 3-byte character
    bits = model.bits(text)
    assert math.isfinite(bits) and bits > 0
    assert model.bits_per_byte(text) == pytest.approx(bits / len(text.encode("utf-8")), rel=1e-12)
    assert len(text.encode("utf-8")) == len(text) + 1 + 2
    # all unknown characters share one bucket: each is as likely as the next
    assert model.bits("\u00e9") == pytest.approx(model.bits("\u4e2d"))


def test_the_demo_table_shows_the_kneser_ney_row():
    from rotary.demo import DemoResult, format_table

    table = {"rotary": {"loss": 3.0, "perplexity": 20.1, "bits_per_byte": 2.179},
             "kneser_ney": {"bits_per_byte": 2.028, "order": 8},
             "xz": {"bits_per_byte": 2.6}, "gzip": {"bits_per_byte": 3.1}}
    res = DemoResult(run_dir=Path("runs/demo"), table=table, sample="", prompt="", plot=None, wall_seconds=1.0,
                     ngram_bits_per_byte=2.028)
    out = format_table(res)
    assert "Kneser-Ney char 8-gram (interpolated, modified)" in out and "2.028" in out
    assert "rotary does NOT beat the Kneser-Ney n-gram" in out and "rotary beats xz" in out


def test_order_8_on_the_demo_split_scores_about_2_03(tmp_path):
    """The demo's own texts: fitted on the training works, scored on the held-out works."""
    from rotary.demo import NGRAM_ORDER, ngram_bits_per_byte, split_text, validation_text

    (tmp_path / "meta.json").write_text(json.dumps({"source": "shakespeare"}))  # as prepared shards record it
    val = validation_text(tmp_path)
    assert NGRAM_ORDER == 8
    # the held-out works (julius_caesar, twelfth_night, richard_ii), never seen in training
    for line in ("Friends, Romans, countrymen", "If music be the food of love"):
        assert line in val and line not in split_text(tmp_path, "train")
    assert ngram_bits_per_byte(tmp_path, val) == pytest.approx(2.03, abs=0.02)
