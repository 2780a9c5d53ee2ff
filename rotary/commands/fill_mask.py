"""``rotary fill-mask RUN --text TEXT``: the most likely tokens at each [MASK], from a masked LM."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import RUN_HELP, add_loading_options, add_verb
    from rotary.infer.batch_io import FORMATS

    p = add_verb(
        subparsers, "fill-mask",
        help="predict the tokens at each [MASK] of a text with a masked LM",
        description="Print each text with the top-k candidates of every [MASK] written inline, "
                    "as PaddleNLP's RoFormer example does: 今天[天气||天||阳光]很好. --json prints "
                    "the tokens with their ids and probabilities instead. --input FILE is a batch: JSON "
                    "Lines (fields text, optional id) or plain text lines ('-' = stdin), one output "
                    "line per input line, blank lines included.",
        run=RUN_HELP)
    p.add_argument("--text", action="append", help="text with one or more [MASK] (repeatable)")
    p.add_argument("--input", help="a batch file: .jsonl rows or plain text lines; '-' reads stdin")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="how to read --input: auto (.jsonl/.json are JSON Lines, .txt is text, else sniffed)")
    p.add_argument("--output", help="write JSON rows (with the input's id) here, written whole, instead of stdout")
    p.add_argument("--top-k", type=int, default=5, help="candidates shown per [MASK]")
    p.add_argument("--json", action="store_true", help="one JSON object per text: tokens with probabilities")
    add_loading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from rotary.errors import RotaryError
    from rotary.infer.batch_io import Row, blank_row, check_output, read_rows, write_rows
    from rotary.infer.fill_mask import check_fill_mask, format_inline, mask_token, predictions_json
    from rotary.infer.pretrained import load

    if bool(args.text) == bool(args.input):
        raise RotaryError("give texts with --text, or a batch file with --input")
    check_output(args.input, args.output)
    if args.input:
        rows = read_rows(args.input, args.format, pairs=False)
    else:
        rows = [Row(n, text) for n, text in enumerate(args.text, 1)]
    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify)
    for row in rows:  # every text checked before the first line of output
        if row.text is not None:
            try:
                check_fill_mask(pre.model, pre.tokenizer, row.text, args.top_k)
            except RotaryError as err:
                raise RotaryError(f"{args.input}:{row.id}: {err}" if args.input else str(err)) from None
    results = [(row, pre.fill_mask(row.text, top_k=args.top_k) if row.text is not None else None) for row in rows]
    if args.json or args.output:
        out = [blank_row(row) if p is None else {"id": row.id, **predictions_json(row.text, p, pre.tokenizer)}
               for row, p in results]
        n = write_rows(out, args.output)
        if args.output:
            print(f"{args.output}: {n} rows", file=sys.stderr)
    else:
        mask = mask_token(pre.tokenizer)
        for row, p in results:
            print("" if p is None else format_inline(row.text, p, mask))
    blanks = sum(row.text is None for row in rows)
    if blanks:
        print(f"rotary: warning: {blanks} blank line(s) in --input {args.input}: their rows are empty",
              file=sys.stderr)
    return 0
