"""``rotary generate RUN --prompt TEXT``: sample continuations with the KV cache."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate text from a trained causal LM")
    p.add_argument("run", help="run directory (uses best/, else the latest checkpoint) or a checkpoint directory")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.pretrained import load

    pre = load(args.run, device=args.device, which=args.checkpoint)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed)
    if len(args.prompt) == 1 and not args.no_stream:
        print(args.prompt[0], end="", flush=True)
        pre.generate(args.prompt[0], stream=True, **kwargs)
        print()
        return 0
    for prompt, text in zip(args.prompt, pre.generate(args.prompt, **kwargs)):
        print(prompt + text)
        print("-" * 40)
    return 0
