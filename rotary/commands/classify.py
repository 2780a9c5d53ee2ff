"""``rotary classify RUN --text ... | --input FILE``: labels and class probabilities from a fine-tuned run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_loading_options, add_verb
    from rotary.infer.batch_io import FORMATS

    p = add_verb(
        subparsers, "classify",
        help="classify texts with a fine-tuned run",
        description="Print the label and class probabilities of each --text (with --text-pair for "
                    "sentence pairs), or classify a batch file: --input FILE is JSON Lines (fields "
                    "text, optional text_pair and id) or plain text, one text per line ('-' = stdin). "
                    "A batch gives one JSON row per input line, with the input's id and text, on "
                    "stdout or in --output; a blank line gives a row marked \"skipped\".",
        run="run directory (its best/) or checkpoint of a classifier")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--text-pair", action="append", help="the second text of a pair, one per --text")
    p.add_argument("--input", help="a batch file: .jsonl rows or plain text lines; '-' reads stdin")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="how to read --input: auto (.jsonl/.json are JSON Lines, .txt is text, else sniffed)")
    p.add_argument("--output", help="write the JSON rows here (.jsonl, written whole); an --input batch "
                                    "without it prints them")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    add_loading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from rotary.errors import RotaryError
    from rotary.infer.batch_io import blank_row, check_output, read_rows, write_rows

    if bool(args.text) == bool(args.input):
        raise RotaryError("give texts with --text, or a batch file with --input")
    if any(not text.strip() for text in args.text or []):  # a batch file's blank rows are reported per row
        raise RotaryError("--text is empty: give the text to classify")
    if args.text_pair and len(args.text_pair) != len(args.text or []):
        raise RotaryError(f"{len(args.text or [])} --text but {len(args.text_pair)} --text-pair: one pair per text")
    if args.batch_size < 1:
        raise RotaryError(f"--batch-size must be at least 1, got {args.batch_size}")
    from rotary.infer.batch_io import Row

    rows = None
    check_output(args.input, args.output)
    if args.input:
        rows = read_rows(args.input, args.format)
    elif args.output:  # --text ... --output: the same rows a batch file gives
        rows = [Row(n, text, pair) for n, (text, pair) in
                enumerate(zip(args.text, args.text_pair or [None] * len(args.text)), 1)]
    from rotary.infer.pretrained import load

    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify)
    if rows is None:
        for text, r in zip(args.text, pre.classify(args.text, args.text_pair, batch_size=args.batch_size)):
            probs = "  ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['label']}\t{probs}\t{text}")
        return 0
    full = [r for r in rows if r.text is not None]
    pairs = [r.text_pair for r in full] if full[0].text_pair is not None else None
    results = iter(pre.classify([r.text for r in full], pairs, batch_size=args.batch_size))
    out = []
    for row in rows:
        if row.text is None:
            out.append(blank_row(row))
            continue
        kept = {"id": row.id, "text": row.text, **({"text_pair": row.text_pair} if pairs else {})}
        out.append({**kept, **next(results)})
    n = write_rows(out, args.output)
    blanks = len(rows) - len(full)
    if blanks:
        print(f"rotary: warning: {blanks} blank line(s) in --input {args.input}: their rows are marked \"skipped\"",
              file=sys.stderr)
    if args.output:
        print(f"{args.output}: {n} rows", file=sys.stderr)
    return 0
