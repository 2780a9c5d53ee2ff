"""BERT's masked-LM corruption, and the word ids that make it whole-word.

``mask_tokens`` chooses ``mlm_probability`` of the tokens (never a special one) and replaces
80% of them with [MASK], 10% with a random non-special token and leaves 10% unchanged; the
labels hold the original ids there and ``IGNORE_INDEX`` everywhere else. With word ids a word
is chosen or not as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX


def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_id: int, special_ids: Iterable[int],
                generator: torch.Generator, mlm_probability: float = 0.15,
                word_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels), both (batch, seq_len), of BERT masking ``input_ids`` (batch, seq_len).

    Special tokens are never chosen, and random replacements are never special tokens.
    ``word_ids`` (same shape; equal ids on consecutive tokens = one word, see
    ``word_ids_from_starts``) turns on whole-word masking.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise RotaryError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if input_ids.dim() != 2:
        raise RotaryError(f"mask_tokens expects (batch, seq_len) ids, got shape {tuple(input_ids.shape)}")
    ids = input_ids.clone()
    specials = torch.as_tensor(sorted(set(special_ids)), dtype=ids.dtype)
    special = torch.isin(ids, specials)
    draw = torch.rand(ids.shape, generator=generator)
    if word_ids is None:
        chosen = draw < mlm_probability
    else:
        if word_ids.shape != ids.shape:
            raise RotaryError(f"word_ids shape {tuple(word_ids.shape)} != input_ids shape {tuple(ids.shape)}")
        starts = torch.ones_like(ids, dtype=torch.bool)
        starts[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]
        pos = torch.arange(ids.shape[1]).expand_as(ids)  # (batch, seq_len)
        # Index of the first token of each token's word: a running max over start positions.
        first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        chosen = draw.gather(1, first) < mlm_probability  # every token takes its word's draw
    chosen &= ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    how = torch.rand(ids.shape, generator=generator)
    ids[chosen & (how < 0.8)] = mask_id
    randomize = chosen & (how >= 0.8) & (how < 0.9)
    n_random = int(randomize.sum())
    if n_random:
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[specials[specials < vocab_size].long()] = False
        candidates = allowed.nonzero().squeeze(1).to(ids.dtype)
        ids[randomize] = candidates[torch.randint(len(candidates), (n_random,), generator=generator)]
    return ids, labels


def word_ids_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Word ids (batch, seq_len) from word-start flags (batch, seq_len; 1 = a word starts here).

    A window may open mid-word: that part counts as a word of its own.
    """
    flags = starts.to(torch.int64, copy=True)  # the caller's flags stay as they were
    flags[:, 0] = 1
    return flags.cumsum(dim=1)


def wordpiece_start_table(tokenizer: Any) -> np.ndarray:
    """Per vocabulary id (vocab_size,): 1 if the token starts a word (WordPiece: not ``##``)."""
    table = np.ones(tokenizer.vocab_size, dtype=np.uint8)
    for token, i in tokenizer.backend.get_vocab(with_added_tokens=True).items():
        if token.startswith("##"):
            table[i] = 0
    return table
