"""``rotary fill-mask RUN --text TEXT``: the most likely tokens at each [MASK], from a masked LM."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fill-mask", help="predict the tokens at each [MASK] of a text with a masked LM",
        description="Print each text with the top-k candidates of every [MASK] written inline, "
                    "as PaddleNLP's RoFormer example does: 今天[天气||天||阳光]很好. --json prints "
                    "the tokens with their ids and probabilities instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run directory (uses best/, else the latest checkpoint) or a checkpoint directory")
    p.add_argument("--text", action="append", required=True, help="text with one or more [MASK] (repeatable)")
    p.add_argument("--top-k", type=int, default=5, help="candidates shown per [MASK]")
    p.add_argument("--json", action="store_true", help="one JSON object per text: tokens with probabilities")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of a run directory: best/ or the latest step")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the checkpoint's files (sizes are still checked)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rotary.fill_mask import check_fill_mask, format_inline, mask_token, predictions_json
    from rotary.pretrained import load

    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify)
    for text in args.text:  # every text checked before the first line of output
        check_fill_mask(pre.model, pre.tokenizer, text, args.top_k)
    results = [(text, pre.fill_mask(text, top_k=args.top_k)) for text in args.text]
    for text, predictions in results:
        if args.json:
            print(json.dumps(predictions_json(text, predictions, pre.tokenizer), ensure_ascii=False))
        else:
            print(format_inline(text, predictions, mask_token(pre.tokenizer)))
    return 0
