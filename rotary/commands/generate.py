"""``rotary generate RUN --prompt TEXT``: sample continuations with the KV cache."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a trained causal LM",
        description="Continue each prompt with a trained causal LM (KV cache; left-padded batches). "
                    "One prompt streams token by token.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run directory (uses best/, else the latest checkpoint) or a checkpoint directory")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate after each prompt at most")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens whose probability reaches p")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable sample")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of a run directory: best/ (lowest validation loss) or the latest step")
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the checkpoint's files (sizes are still checked)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.pretrained import load

    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed)
    # every check before the first byte of output: an error never follows a printed prompt
    pre.check_generate(args.prompt, **kwargs)
    if len(args.prompt) == 1 and not args.no_stream:
        print(args.prompt[0], end="", flush=True)
        for piece in pre.stream(args.prompt[0], **kwargs):
            print(piece, end="", flush=True)
        print()
        return 0
    for prompt, text in zip(args.prompt, pre.generate(args.prompt, **kwargs)):
        print(prompt + text)
        print("-" * 40)
    return 0
