"""The data layer: corpora -> tokenizer -> prepared token shards -> batches.

- ``rotary.data.corpora``: built-in corpora (shakespeare, peoples-daily, chinese-sentiment) and
  generic sources (.txt, .jsonl, .parquet, HF datasets), ``load_corpus``.
- ``rotary.data.prepare``: ``prepare`` text into ``train.bin``/``val.bin`` + ``meta.json``;
  ``open_shards`` reads them back as memmaps.
- ``rotary.data.loader``: LM windows with the DDP block sampler, MLM masking, classification.
"""

from rotary.data.corpora import CORPORA, Corpus, corpus_stats, load_corpus
from rotary.data.loader import (
    ClassificationDataset,
    LMWindows,
    classification_batches,
    collate_classification,
    mask_tokens,
    random_lm_batches,
    random_mlm_batches,
    sequential_lm_batches,
    sequential_mlm_batches,
)
from rotary.data.prepare import PreparedInfo, open_shards, open_word_starts

# The function rotary.data.prepare.prepare is deliberately not re-exported here: a package
# attribute named "prepare" would shadow the submodule rotary.data.prepare.

__all__ = [
    "CORPORA",
    "ClassificationDataset",
    "Corpus",
    "LMWindows",
    "PreparedInfo",
    "classification_batches",
    "collate_classification",
    "corpus_stats",
    "load_corpus",
    "mask_tokens",
    "open_shards",
    "open_word_starts",
    "random_lm_batches",
    "random_mlm_batches",
    "sequential_lm_batches",
    "sequential_mlm_batches",
]
