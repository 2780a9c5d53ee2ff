"""``rotary translate RUN --text TEXT | --input FILE [--beam 5]``: translations from a seq2seq run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import RUN_HELP, add_loading_options, add_verb

    p = add_verb(
        subparsers, "translate",
        help="translate texts with an encoder-decoder (seq2seq) run",
        description="One translation per line of output, in the order of the inputs. Beam search with "
                    "transformers' semantics (--beam 1 is greedy); sources longer than the encoder's max_seq_len "
                    "are cut to it, and the count is reported on stderr.",
        run=RUN_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a sentence to translate (repeatable)")
    src.add_argument("--input", help="a UTF-8 file of sentences, one per line ('-' = stdin)")
    p.add_argument("--beam", type=int, default=5, help="beam size (1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="hypothesis score = log-probability / length ** this (0 = none)")
    p.add_argument("--max-new-tokens", type=int, help="longest translation in tokens (default: 2 x source + 10)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences decoded together")
    add_loading_options(p)
    p.set_defaults(func=run)


def read_inputs(args: argparse.Namespace) -> list[str]:
    import sys
    from pathlib import Path

    from rotary.errors import RotaryError

    if args.text is not None:
        return list(args.text)
    if args.input == "-":
        lines = sys.stdin.read().split("\n")
    else:
        path = Path(args.input)
        if not path.is_file():
            raise RotaryError(f"--input {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 is text
        except UnicodeDecodeError:
            raise RotaryError(f"--input {path} is not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line
    lines = [ln.strip() for ln in lines]  # a blank line stays: its output line is blank too
    if not any(lines):
        raise RotaryError(f"--input {args.input} has no sentences")
    return lines


def run(args: argparse.Namespace) -> int:
    import sys

    from rotary.errors import RotaryError
    from rotary.infer.decoding import MAX_BEAMS
    from rotary.infer.pretrained import load
    from rotary.infer.translate import translate_texts

    if not 1 <= args.beam <= MAX_BEAMS:
        raise RotaryError(f"--beam must be between 1 and {MAX_BEAMS}, got {args.beam}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise RotaryError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    lines = read_inputs(args)
    texts = [t for t in lines if t]
    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify)
    result = translate_texts(pre, texts, num_beams=args.beam, length_penalty=args.length_penalty,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    done = iter(result.texts)
    outputs = [next(done) if t else "" for t in lines]  # line N of the output answers line N
    if result.truncated_sources:
        print(f"note: {result.truncated_sources} source(s) longer than {pre.model.config.max_seq_len} tokens were cut",
              file=sys.stderr)
    for line in outputs:
        print(line)
    return 0
