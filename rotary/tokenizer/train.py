"""Training a tokenizer on a corpus's training split: byte-level BPE, WordPiece or characters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.tokenizer.segment import jieba_words
from rotary.tokenizer.tokenizer import KINDS, Tokenizer, specials_for


def _build_backend(kind: str, *, jieba: bool, lowercase: bool) -> Any:
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    if kind == "bpe":
        tok = HFTokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        # No prefix space and no normaliser otherwise: decode(encode(text)) == text, byte for byte.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return tok
    if kind == "wordpiece":
        tok = HFTokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        # With jieba, keep CJK runs together so that jieba's words reach WordPiece whole.
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=not jieba,
                                                    strip_accents=False, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    else:  # char
        tok = HFTokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                                    strip_accents=False, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex("."), behavior="isolated"),
        ])
        tok.decoder = decoders.Fuse()
    return tok


def _set_mlm_template(tok: Any) -> None:
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def train_tokenizer(corpus: Any, kind: str, vocab_size: int, out_dir: str | Path | None = None, *,
                    jieba: bool = False, lowercase: bool = False, min_frequency: int = 2,
                    progress: bool = False, batch_docs: int = 256, **corpus_opts: Any) -> Tokenizer:
    """Train on the corpus's training split only (validation text stays unseen) and save to ``out_dir``.

    ``corpus`` is a name, a path or a ``Corpus``; ``corpus_opts`` go to ``load_corpus``.
    """
    from tokenizers import pre_tokenizers, trainers

    from rotary.data.sources import load_corpus

    if kind not in KINDS:
        raise RotaryError(f"unknown tokenizer kind '{kind}' (valid: {', '.join(KINDS)})")
    if jieba and kind == "bpe":
        raise RotaryError("jieba pre-tokenization is for the wordpiece and char kinds (byte-level BPE keeps spaces)")
    specials = list(specials_for(kind))
    minimum = len(specials) + (256 if kind == "bpe" else 1)
    if int(vocab_size) < minimum:
        raise RotaryError(f"vocab_size {vocab_size} is too small for a {kind} tokenizer (at least {minimum})")
    if int(vocab_size) > 2**32:
        raise RotaryError(f"vocab_size {vocab_size} does not fit token ids of 32 bits")
    if min_frequency < 1:
        raise RotaryError(f"min_frequency must be >= 1, got {min_frequency}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise RotaryError(f"--out {out_dir} is a file: give a directory for the tokenizer (checked before training)")
    corpus = load_corpus(corpus, **corpus_opts)

    backend = _build_backend(kind, jieba=jieba, lowercase=lowercase)
    if jieba and kind == "wordpiece":
        # Train on jieba's words whole, as they reach WordPiece when encoding (no punctuation
        # split inside a word); tokenizer.json keeps BertPreTokenizer, as RoFormer's does.
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
    elif kind == "wordpiece":
        # WordPiece's alphabet is every character seen: for Chinese that alone can exceed a small
        # vocabulary, so keep the most frequent characters and leave room for whole words.
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=progress,
                                            limit_alphabet=max(1, (vocab_size - len(specials)) // 2),
                                            continuing_subword_prefix="##")
    else:
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=progress)

    seen = {"docs": 0}
    normalize = backend.normalizer.normalize_str if backend.normalizer is not None else str

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        for text in corpus.train_documents():
            seen["docs"] += 1
            # jieba's words of the normalised text (as when encoding) reach the trainer
            # separated by spaces; the pre-tokenizer splits there.
            batch.append(" ".join(jieba_words(normalize(text))) if jieba else text)
            if len(batch) >= batch_docs:
                yield batch
                batch = []
        if batch:
            yield batch

    backend.train_from_iterator(batches(), trainer=trainer)
    if seen["docs"] == 0:
        raise RotaryError(f"corpus '{corpus.name}' has no text in its training split (empty file?)")
    if jieba and kind == "wordpiece":
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if kind != "bpe":
        _set_mlm_template(backend)
    tok = Tokenizer(backend, kind, jieba=jieba, lowercase=lowercase,
                    meta={"trained_on": corpus.name, "requested_vocab_size": int(vocab_size),
                          "min_frequency": int(min_frequency),
                          "replaced_undecodable": corpus.replacements["train"]})
    if out_dir is not None:
        tok.save(out_dir)
    return tok
