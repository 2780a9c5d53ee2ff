"""Tokenizers: train, save, load. A thin wrapper over HF ``tokenizers`` with jieba that survives saving.

Three kinds:

- ``bpe``: byte-level BPE (GPT-2 style) for English and causal LMs; special ``<|endoftext|>``.
  Any text round-trips exactly through ``encode`` / ``decode``.
- ``wordpiece``: BERT-style WordPiece for masked LMs, ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
  Without jieba every CJK character is its own word (Chinese BERT); with ``jieba=True``
  words come from jieba and are split exactly as HF's RoFormer tokenizer splits them (below).
- ``char``: one token per character (whitespace dropped), the same MLM special tokens.

Special tokens (``[MASK]``, ``<|endoftext|>``, ...) written in the text are never split: they
are cut out before any pre-tokenizer runs, as HF's added-token matching does.

A directory holds ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
(so ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it) plus ``rotary_tokenizer.json``,
rotary's own record. A Python pre-tokenizer cannot be serialised into ``tokenizer.json``, so
rotary runs jieba itself, before the HF tokenizer, and records ``"pre_tokenizer": "jieba"`` so
that ``load_tokenizer`` re-applies it.

Modules: ``tokenizer`` (the Tokenizer class, its hash and files), ``segment`` (RoFormer's
jieba segmentation), ``train`` (training), ``load`` (loading a directory).

jieba means RoFormer's segmentation, so that the HF export encodes exactly as rotary does: the
words come from ``rjieba`` (jieba-rs, the segmenter of transformers' ``RoFormerTokenizer``) with
HMM off, on the normalised text; a word in the vocabulary is kept whole, any other is cut into
single CJK characters and non-CJK runs, which WordPiece then splits. A jieba WordPiece directory
declares ``tokenizer_class: RoFormerTokenizer`` and carries ``vocab.txt``, so ``AutoTokenizer``
(with ``rjieba`` installed) gives rotary's ids; ``PreTrainedTokenizerFast`` alone cannot segment
words. A jieba ``char`` tokenizer's ids do not depend on the words (only whole-word masking
does), so it loads in ``PreTrainedTokenizerFast``.
"""

from rotary.tokenizer.load import load_tokenizer
from rotary.tokenizer.segment import SEGMENTER, jieba_words
from rotary.tokenizer.tokenizer import (
    CAUSAL_SPECIALS,
    EOT,
    FORMAT_VERSION,
    KINDS,
    MLM_SPECIALS,
    RECORD,
    Tokenizer,
)
from rotary.tokenizer.train import train_tokenizer

__all__ = [
    "CAUSAL_SPECIALS",
    "EOT",
    "FORMAT_VERSION",
    "KINDS",
    "MLM_SPECIALS",
    "RECORD",
    "SEGMENTER",
    "Tokenizer",
    "jieba_words",
    "load_tokenizer",
    "train_tokenizer",
]
