"""``rotary generate RUN --prompt TEXT``: sample continuations with the decode engine."""

from __future__ import annotations

import argparse
import json
import re

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` as the characters they name: a shell passes ``--stop "\\n"``
    as a backslash and an n. Any other backslash is kept as written."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import RUN_HELP, add_loading_options, add_verb, add_weight_options

    p = add_verb(
        subparsers, "generate",
        help="generate text from a trained causal LM",
        description="Continue each prompt with a trained causal LM (decode engine: slot KV cache, every row at "
                    "its own length). One prompt streams token by token.",
        run=RUN_HELP)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate after each prompt at most")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens whose probability reaches p")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens less likely than min-p times the most likely one")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="divide the logits of tokens already in the prompt or output by this (CTRL; 1 = none)")
    p.add_argument("--stop", action="append", default=[],
                   help="stop when this text appears (repeat for several; it may span tokens and is not printed); "
                        "\\n, \\t, \\r and \\\\ are read as newline, tab, return and backslash")
    p.add_argument("--num-samples", type=int, default=1, help="continuations per prompt")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed, 0 to 2**63-1 (negative seeds are refused): sample j of every prompt uses "
                        "seed + j, so a text depends only on its prompt and seed, never on the rest of the "
                        "batch; prompts in one batch therefore share their random draws")
    p.add_argument("--logprobs", action="store_true", help="also print the log-probability of each chosen token")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per continuation (text, tokens, finish_reason, usage, logprobs)")
    p.add_argument("--truncate", choices=("left",), default=None,
                   help="a prompt too long for the context: keep its end (default: refuse it)")
    p.add_argument("--rope-scaling", choices=("linear", "dynamic_ntk", "yarn"), default=None,
                   help="extend a RoPE model's context at inference by --factor, without training")
    p.add_argument("--factor", type=float, default=None, help="context extension factor for --rope-scaling")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (pays off on long outputs)")
    add_weight_options(p)
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    add_loading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.errors import RotaryError
    from rotary.infer.pretrained import load
    from rotary.infer.sampling import SamplingParams

    if args.max_new_tokens < 1:
        raise RotaryError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify,
               rope_scaling=args.rope_scaling, rope_factor=args.factor, precision=args.precision,
               quantize=args.quantize)
    # every check before the first byte of output: an error never follows a printed prompt
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed,
                              stop=tuple(unescape(s) for s in args.stop), logprobs=args.logprobs)
    pre.check_generate(args.prompt, args.max_new_tokens, sampling=sampling, num_samples=args.num_samples,
                       truncate=args.truncate)
    streams = len(args.prompt) == 1 and args.num_samples == 1 and not (args.no_stream or args.json or args.logprobs)
    if streams:
        print(args.prompt[0], end="", flush=True)
        for piece in pre.stream(args.prompt[0], args.max_new_tokens, sampling=sampling, truncate=args.truncate,
                                compile=args.compile):
            print(piece, end="", flush=True)
        print()
        return 0
    done = pre.complete(args.prompt, args.max_new_tokens, sampling=sampling, num_samples=args.num_samples,
                        truncate=args.truncate, compile=args.compile)
    for i, c in enumerate(done):
        prompt = args.prompt[i // args.num_samples]
        if args.json:
            record = {"prompt": prompt, "sample": i % args.num_samples, "text": c.text,
                      "finish_reason": c.finish_reason, "token_ids": c.token_ids,
                      "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)}}
            if c.truncated_tokens:
                record["truncated_prompt_tokens"] = c.truncated_tokens
            if c.logprobs is not None:
                record["logprobs"] = c.logprobs
            print(json.dumps(record, ensure_ascii=False))
            continue
        print(prompt + c.text)
        if c.logprobs is not None:
            total = sum(c.logprobs)
            print(f"logprobs: sum {total:.3f}, mean {total / max(len(c.logprobs), 1):.3f} over "
                  f"{len(c.logprobs)} tokens")
            for token, lp in zip(c.token_ids, c.logprobs):
                print(f"  {lp:9.4f}  {pre.tokenizer.decode([token])!r}")
        print("-" * 40)
    return 0
