"""``rotary classify RUN --text ...``: labels and class probabilities from a fine-tuned run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="classify texts with a fine-tuned run",
                              description="Print the label and class probabilities of each --text (with "
                                          "--text-pair for sentence pairs), or classify a .jsonl file: "
                                          "--input in.jsonl (fields text, optional text_pair) --output out.jsonl.")
    p.add_argument("run", help="run directory (its best/) or checkpoint of a classifier")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--text-pair", action="append", help="the second text of a pair, one per --text")
    p.add_argument("--input", help="a .jsonl file of {\"text\": ..., \"text_pair\": ...} rows")
    p.add_argument("--output", help="where --input's results go (.jsonl, one row per input row)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rotary.errors import RotaryError

    if bool(args.text) == bool(args.input):
        raise RotaryError("give texts with --text, or a file with --input (and --output)")
    if args.input and not args.output:
        raise RotaryError("--input needs --output for the results (a .jsonl file)")
    if args.text_pair and len(args.text_pair) != len(args.text or []):
        raise RotaryError(f"{len(args.text or [])} --text but {len(args.text_pair)} --text-pair: one pair per text")
    texts, pairs = args.text, args.text_pair
    if args.input:
        texts, pairs = read_inputs(Path(args.input))
        if Path(args.output).exists() and Path(args.output).resolve() == Path(args.input).resolve():
            raise RotaryError("--output would overwrite --input: choose another file")
    from rotary.pretrained import load

    pre = load(args.run, device=args.device)
    results = pre.classify(texts, pairs, batch_size=args.batch_size)
    if args.output:
        from rotary.io import atomic_write_text

        atomic_write_text(Path(args.output), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
        print(f"{args.output}: {len(results)} rows")
        return 0
    for text, r in zip(texts, results):
        probs = "  ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
        print(f"{r['label']}\t{probs}\t{text}")
    return 0


def read_inputs(path) -> tuple[list[str], list[str] | None]:
    import json

    from rotary.errors import RotaryError

    if not path.is_file():
        raise RotaryError(f"--input {path} does not exist")
    texts, pairs = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RotaryError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise RotaryError(f"{path}:{n}: a row needs a \"text\" string")
        texts.append(row["text"])
        pairs.append(row.get("text_pair"))
    if not texts:
        raise RotaryError(f"{path} has no rows")
    has_pair = [p is not None for p in pairs]
    if any(has_pair) and not all(has_pair):
        raise RotaryError(f"{path}: some rows have a text_pair and some do not: give it on every row or none")
    return texts, (pairs if all(has_pair) else None)
