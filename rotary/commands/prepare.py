"""``rotary prepare``: tokenize a corpus into train.bin / val.bin token shards plus meta.json."""

from __future__ import annotations

import argparse

from rotary.commands.tokenizer import add_corpus_arguments, corpus_options


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb

    p = add_verb(
        subparsers, "prepare",
        help="tokenize a corpus into memory-mappable token shards",
        description="Tokenize in parallel batches into OUT/train.bin and OUT/val.bin (uint16, or uint32 "
                    "for vocabularies of 65,536 or more) and OUT/meta.json. Documents are separated by "
                    "the tokenizer's EOS/[SEP] token. Re-running with the same inputs does nothing.")
    add_corpus_arguments(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (from `rotary tokenizer train`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-fraction", type=float,
                   help="fraction of documents held out, chosen by hash (default: the corpus's own "
                        "split); when the hash would leave a split empty, validation is the last "
                        "fraction of the text")
    p.add_argument("--workers", type=int, help="tokenizer threads / jieba processes (default: all cores)")
    p.add_argument("--batch-docs", type=int, default=1024, help="documents per tokenizer batch (default 1024)")
    p.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto",
                   help="token dtype (default auto: uint16 below 65,536 ids)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards of another corpus or tokenizer (shards of the same corpus and tokenizer "
                        "are rebuilt without it when its text or options changed, and kept when nothing did)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.data.prepare import prepare

    info = prepare(args.corpus, args.tokenizer, args.out, val_fraction=args.val_fraction, num_workers=args.workers,
                   batch_docs=args.batch_docs, progress=not args.no_progress, dtype=args.dtype,
                   overwrite=args.overwrite, corpus_opts=corpus_options(args), print_summary=False)
    print(info.notes[0] if info.skipped else info.summary_table())
    return 0
