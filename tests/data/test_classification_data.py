"""Classification batches (rotary.data.classification): truncation, padding, pairs, seeded shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rotary.data.classification import (
    ClassificationDataset,
    classification_batches,
    collate_classification,
)
from rotary.data.sources import load_corpus
from rotary.errors import RotaryError
from rotary.tokenizer import load_tokenizer


def test_classification_single_texts_truncate_and_pad(data_char_dir: Path) -> None:
    tok = load_tokenizer(data_char_dir)
    examples = list(load_corpus("chinese-sentiment", max_documents=64).train_examples())
    ds = ClassificationDataset(examples, tok, max_len=32)
    assert len(ds) == 64 and ds.num_labels == 2
    assert all(len(x) <= 32 for x in ds.input_ids)
    assert all(x[0] == tok.cls_id and x[-1] == tok.sep_id for x in ds.input_ids)
    batch = collate_classification([ds[i] for i in range(8)], tok.pad_id)
    longest = max(len(ds.input_ids[i]) for i in range(8))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (8, longest)
    assert batch["labels"].tolist() == [y for _, y in examples[:8]]
    lengths = batch["attention_mask"].sum(1)
    assert lengths.tolist() == [len(ds.input_ids[i]) for i in range(8)]
    for i, n in enumerate(lengths.tolist()):
        assert (batch["input_ids"][i, n:] == tok.pad_id).all()


def test_classification_pairs(data_char_dir: Path, data_bpe_dir: Path) -> None:
    tok = load_tokenizer(data_char_dir)
    pairs = [("今天天气很好", "明天下雨", 1), ("北京" * 20, "上海" * 20, 0)]
    ds = ClassificationDataset(pairs, tok, max_len=16, pair=True)
    ids, types = ds.input_ids[1], ds.token_type_ids[1]
    assert len(ids) == 16
    assert ids[0] == tok.cls_id and (ids == tok.sep_id).sum() == 2
    assert types[0] == 0 and types[-1] == 1 and set(types.tolist()) == {0, 1}
    # Causal tokenizers end each text with <|endoftext|> instead.
    bpe = load_tokenizer(data_bpe_dir)
    ds = ClassificationDataset([("To be", "or not", 1)], bpe, max_len=16, pair=True)
    ids = ds.input_ids[0].tolist()
    assert ids == bpe.encode("To be") + [bpe.eos_id] + bpe.encode("or not") + [bpe.eos_id]
    with pytest.raises(RotaryError, match="expected \\(text_a, text_b, label\\)"):
        ClassificationDataset([("a", 1)], tok, 16, pair=True)
    with pytest.raises(RotaryError, match="non-negative integer"):
        ClassificationDataset([("a", "yes")], tok, 16)
    with pytest.raises(RotaryError, match="no classification examples"):
        ClassificationDataset([], tok, 16)


def test_classification_batches_seeded_and_sharded(data_char_dir: Path) -> None:
    tok = load_tokenizer(data_char_dir)
    # The label is the example's index here, so batches reveal the order.
    examples = [(f"第{i}条评论", i) for i in range(50)]
    ds = ClassificationDataset(examples, tok, max_len=16)

    def order(**kw):
        return torch.cat([b["labels"] for b in classification_batches(ds, 8, **kw)])

    a, b = order(seed=1), order(seed=1)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, order(seed=2)) and not torch.equal(a, order(seed=1, epoch=1))
    assert order(shuffle=False).tolist() == list(range(50))
    shards = [torch.cat([b["labels"] for b in classification_batches(ds, 4, seed=1, rank=r, world_size=3)])
              for r in range(3)]
    assert [len(s) for s in shards] == [16, 16, 16]
    seen = torch.cat(shards).tolist()
    assert len(set(seen)) == 48  # disjoint; the two left over from 50 = 3 * 16 + 2 are dropped
    assert all(len(b["labels"]) == 8 for b in classification_batches(ds, 8, seed=0, drop_last=True))


def test_classification_dataset_takes_labelled_examples(data_char_dir: Path) -> None:
    from rotary.data.sources import Example, load_labelled

    tok = load_tokenizer(data_char_dir)
    examples = load_labelled("chinese-sentiment", max_examples=16).split("val")
    ds = ClassificationDataset(examples, tok, max_len=32)
    assert ds.labels.tolist() == [e.label for e in examples]
    assert ds.input_ids[0].tolist() == tok.encode_for_model([examples[0].text], None, max_len=32)[0].ids
    pairs = [Example("今天天气很好", "明天下雨", 1), Example("北京", "上海", 0)]
    assert len(ClassificationDataset(pairs, tok, max_len=16, pair=True)) == 2
    with pytest.raises(RotaryError, match="has a text_pair: build the dataset with pair=True"):
        ClassificationDataset(pairs, tok, max_len=16)
    with pytest.raises(RotaryError, match="no text_pair for a pair classifier"):
        ClassificationDataset([Example("a", None, 0)], tok, max_len=16, pair=True)
