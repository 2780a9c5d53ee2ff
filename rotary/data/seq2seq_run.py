"""A seq2seq run's data: the recipe's tokenizers (or ones trained on the train pairs) and its
prepared pairs, made on rank 0 while the others wait (``rotary train`` with task seq2seq)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rotary.data.seq2seq import TARGET_TOKENIZER, Seq2SeqData, prepare_pairs
from rotary.errors import RotaryError


def prepare_seq2seq_data(cfg: Any, info: Any) -> Seq2SeqData:
    """A seq2seq run's tokenizers (the recipe's, or trained on the train pairs: one joint vocabulary
    on both sides, or with ``data.target_tokenizer`` one per side) and prepared pairs (rank 0
    prepares, the others wait)."""
    from rotary.data.parallel import check_parallel_options, load_parallel

    d = cfg.data
    if d.shards is not None:
        if d.target_tokenizer is not None:
            raise RotaryError("data.shards were prepared with their tokenizers: remove data.target_tokenizer")
        shards = Path(d.shards)
        meta_path = shards / "meta.json"
        if not meta_path.is_file():
            raise RotaryError(f"no prepared pairs in {shards} (meta.json missing)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tok_dir = Path(d.tokenizer.path) if d.tokenizer.path else Path(meta["tokenizer_dir"])
        # the run's recipe.yaml records where its pairs came from (rotary eval reads the direction there)
        d.corpus = d.corpus or meta.get("source")
        if meta.get("source_lang") and meta.get("target_lang"):
            d.corpus_options.setdefault("direction", f"{meta['source_lang']}-{meta['target_lang']}")
        return Seq2SeqData(shards, tok_dir)
    if d.corpus is None:
        raise RotaryError("the recipe names no data: set data.corpus (tatoeba-zh-en, a .tsv/.jsonl file, ...)")
    # per side, the run assembles its own tokenizer/ (source) + tokenizer/target/ from the two specs
    own = d.target_tokenizer is not None or d.tokenizer.path is None
    tok_dir = cfg.run_dir / "tokenizer" if own else Path(d.tokenizer.path)
    shards = cfg.run_dir / "data"
    if info.is_main:
        opts = dict(check_parallel_options(d.corpus_options))
        if d.max_documents is not None:
            opts["max_pairs"] = d.max_documents
        if d.val_fraction is not None:
            opts["val_fraction"] = d.val_fraction
        parallel = load_parallel(d.corpus, **opts)
        if own and tok_dir.is_dir() and (tok_dir / TARGET_TOKENIZER).is_dir() != (d.target_tokenizer is not None):
            has, wants = (("one vocabulary per side", "a joint one") if d.target_tokenizer is None
                          else ("a joint vocabulary", "one per side (data.target_tokenizer)"))
            raise RotaryError(f"{tok_dir} holds {has} but the recipe asks for {wants}: "
                              "use --overwrite or another --output-dir")
        if own and not tok_dir.is_dir():
            import shutil

            # built aside and renamed: a cut run never leaves a tokenizer/ that looks complete
            tmp = tok_dir.with_name(".tokenizer-partial")
            shutil.rmtree(tmp, ignore_errors=True)
            if d.target_tokenizer is None:
                _tokenizer_from_spec(d.tokenizer, list(parallel.texts("train")), tmp)
            else:
                train = parallel.pairs("train")
                _tokenizer_from_spec(d.tokenizer, [p.source for p in train], tmp)
                _tokenizer_from_spec(d.target_tokenizer, [p.target for p in train], tmp / TARGET_TOKENIZER)
            tmp.rename(tok_dir)
        if not (shards / "meta.json").is_file():
            prepare_pairs(parallel, tok_dir, shards)
    if info.world_size > 1:
        torch.distributed.barrier()
    return Seq2SeqData(shards, tok_dir)


def _tokenizer_from_spec(spec: Any, texts: list[str], out_dir: Path) -> None:
    """``spec``'s tokenizer in ``out_dir``: its files copied from ``spec.path``, or trained on ``texts``."""
    import shutil

    from rotary.tokenizer import train_tokenizer

    if spec.path is None:
        train_tokenizer(_TextCorpus(texts), spec.kind, spec.vocab_size, out_dir, jieba=spec.jieba,
                        lowercase=spec.lowercase)
        return
    src = Path(spec.path)
    if not (src / "tokenizer.json").is_file():
        raise RotaryError(f"{src} is not a tokenizer directory (no tokenizer.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():  # a target/ inside a source path is not taken along: the recipe names each side
            shutil.copy2(f, out_dir / f.name)


def _TextCorpus(texts: list[str]) -> Any:
    """The sentences of both sides as a corpus (one document each) to train a joint vocabulary on."""
    from rotary.data.sources.base import Corpus

    class Sentences(Corpus):
        name = "sentence pairs"

        def _documents(self, split: str) -> Iterator[tuple[str, int]]:
            if split == "train":
                yield from ((t, 0) for t in texts)

    return Sentences()
