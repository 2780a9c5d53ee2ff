"""The data layer: text sources -> tokenizer -> prepared token shards -> batches.

- ``rotary.data.sources``: built-in corpora (shakespeare, peoples-daily, chinese-sentiment, thucnews) and
  generic sources (.txt, .jsonl, .parquet, HF datasets), ``load_corpus``.
- ``rotary.data.prepare``: ``prepare`` text into ``train.bin``/``val.bin`` + ``meta.json``
  (encoding in ``rotary.data.encode``); ``rotary.data.shards`` reads them back as memmaps.
- ``rotary.data.sampler``: the one seed scheme (which windows, which random draws batch k uses).
- ``rotary.data.lm``: the causal and masked LM batches the trainer uses, ``prepare_training_data``.
- ``rotary.data.masking``: BERT masking and whole-word ids.
- ``rotary.data.classification``: padded (text, label) batches.
"""

from rotary.data.classification import (
    ClassificationDataset,
    classification_batches,
    collate_classification,
)
from rotary.data.lm import TrainData, prepare_training_data
from rotary.data.masking import mask_tokens, word_ids_from_starts, wordpiece_start_table
from rotary.data.prepare import PreparedInfo
from rotary.data.shards import open_shards, open_word_starts, read_meta
from rotary.data.sources import CORPORA, Corpus, corpus_stats, load_corpus
from rotary.labels import IGNORE_INDEX

# The function rotary.data.prepare.prepare is deliberately not re-exported here: a package
# attribute named "prepare" would shadow the submodule rotary.data.prepare.

__all__ = [
    "CORPORA",
    "IGNORE_INDEX",
    "ClassificationDataset",
    "Corpus",
    "PreparedInfo",
    "TrainData",
    "classification_batches",
    "collate_classification",
    "corpus_stats",
    "load_corpus",
    "mask_tokens",
    "open_shards",
    "open_word_starts",
    "prepare_training_data",
    "read_meta",
    "word_ids_from_starts",
    "wordpiece_start_table",
]
