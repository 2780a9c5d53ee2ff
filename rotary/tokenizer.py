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

jieba means RoFormer's segmentation, so that the HF export encodes exactly as rotary does: the
words come from ``rjieba`` (jieba-rs, the segmenter of transformers' ``RoFormerTokenizer``) with
HMM off, on the normalised text; a word in the vocabulary is kept whole, any other is cut into
single CJK characters and non-CJK runs, which WordPiece then splits. A jieba WordPiece directory
declares ``tokenizer_class: RoFormerTokenizer`` and carries ``vocab.txt``, so ``AutoTokenizer``
(with ``rjieba`` installed) gives rotary's ids; ``PreTrainedTokenizerFast`` alone cannot segment
words. A jieba ``char`` tokenizer's ids do not depend on the words (only whole-word masking
does), so it loads in ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.io import atomic_write_text

KINDS = ("bpe", "wordpiece", "char")
EOT = "<|endoftext|>"
MLM_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CAUSAL_SPECIALS = (EOT,)
# 2: jieba tokenizers segment with rjieba and RoFormer's rule and record "segmenter".
FORMAT_VERSION = 2
RECORD = "rotary_tokenizer.json"
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


def _content_hash(source_json: str, kind: str, pre_tokenizer: str | None, segmenter: str | None) -> str:
    h = hashlib.sha256()
    h.update(_canonical_json(source_json).encode("utf-8"))
    ident: dict[str, Any] = {"kind": kind, "pre_tokenizer": pre_tokenizer}
    if segmenter is not None:  # absent for other tokenizers: their hashes stay as they were
        ident["segmenter"] = segmenter
    h.update(json.dumps(ident, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _specials_for(kind: str) -> tuple[str, ...]:
    return CAUSAL_SPECIALS if kind == "bpe" else MLM_SPECIALS


def _canonical_json(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Tokenizer:
    """rotary's tokenizer: a ``tokenizers.Tokenizer`` plus its kind and optional jieba step.

    ``encode`` returns the plain ids of a text (no [CLS]/[SEP]: the data pipeline places
    separators itself); ``encode_for_model`` adds the template's special tokens.
    """

    def __init__(self, backend: Any, kind: str, *, jieba: bool = False, lowercase: bool = False,
                 meta: dict[str, Any] | None = None, source_json: str | None = None) -> None:
        if kind not in KINDS:
            raise RotaryError(f"unknown tokenizer kind '{kind}' (valid: {', '.join(KINDS)})")
        self.backend = backend
        self.kind = kind
        self.jieba = bool(jieba)
        self.lowercase = bool(lowercase)
        self.meta = dict(meta or {})
        vocab = backend.get_vocab(with_added_tokens=True)
        self._id = {tok: vocab.get(tok) for tok in (*MLM_SPECIALS, EOT)}
        # A transformers tokenizer folder names its own EOS/PAD (Llama: </s>, <unk>...)
        for key, ours in (("eos_token", EOT if kind == "bpe" else "[SEP]"), ("pad_token", "[PAD]")):
            name = self.meta.get(key)
            if isinstance(name, str) and vocab.get(name) is not None:
                self._id[ours] = vocab[name]
        self._jieba_state: tuple[Any, ...] | None = None
        self._hash: str | None = None
        # The JSON the hash is computed from: the file as loaded, so that a newer tokenizers
        # release serialising the same tokenizer differently does not change its identity.
        self._source_json = source_json

    # -- ids of special tokens ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int | None:
        return self._id["[PAD]"]

    @property
    def unk_id(self) -> int | None:
        return self._id["[UNK]"]

    @property
    def cls_id(self) -> int | None:
        return self._id["[CLS]"]

    @property
    def sep_id(self) -> int | None:
        return self._id["[SEP]"]

    @property
    def mask_id(self) -> int | None:
        return self._id["[MASK]"]

    @property
    def eos_id(self) -> int:
        """The document separator: ``<|endoftext|>`` for causal kinds, ``[SEP]`` for MLM kinds."""
        eos = self._id[EOT] if self.kind == "bpe" else self._id["[SEP]"]
        if eos is None:
            raise RotaryError(f"tokenizer has no {'<|endoftext|>' if self.kind == 'bpe' else '[SEP]'} token")
        return eos

    @property
    def special_ids(self) -> list[int]:
        """Ids of all special tokens (never masked, never sampled as random replacements)."""
        ids = {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}
        ids.update(i for i in self._id.values() if i is not None)
        return sorted(ids)

    @property
    def is_causal(self) -> bool:
        return self.kind == "bpe"

    # -- encoding -------------------------------------------------------------------------------
    def _jieba_parts(self) -> tuple[Any, ...]:
        """What RoFormer's segmentation needs: (vocab, special-token regex, normalizer, CJK
        splitter, backend for the pieces), built once."""
        if self._jieba_state is None:
            from tokenizers import Tokenizer as HFTokenizer
            from tokenizers import normalizers, pre_tokenizers

            specials = sorted({t.content for t in self.backend.get_added_tokens_decoder().values() if t.special},
                              key=len, reverse=True)
            special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
            # transformers' JiebaPreTokenizer cuts words that are not in the vocabulary with this.
            cjk = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True,
                                             strip_accents=False, lowercase=False)
            pieces_backend = self.backend
            if self.kind == "wordpiece":
                # The pieces go to WordPiece whole, as in RoFormer (no punctuation split: "c++"
                # stays one word); they hold no whitespace, so WhitespaceSplit leaves them be.
                pieces_backend = HFTokenizer.from_str(self.backend.to_str())
                pieces_backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
            self._jieba_state = (self.backend.get_vocab(with_added_tokens=True), special_re,
                                 self.backend.normalizer, cjk, pieces_backend)
        return self._jieba_state

    def _word_backend(self) -> Any:
        return self._jieba_parts()[4] if self.jieba else self.backend

    def segment(self, text: str) -> tuple[list[str], list[int]]:
        """RoFormer's pre-tokenization of ``text``: its pieces, and for each the index of the
        jieba word it belongs to (the unit of whole-word masking).

        Special tokens are cut out first and kept whole; each stretch between them is
        normalised and segmented by rjieba (HMM off); a word in the vocabulary is one piece,
        any other is cut into CJK characters and non-CJK runs (whitespace dropped), exactly as
        transformers' ``JiebaPreTokenizer`` does.
        """
        vocab, special_re, normalizer, cjk, _ = self._jieba_parts()
        tokenize = _rjieba().tokenize
        pieces: list[str] = []
        groups: list[int] = []
        segments = special_re.split(text) if special_re is not None else [text]
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

    def pretokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The pieces of each text that reach the HF tokenizer (see ``segment``)."""
        return [self.segment(t)[0] for t in texts]

    def encode_batch_raw(self, texts: Sequence[str], *, add_special_tokens: bool = False,
                         pretokenized: Sequence[list[str]] | None = None, fast: bool = False) -> list[Any]:
        """``tokenizers.Encoding`` objects, with jieba applied first when this tokenizer uses it.

        ``fast`` skips character offsets (``encode_batch_fast``), which prepare does not need.
        ``pretokenized``: the texts' pieces from ``pretokenize``, when the caller has them.
        """
        texts = list(texts)
        if self.jieba or pretokenized is not None:
            words = pretokenized if pretokenized is not None else self.pretokenize(texts)
            return self._word_backend().encode_batch(list(words), is_pretokenized=True,
                                                     add_special_tokens=add_special_tokens)
        if fast:
            return self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
        return self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.encode_batch_raw([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.encode_batch_raw(texts, add_special_tokens=add_special_tokens, fast=True)]

    def encode_for_model(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                         max_len: int | None = None) -> list[Any]:
        """Encodings with the template's special tokens ([CLS] a [SEP] b [SEP]), truncated to ``max_len``.

        Truncation runs in Rust on a copy of the backend (longest-first for pairs), leaving
        this tokenizer's own settings untouched.
        """
        backend = self._truncating_backend(max_len, pairs is not None)
        if self.jieba:
            a = self.pretokenize(texts)
            inputs: list[Any] = a if pairs is None else list(zip(a, self.pretokenize(pairs)))
            return backend.encode_batch(inputs, is_pretokenized=True, add_special_tokens=True)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        return backend.encode_batch(inputs, add_special_tokens=True)

    def _truncating_backend(self, max_len: int | None, pair: bool) -> Any:
        """A copy of the backend that truncates to ``max_len`` (cached per length)."""
        if max_len is None:
            return self._word_backend()
        special = self.backend.num_special_tokens_to_add(pair)
        if max_len <= special:
            raise RotaryError(f"max_len {max_len} leaves no room for text after {special} special tokens")
        cache = self.__dict__.setdefault("_truncating", {})
        if max_len not in cache:
            from tokenizers import Tokenizer as HFTokenizer

            backend = HFTokenizer.from_str(self._word_backend().to_str())
            backend.enable_truncation(max_len, strategy="longest_first")
            cache[max_len] = backend
        return cache[max_len]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # -- identity and saving ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """rotary's record of how to use ``tokenizer.json`` (what the hash also covers)."""
        return {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "pre_tokenizer": "jieba" if self.jieba else None,
            "segmenter": SEGMENTER if self.jieba else None,
            "lowercase": self.lowercase,
            "vocab_size": self.vocab_size,
            "eos_token": self.backend.id_to_token(self.eos_id),
            "special_tokens": list(_specials_for(self.kind)),
        }

    @property
    def hash(self) -> str:
        """A stable content hash: the canonical tokenizer.json plus rotary's pre-tokenizer record."""
        if self._hash is None:
            cfg = self.config()
            self._hash = _content_hash(self._source_json or self.backend.to_str(), self.kind,
                                       cfg["pre_tokenizer"], cfg["segmenter"])
        return self._hash

    def hf_special_tokens(self) -> dict[str, str]:
        if self.kind == "bpe":
            return {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
        return {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}

    def save(self, out_dir: str | Path) -> Path:
        """Write the directory; ``rotary_tokenizer.json`` goes last and marks it complete."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = self.backend.to_str(pretty=True)
        if self._source_json is not None and _canonical_json(self._source_json) != _canonical_json(text):
            self._source_json, self._hash = text, None  # the backend was changed since loading
        atomic_write_text(out / "tokenizer.json", text)
        specials = self.hf_special_tokens()
        hf_config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            **specials,
        }
        if self.kind != "bpe":
            hf_config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
        if self.jieba and self.kind == "wordpiece":
            # transformers' RoFormer tokenizer segments with rjieba as rotary does; its
            # normaliser comes from these keys (strip_accents=None would follow lowercase).
            hf_config.update(tokenizer_class="RoFormerTokenizer", do_lower_case=self.lowercase,
                             strip_accents=False)
            vocab = self.backend.get_vocab(with_added_tokens=False)
            by_id = sorted(vocab, key=vocab.__getitem__)
            atomic_write_text(out / "vocab.txt", "".join(f"{t}\n" for t in by_id))
        atomic_write_text(out / "tokenizer_config.json", json.dumps(hf_config, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
        cfg = self.config()
        # The record's own keys come from this tokenizer, never from the loaded meta (whose
        # "hash" is the one it was saved with).
        record = {**cfg, "hash": self.hash, **{k: v for k, v in self.meta.items() if k not in cfg and k != "hash"}}
        atomic_write_text(out / RECORD, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return out

    def to_hf(self) -> Any:
        """The transformers tokenizer that encodes as this one: ``RoFormerTokenizer`` for jieba
        WordPiece (needs rjieba), else a ``PreTrainedTokenizerFast`` over the same backend."""
        if self.jieba and self.kind == "wordpiece":
            import tempfile

            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory() as tmp:  # the same files a user would load
                return AutoTokenizer.from_pretrained(str(self.save(tmp)))
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.backend, **self.hf_special_tokens())

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"pre_tokenizer={'jieba' if self.jieba else None!r}, hash={self.hash})")


# ---------------------------------------------------------------------------------------------
# Building and training
# ---------------------------------------------------------------------------------------------


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

    from rotary.data.corpora import load_corpus

    if kind not in KINDS:
        raise RotaryError(f"unknown tokenizer kind '{kind}' (valid: {', '.join(KINDS)})")
    if jieba and kind == "bpe":
        raise RotaryError("jieba pre-tokenization is for the wordpiece and char kinds (byte-level BPE keeps spaces)")
    specials = list(_specials_for(kind))
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


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _infer_kind(backend: Any) -> str:
    model = json.loads(backend.to_str())["model"]["type"]
    return {"BPE": "bpe", "WordPiece": "wordpiece", "WordLevel": "char"}.get(model) or "bpe"


def load_tokenizer(path: str | Path | Tokenizer) -> Tokenizer:
    """Load a directory written by ``Tokenizer.save`` (or any dir / file with a tokenizer.json)."""
    if isinstance(path, Tokenizer):
        return path
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if not path.exists():
        raise RotaryError(f"tokenizer not found: {path} (train one with `rotary tokenizer train`)")
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
        raise RotaryError(f"{path} has no tokenizer.json (train one with `rotary tokenizer train`)")
    text = file.read_text(encoding="utf-8")
    try:
        backend = HFTokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise RotaryError(f"{file}: not a valid tokenizer.json ({str(err).splitlines()[0]})") from None
    record_path = file.parent / RECORD
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RotaryError(f"{record_path}: invalid JSON ({err.msg})") from None
        pre = record.get("pre_tokenizer")
        if pre not in (None, "jieba"):
            raise RotaryError(f"{record_path}: unknown pre_tokenizer {pre!r} (rotary knows: jieba)")
        segmenter = record.get("segmenter")
        if pre == "jieba" and segmenter not in (None, SEGMENTER):
            raise RotaryError(f"{record_path}: unknown segmenter {segmenter!r} (rotary knows: {SEGMENTER})")
        tok = Tokenizer(backend, record.get("kind") or _infer_kind(backend), jieba=pre == "jieba",
                        lowercase=bool(record.get("lowercase")), meta=record, source_json=text)
        saved = record.get("hash")
        # A jieba tokenizer saved before rjieba (format 1, no "segmenter") was hashed without
        # it: check that hash, then it is a new tokenizer (its ids come from rjieba now), so
        # shards prepared with the old segmentation do not match it.
        expected = tok.hash if segmenter is not None or pre is None else _content_hash(text, tok.kind, pre, None)
        if saved is not None and saved != expected:
            raise RotaryError(f"{file.parent}: tokenizer.json does not match the hash in {RECORD} "
                              f"({expected} != {saved}); it was edited or half-copied")
        return tok
    return Tokenizer(backend, _infer_kind(backend), meta=_hf_special_tokens(file.parent), source_json=text)


def _hf_special_tokens(directory: Path) -> dict[str, str]:
    """EOS/PAD token names from a transformers folder's tokenizer_config.json or
    special_tokens_map.json (the former wins), for folders rotary did not write."""
    names: dict[str, str] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((directory / fname).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("eos_token", "pad_token"):
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                names[key] = value
    return names
