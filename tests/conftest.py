"""Shared fixtures. Data-layer fixtures are prefixed ``data_`` (small tokenizers, trained once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) trained on four Shakespeare works."""
    from rotary.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data_tok") / "bpe"
    train_tokenizer("shakespeare", "bpe", 1024, out, max_documents=4)
    return out


@pytest.fixture(scope="session")
def data_wordpiece_jieba_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece tokenizer with jieba words (vocab 3000) trained on 300 People's Daily articles."""
    from rotary.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data_tok") / "wordpiece-jieba"
    train_tokenizer("peoples-daily", "wordpiece", 3000, out, jieba=True, max_documents=300)
    return out


@pytest.fixture(scope="session")
def data_char_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character tokenizer (vocab 1500) trained on 300 People's Daily articles."""
    from rotary.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data_tok") / "char"
    train_tokenizer("peoples-daily", "char", 1500, out, max_documents=300)
    return out
