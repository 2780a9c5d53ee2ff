"""``rotary tokenizer train``: train a BPE, WordPiece or character tokenizer on a corpus."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rotary.errors import RotaryError


def add_corpus_arguments(p: argparse.ArgumentParser, parallel: bool = False) -> None:
    """--corpus plus the options every corpus-reading verb shares; ``parallel``: the verb also
    reads the built-in sentence pairs (eval of a translation run)."""
    from rotary.corpus_names import CORPUS_NAMES, PARALLEL_NAMES

    names = ", ".join(CORPUS_NAMES + (PARALLEL_NAMES if parallel else ()))
    p.add_argument("--corpus", required=True,
                   help=f"a built-in corpus ({names}), a .txt/.jsonl/.parquet file or directory, a "
                        "Wikipedia dump (.xml/.xml.bz2, or wikidump:PATH), or hf:NAME for datasets.load_dataset")
    p.add_argument("--text-field", help="field holding the text in .jsonl/.parquet/HF records (default: text)")
    p.add_argument("--max-documents", type=int, help="read at most this many documents per split")
    p.add_argument("--corpus-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="another corpus option, e.g. split_by=line, config=wikitext-2-raw-v1 (repeatable)")


def corpus_options(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    opts: dict[str, Any] = {}
    for item in args.corpus_opt:
        if "=" not in item:
            raise RotaryError(f"--corpus-opt expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            opts[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            opts[key.strip().replace("-", "_")] = value
    if args.text_field is not None:
        opts["text_field"] = args.text_field
    if args.max_documents is not None:
        opts["max_documents"] = args.max_documents
    return opts


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb

    p = add_verb(
        subparsers, "tokenizer",
        help="train tokenizers",
        description="Train a tokenizer; the result loads in rotary and, with the same "
                    "ids, in transformers.AutoTokenizer.from_pretrained(DIR) (a --jieba "
                    "wordpiece tokenizer loads as RoFormerTokenizer, which needs the "
                    "rjieba package).")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train a tokenizer on a corpus's training split",
                       description="Train on the training split only (validation text stays unseen). "
                                   "bpe: byte-level BPE with <|endoftext|> (causal LM); wordpiece/char: "
                                   "[PAD] [UNK] [CLS] [SEP] [MASK] (masked LM), optionally with jieba words.")
    add_corpus_arguments(t)
    t.add_argument("--kind", required=True, choices=("bpe", "wordpiece", "char"), help="tokenizer model")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens included")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--jieba", action="store_true",
                   help="pre-split Chinese into jieba words with rjieba, as transformers' "
                                                            "RoFormerTokenizer does (wordpiece/char)")
    t.add_argument("--lowercase", action="store_true", help="lowercase text before tokenizing")
    t.add_argument("--min-frequency", type=int, default=2, help="drop merges/words seen fewer times (default 2)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])  # a SUBCOMMAND is required


def run_train(args: argparse.Namespace) -> int:
    from rotary.tokenizer import train_tokenizer

    # tokenizers draws its progress bars on stdout, and off a terminal they are only blank lines
    progress = not args.no_progress and sys.stdout.isatty()
    tok = train_tokenizer(args.corpus, args.kind, args.vocab_size, args.out, jieba=args.jieba,
                          lowercase=args.lowercase, min_frequency=args.min_frequency,
                          progress=progress, **corpus_options(args))
    note = ""
    if tok.vocab_size < args.vocab_size:
        note = f" (asked for {args.vocab_size:,}: the corpus supports no more at min_frequency {args.min_frequency})"
    print(f"{args.out}: {tok.kind} tokenizer, {tok.vocab_size:,} tokens{note}, "
          f"pre-tokenizer {'jieba' if tok.jieba else 'none'}, hash {tok.hash}")
    replaced = tok.meta.get("replaced_undecodable", 0)
    if replaced:  # a latin-1 or GBK file decodes with U+FFFD in place of its accents: say so
        print(f"rotary: warning: {replaced:,} undecodable byte sequence(s) in {args.corpus} were replaced with "
              "U+FFFD and the tokenizer learned them: if the file is not UTF-8 (latin-1? GBK?), convert it, "
              "e.g. iconv -f latin1 -t utf-8", file=sys.stderr)
    return 0
