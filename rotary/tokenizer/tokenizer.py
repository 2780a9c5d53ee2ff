"""The Tokenizer: a ``tokenizers.Tokenizer`` plus its kind, optional jieba step, identity and files.

A directory holds ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
(so ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it) plus ``rotary_tokenizer.json``,
rotary's own record, which says ``"pre_tokenizer": "jieba"`` so that ``load_tokenizer``
re-applies the segmentation that ``tokenizer.json`` cannot hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.io import atomic_write_text
from rotary.tokenizer.segment import SEGMENTER, RoFormerSegmenter

KINDS = ("bpe", "wordpiece", "char")
EOT = "<|endoftext|>"
MLM_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CAUSAL_SPECIALS = (EOT,)
# 2: jieba tokenizers segment with rjieba and RoFormer's rule and record "segmenter".
FORMAT_VERSION = 2
RECORD = "rotary_tokenizer.json"


def content_hash(source_json: str, kind: str, pre_tokenizer: str | None, segmenter: str | None) -> str:
    h = hashlib.sha256()
    h.update(_canonical_json(source_json).encode("utf-8"))
    ident: dict[str, Any] = {"kind": kind, "pre_tokenizer": pre_tokenizer}
    if segmenter is not None:  # absent for other tokenizers: their hashes stay as they were
        ident["segmenter"] = segmenter
    h.update(json.dumps(ident, sort_keys=True).encode())
    return h.hexdigest()[:16]


def specials_for(kind: str) -> tuple[str, ...]:
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
        self._jieba_state: RoFormerSegmenter | None = None
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

    # -- chat ------------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template saved with this tokenizer (None: the tokenizer has none)."""
        template = self.meta.get("chat_template")
        return template if isinstance(template, str) and template else None

    @property
    def end_of_turn_id(self) -> int:
        """Where an assistant turn ends (generation stops there): the recorded end-of-turn token,
        else ``<|im_end|>`` when the vocabulary has it, else the EOS."""
        from rotary.chat.template import TURN_END

        for name in (self.meta.get("end_of_turn_token"), TURN_END):
            if isinstance(name, str) and (i := self.backend.token_to_id(name)) is not None:
                return i
        return self.eos_id

    def with_chat_template(self, template: str, special_tokens: Sequence[str] = (),
                           end_of_turn: str | None = None) -> Tokenizer:
        """A copy that holds ``template`` and has ``special_tokens`` (those it lacks are appended
        after the existing ids, which keep their meaning); ``end_of_turn`` names where turns end."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        if self.jieba:
            raise RotaryError("chat templates need a tokenizer without jieba (the loss mask follows character "
                              "offsets, which jieba pre-tokenization does not keep): use a bpe tokenizer")
        backend = HFTokenizer.from_str(self.backend.to_str())
        missing = [t for t in special_tokens if backend.token_to_id(t) is None]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        meta = {k: v for k, v in self.meta.items() if k != "hash"}
        meta["chat_template"] = template
        if end_of_turn is not None:
            meta["end_of_turn_token"] = end_of_turn
        return Tokenizer(backend, self.kind, jieba=False, lowercase=self.lowercase, meta=meta,
                         source_json=None if missing else self._source_json)

    # -- encoding -------------------------------------------------------------------------------
    def _segmenter(self) -> RoFormerSegmenter:
        if self._jieba_state is None:
            self._jieba_state = RoFormerSegmenter(self.backend, self.kind)
        return self._jieba_state

    def _word_backend(self) -> Any:
        return self._segmenter().pieces_backend if self.jieba else self.backend

    def segment(self, text: str) -> tuple[list[str], list[int]]:
        """RoFormer's pre-tokenization of ``text``: its pieces, and for each the index of the
        jieba word it belongs to (see ``RoFormerSegmenter.segment``)."""
        return self._segmenter().segment(text)

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
            "special_tokens": list(specials_for(self.kind)),
        }

    @property
    def hash(self) -> str:
        """A stable content hash: the canonical tokenizer.json plus rotary's pre-tokenizer record."""
        if self._hash is None:
            cfg = self.config()
            self._hash = content_hash(self._source_json or self.backend.to_str(), self.kind,
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
        if self.chat_template is not None:  # AutoTokenizer.apply_chat_template reads it from here
            hf_config["chat_template"] = self.chat_template
        if self.jieba and self.kind == "wordpiece":
            # transformers' RoFormer tokenizer segments with rjieba as rotary does; its
            # normaliser comes from these keys (strip_accents=None would follow lowercase).
            hf_config.update(tokenizer_class="RoFormerTokenizer", do_lower_case=self.lowercase,
                             strip_accents=self._strip_accents())
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

    def _strip_accents(self) -> bool | None:
        """The normaliser's strip_accents (False for rotary's own; None = follow lowercase, as in
        an imported RoFormer tokenizer), so transformers rebuilds the same normaliser."""
        normalizer = json.loads(self.backend.to_str()).get("normalizer") or {}
        return normalizer.get("strip_accents", False)

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
