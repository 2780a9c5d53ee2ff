"""``rotary eval RUN --corpus NAME|PATH [--split val|test]``: a run's numbers on a split."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb
    from rotary.commands.tokenizer import add_corpus_arguments

    p = add_verb(
        subparsers, "eval",
        help="evaluate a run on a corpus split: loss/perplexity/bits per byte, MLM accuracy, or accuracy/F1",
        description="Writes eval.json (and confusion.png for a classifier) into the run directory (or --out) and "
                    "prints a table. A causal LM is scored on every token of the split (--stride < the window: a "
                    "sliding window, each token scored once with up to a window of context; windows of the run's "
                    "training seq_len unless --seq-len); a masked LM by "
                    "top-1/top-5 accuracy on masks fixed by --seed; a classifier by accuracy (with a bootstrap 95% "
                    "interval), macro-F1, per-class precision/recall/F1 and the confusion matrix.",
        run="run directory (its best/) or checkpoint")
    add_corpus_arguments(p, parallel=True)
    p.add_argument("--split", default="val", help="val (default) or test (labelled corpora)")
    p.add_argument("--stride", type=int, help="causal LM: window stride in tokens (default: the window, no overlap)")
    p.add_argument("--seq-len", type=int,
                   help="language models: tokens per window (default: the seq_len the run trained at, else "
                        "the model's max_seq_len)")
    p.add_argument("--seed", type=int, help="masked LM: seed of the fixed masks (default 0)")
    p.add_argument("--beam", type=int, help="seq2seq: beam size of the translations scored (default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="windows or texts per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--no-baseline", action="store_true",
                   help="classifier: skip the char TF-IDF + LR baseline printed beside the accuracy")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="score the model with int8 weights, as generate/serve --quantize int8 decode with")
    p.add_argument("--out", help="directory for eval.json (default: the run directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rotary.commands.tokenizer import corpus_options
    from rotary.errors import RotaryError
    from rotary.evaluation import run_eval

    if args.split not in ("train", "val", "test"):
        raise RotaryError(f"--split must be val or test (or train), got {args.split!r}")
    if args.batch_size < 1:
        raise RotaryError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise RotaryError(f"--out {args.out} is a file: give a directory for eval.json")
    record = run_eval(args.run, args.corpus, args.split, stride=args.stride, seed=args.seed,
                      batch_size=args.batch_size, device=args.device, out=args.out,
                      corpus_options=corpus_options(args), num_beams=args.beam, seq_len=args.seq_len,
                      baseline=False if args.no_baseline else None, quantize=args.quantize)
    print(format_record(record))
    return 0


def format_record(record: dict) -> str:
    lines = [f"{record['run']} ({record['task']}) on {record['corpus']} {record['split']}:"]
    for key, value in record.items():
        if key in ("run", "task", "corpus", "split", "checkpoint", "per_class", "confusion", "label_names", "samples",
                   "baseline"):
            continue
        lines.append(f"  {key:<16} {value:.4f}" if isinstance(value, float) else f"  {key:<16} {value}")
    if "per_class" in record:
        lines.append(f"  {'class':<16} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
        for name, c in record["per_class"].items():
            lines.append(f"  {name:<16} {c['precision']:>9.4f} {c['recall']:>7.4f} {c['f1']:>7.4f} {c['support']:>8}")
        lines.append("  confusion (rows true, columns predicted): "
                     + " | ".join(" ".join(str(v) for v in row) for row in record["confusion"]))
    if "baseline" in record:
        from rotary.baselines import compare_line

        lines.append(f"  {compare_line(record['accuracy'], record['baseline'])}")
    for s in record.get("samples", []):
        lines.append(f"  sample  {s['source']}  ->  {s['translation']}   (reference: {s['references'][0]})")
    return "\n".join(lines)
