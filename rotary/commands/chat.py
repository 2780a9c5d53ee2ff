"""``rotary chat RUN``: a conversation in the terminal with a model fine-tuned on conversations."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import RUN_HELP, add_loading_options, add_verb

    p = add_verb(
        subparsers, "chat",
        help="talk with a model trained with task sft (its chat template)",
        description="A conversation with a run that has a chat template (task: sft). Answers stream as they are "
                    "generated; the oldest turns are dropped (with a notice) when the conversation outgrows the "
                    "context. /reset starts over, /exit (or end of input) leaves. Reads stdin line by line when it "
                    "is not a terminal, so `printf 'hi\\n' | rotary chat RUN` works in scripts.",
        run=RUN_HELP)
    p.add_argument("--system", default=None, help="a system message that leads the conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer at most")
    p.add_argument("--temperature", type=float, default=0.7, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=None, help="random seed of the sampling")
    add_loading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.chat.session import ChatSession
    from rotary.errors import RotaryError
    from rotary.infer.pretrained import load

    if args.max_new_tokens < 1:
        raise RotaryError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify)
    if pre.tokenizer.chat_template is None:
        pre.chat_prompt([{"role": "user", "content": "x"}])  # raises the one-line error that says what to do
    pre.sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed)  # bad values fail before input
    session = ChatSession(pre, system=args.system, max_new_tokens=args.max_new_tokens)
    tty = sys.stdin.isatty()
    if tty:
        print(f"chatting with {pre.path} (/reset starts over, /exit leaves)", flush=True)
    while True:
        if tty:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            session.reset()
            print("(conversation reset)", flush=True)
            continue
        def dropped(n: int) -> None:
            print(f"(dropped the {n} oldest messages to stay within the context of {pre.context} tokens)",
                  file=sys.stderr, flush=True)

        if tty:
            print("assistant> ", end="", flush=True)
        session.ask(text, lambda piece: print(piece, end="", flush=True), dropped,
                    temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        print(flush=True)
    return 0
