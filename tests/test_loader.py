"""Loaders: LM windows and the DDP block sampler, MLM masking, classification batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotary.data.corpora import load_corpus
from rotary.data.loader import (
    IGNORE_INDEX,
    ClassificationDataset,
    LMWindows,
    classification_batches,
    collate_classification,
    lm_batch,
    mask_tokens,
    random_lm_batches,
    random_mlm_batches,
    rank_block,
    sequential_lm_batches,
    sequential_mlm_batches,
    wordpiece_start_table,
)
from rotary.data.prepare import open_shards, open_word_starts, prepare
from rotary.errors import RotaryError
from rotary.tokenizer import load_tokenizer

# Token ids equal to their positions reveal exactly where each window came from.
POSITIONS = np.arange(100_000, dtype=np.uint32)


def take(it, n):
    return list(itertools.islice(it, n))


# --------------------------------------------------------------------------------------------
# causal LM
# --------------------------------------------------------------------------------------------


def test_random_lm_batches_are_shifted_windows() -> None:
    x, y = next(random_lm_batches(POSITIONS, 32, 8, seed=0))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    # A window is a contiguous slice of the shard.
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.long))


def test_random_lm_batches_are_reproducible_and_resumable() -> None:
    a = take(random_lm_batches(POSITIONS, 16, 4, seed=7), 6)
    b = take(random_lm_batches(POSITIONS, 16, 4, seed=7), 6)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    other_seed = take(random_lm_batches(POSITIONS, 16, 4, seed=8), 6)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, other_seed))
    # Resuming at step 4 gives batches 4 and 5 of the uninterrupted run.
    resumed = take(random_lm_batches(POSITIONS, 16, 4, seed=7, start_step=4), 2)
    assert torch.equal(resumed[0][0], a[4][0]) and torch.equal(resumed[1][0], a[5][0])
    # ... and batch k on its own is the same pure function.
    assert torch.equal(lm_batch(POSITIONS, 16, 4, seed=7, step=3)[0], a[3][0])
    # Batches within a run differ.
    assert not torch.equal(a[0][0], a[1][0])


def test_each_rank_samples_its_own_contiguous_block() -> None:
    world = 4
    blocks = [rank_block(len(POSITIONS), r, world) for r in range(world)]
    assert blocks == [(0, 25_000), (25_000, 50_000), (50_000, 75_000), (75_000, 100_000)]
    seen = []
    for r, (start, end) in enumerate(blocks):
        xs = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in
                        take(random_lm_batches(POSITIONS, 64, 16, seed=3, rank=r, world_size=world), 20)])
        assert int(xs.min()) >= start and int(xs.max()) < end
        seen.append(xs)
    # Different ranks see different data even with the same seed.
    assert not torch.equal(seen[0] - 0, seen[1] - 25_000)
    with pytest.raises(RotaryError, match="rank 4 is not in a world of size 4"):
        next(random_lm_batches(POSITIONS, 8, 2, seed=0, rank=4, world_size=4))
    with pytest.raises(RotaryError, match="too small"):
        next(random_lm_batches(POSITIONS[:60], 64, 2, seed=0, rank=0, world_size=4))
    # The global batch does not depend on how it is split over ranks (the trainer relies on it).
    whole = lm_batch(POSITIONS, 16, 8, seed=5, step=2)[0]
    parts = torch.cat([lm_batch(POSITIONS, 16, 2, seed=5, step=2, rank=r, world_size=4)[0] for r in range(4)])
    assert torch.equal(whole, parts)


def test_sequential_lm_batches_cover_each_window_once() -> None:
    tokens = POSITIONS[:1001]
    batches = list(sequential_lm_batches(tokens, 10, 16))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (100, 10)
    assert torch.equal(x.flatten(), torch.arange(1000)) and torch.equal(y.flatten(), torch.arange(1, 1001))
    assert [len(b[0]) for b in batches] == [16] * 6 + [4]
    assert len(list(sequential_lm_batches(tokens, 10, 16, max_batches=2))) == 2
    # Ranks: equal, contiguous, disjoint shares.
    parts = [torch.cat([b[0] for b in sequential_lm_batches(tokens, 10, 8, rank=r, world_size=3)]) for r in range(3)]
    assert [len(p) for p in parts] == [33, 33, 33]
    flat = torch.cat([p.flatten() for p in parts])
    assert len(set(flat.tolist())) == len(flat) and torch.equal(flat, torch.arange(990))


def test_lm_windows_dataset() -> None:
    ds = LMWindows(POSITIONS[:101], 10)
    assert len(ds) == 10
    x, y = ds[3]
    assert x.tolist() == list(range(30, 40)) and y.tolist() == list(range(31, 41))
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(RotaryError, match="fewer than one window"):
        LMWindows(POSITIONS[:5], 10)


def test_lm_batches_from_a_prepared_memmap(data_bpe_dir: Path, tmp_path: Path) -> None:
    prepare("shakespeare", data_bpe_dir, tmp_path / "p", progress=False, corpus_opts={"max_documents": 2})
    meta, shards = open_shards(tmp_path / "p")
    train = shards["train"]
    x, y = next(random_lm_batches(train, 64, 4, seed=1))
    # Each row is really a slice of the shard.
    row = x[0].numpy()
    starts = np.flatnonzero(np.asarray(train[:-64]) == row[0])
    assert any(np.array_equal(np.asarray(train[s:s + 64]), row) for s in starts)
    assert int(x.max()) < meta["vocab_size"]


# --------------------------------------------------------------------------------------------
# masked LM
# --------------------------------------------------------------------------------------------

SPECIALS = [0, 1, 2, 3, 4]


def test_mask_tokens_rates_and_invariants() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 512), generator=gen)
    ids[:, 0] = 2  # [CLS]
    ids[:, 100] = 3  # [SEP]
    inputs, labels = mask_tokens(ids, vocab_size=1000, mask_id=4, special_ids=SPECIALS,
                                 generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    assert not chosen[:, 0].any() and not chosen[:, 100].any()
    masked = chosen & (inputs == 4)
    changed = chosen & (inputs != 4) & (inputs != ids)
    kept = chosen & (inputs == ids)
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(changed.sum().item() / n - 0.1) < 0.02
    assert abs(kept.sum().item() / n - 0.1) < 0.02
    # Random replacements are never special tokens; unchosen tokens are untouched.
    assert not torch.isin(inputs[changed], torch.tensor(SPECIALS)).any()
    assert torch.equal(inputs[~chosen], ids[~chosen])
    again = mask_tokens(ids, vocab_size=1000, mask_id=4, special_ids=SPECIALS, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.05, 0.5), st.integers(1, 6))
def test_whole_word_masking_masks_words_together(seed: int, p: float, word_len: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (4, 60), generator=gen)
    word_ids = (torch.arange(60) // word_len).expand(4, 60)
    ids[:, 30] = 3  # a special token inside a word is still never masked
    inputs, labels = mask_tokens(ids, vocab_size=500, mask_id=4, special_ids=SPECIALS, generator=gen,
                                 mlm_probability=p, word_ids=word_ids)
    assert not (labels[:, 30] != IGNORE_INDEX).any()
    chosen = labels != IGNORE_INDEX
    if word_len > 1:
        # Judge the special token's word by its other tokens.
        other = 30 // word_len * word_len if 30 % word_len else 31
        chosen[:, 30] = chosen[:, other]
    by_word = chosen.view(4, -1, word_len)
    # every word is all chosen or all not chosen
    assert torch.all(by_word.all(-1) | ~by_word.any(-1))


def test_random_mlm_batches_deterministic_with_cls_and_whole_words(data_wordpiece_jieba_dir: Path,
                                                                    tmp_path: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    prepare("peoples-daily", data_wordpiece_jieba_dir, tmp_path / "p", progress=False, num_workers=1,
            corpus_opts={"max_documents": 60})
    _, shards = open_shards(tmp_path / "p")
    words = open_word_starts(tmp_path / "p")
    kw = dict(seed=5, vocab_size=tok.vocab_size, mask_id=tok.mask_id, special_ids=tok.special_ids,
              cls_id=tok.cls_id, word_starts=words["train"])
    a = take(random_mlm_batches(shards["train"], 64, 8, **kw), 3)
    b = take(random_mlm_batches(shards["train"], 64, 8, **kw), 3)
    resumed = next(random_mlm_batches(shards["train"], 64, 8, start_step=2, **kw))
    for (xa, la), (xb, lb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(la, lb)
    assert torch.equal(resumed[0], a[2][0]) and torch.equal(resumed[1], a[2][1])
    inputs, labels = a[0]
    assert inputs.shape == labels.shape == (8, 64)
    assert (inputs[:, 0] == tok.cls_id).all() and (labels[:, 0] == IGNORE_INDEX).all()
    assert (labels != IGNORE_INDEX).any()
    other = next(random_mlm_batches(shards["train"], 64, 8, **{**kw, "seed": 6}))
    assert not torch.equal(other[0], inputs)
    # Whole words: a chosen "##" continuation always has its word's first token chosen too.
    cont = torch.tensor([tok.id_to_token(i).startswith("##") for i in range(tok.vocab_size)])
    for inputs, labels in a:
        chosen = labels != IGNORE_INDEX
        original = torch.where(chosen, labels, inputs)
        is_cont = cont[original]
        follow = chosen[:, 1:] & is_cont[:, 1:]
        follow[:, 0] = False  # the first token after [CLS] may be a cut word's tail: its own word
        assert (chosen[:, :-1][follow]).all()
    # Eval batches: fixed masks, same every time.
    e1 = list(sequential_mlm_batches(shards["val"], 32, 4, vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                                     special_ids=tok.special_ids, cls_id=tok.cls_id, max_batches=2))
    e2 = list(sequential_mlm_batches(shards["val"], 32, 4, vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                                     special_ids=tok.special_ids, cls_id=tok.cls_id, max_batches=2))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1, e2))


def test_wordpiece_start_table(data_wordpiece_jieba_dir: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    table = wordpiece_start_table(tok)
    assert table.shape == (tok.vocab_size,)
    for i in range(tok.vocab_size):
        assert table[i] == (0 if tok.id_to_token(i).startswith("##") else 1)


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------


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
