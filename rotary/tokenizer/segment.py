"""Chinese word segmentation as RoFormer does it, for jieba tokenizers.

The words come from ``rjieba`` (jieba-rs, the segmenter of transformers' ``RoFormerTokenizer``)
with HMM off, on the normalised text; a word in the vocabulary is kept whole, any other is cut
into single CJK characters and non-CJK runs, which WordPiece then splits. A Python
pre-tokenizer cannot be serialised into ``tokenizer.json``, so rotary runs this step itself,
before the HF tokenizer.
"""

from __future__ import annotations

import re
from typing import Any

from rotary.errors import RotaryError

# The word segmenter of jieba tokenizers; part of their hash, so shards made with another
# segmentation are never taken for this tokenizer's.
SEGMENTER = "rjieba"


def _rjieba() -> Any:
    try:
        import rjieba
    except ImportError:
        raise RotaryError("jieba pre-tokenization needs the 'rjieba' package: pip install rjieba") from None
    return rjieba


def jieba_words(text: str) -> list[str]:
    """jieba's words of ``text`` (rjieba, HMM off, as RoFormer's tokenizer), whitespace dropped.

    HMM=False: dictionary words only; deterministic and faster.
    """
    return [w for w in _rjieba().cut(text, hmm=False) if not w.isspace()]


class RoFormerSegmenter:
    """What RoFormer's segmentation needs of a tokenizer, built once: its vocabulary, a regex of
    its special tokens, its normaliser, the CJK splitter, and the backend the pieces go to."""

    def __init__(self, backend: Any, kind: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import normalizers, pre_tokenizers

        specials = sorted({t.content for t in backend.get_added_tokens_decoder().values() if t.special},
                          key=len, reverse=True)
        self.special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        # transformers' JiebaPreTokenizer cuts words that are not in the vocabulary with this.
        self.cjk = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True,
                                              strip_accents=False, lowercase=False)
        self.vocab = backend.get_vocab(with_added_tokens=True)
        self.normalizer = backend.normalizer
        self.pieces_backend = backend
        if kind == "wordpiece":
            # The pieces go to WordPiece whole, as in RoFormer (no punctuation split: "c++"
            # stays one word); they hold no whitespace, so WhitespaceSplit leaves them be.
            self.pieces_backend = HFTokenizer.from_str(backend.to_str())
            self.pieces_backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()

    def segment(self, text: str) -> tuple[list[str], list[int]]:
        """RoFormer's pre-tokenization of ``text``: its pieces, and for each the index of the
        jieba word it belongs to (the unit of whole-word masking).

        Special tokens are cut out first and kept whole; each stretch between them is
        normalised and segmented by rjieba (HMM off); a word in the vocabulary is one piece,
        any other is cut into CJK characters and non-CJK runs (whitespace dropped), exactly as
        transformers' ``JiebaPreTokenizer`` does.
        """
        vocab, normalizer, cjk = self.vocab, self.normalizer, self.cjk
        tokenize = _rjieba().tokenize
        pieces: list[str] = []
        groups: list[int] = []
        segments = self.special_re.split(text) if self.special_re is not None else [text]
        for i, seg in enumerate(segments):
            if i % 2:  # re.split puts the captured special tokens at odd indices
                groups.append(groups[-1] + 1 if groups else 0)
                pieces.append(seg)
                continue
            if not seg:
                continue
            norm = normalizer.normalize_str(seg) if normalizer is not None else seg
            for token, start, _end in tokenize(norm, hmm=False):
                if token in vocab:
                    parts = [token]
                else:
                    parts = cjk.normalize_str(token).split()
                    if not parts:
                        continue
                word = groups[-1] + 1 if groups else 0
                for part in parts:
                    # Slices of the normalised text, advanced by the parts' lengths, as HF does.
                    pieces.append(norm[start:start + len(part)])
                    groups.append(word)
                    start += len(part)
        return pieces, groups
