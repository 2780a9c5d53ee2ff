"""BERT masking (rotary.data.masking): rates, special tokens, whole words, word ids.

The batches that use it on real shards are tests/data/test_lm_data.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotary.data.masking import mask_tokens, word_ids_from_starts, wordpiece_start_table
from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX
from rotary.tokenizer import load_tokenizer

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
    again = mask_tokens(ids, vocab_size=1000, mask_id=4, special_ids=SPECIALS,
                        generator=torch.Generator().manual_seed(1))
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


def test_word_ids_from_starts_number_words_and_open_a_cut_word() -> None:
    starts = torch.tensor([[0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 0, 0]], dtype=torch.uint8)
    ids = word_ids_from_starts(starts)
    assert ids.tolist() == [[1, 1, 2, 2, 3, 4], [1, 1, 1, 2, 2, 2]]
    assert starts[0, 0] == 0  # the caller's flags are left as they were
    flags = torch.tensor([[0, 1, 0]])
    word_ids_from_starts(flags)
    assert flags.tolist() == [[0, 1, 0]]


def test_mask_tokens_rejects_bad_arguments() -> None:
    ids = torch.randint(5, 100, (2, 8))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RotaryError, match="mlm_probability must be in"):
        mask_tokens(ids, vocab_size=100, mask_id=4, special_ids=SPECIALS, generator=g, mlm_probability=1.0)
    with pytest.raises(RotaryError, match="expects \\(batch, seq_len\\)"):
        mask_tokens(ids[0], vocab_size=100, mask_id=4, special_ids=SPECIALS, generator=g)
    with pytest.raises(RotaryError, match="word_ids shape"):
        mask_tokens(ids, vocab_size=100, mask_id=4, special_ids=SPECIALS, generator=g, word_ids=ids[:, :4])


def test_wordpiece_start_table(data_wordpiece_jieba_dir: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    table = wordpiece_start_table(tok)
    assert table.shape == (tok.vocab_size,)
    for i in range(tok.vocab_size):
        assert table[i] == (0 if tok.id_to_token(i).startswith("##") else 1)
