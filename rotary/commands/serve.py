"""``rotary serve RUN``: an OpenAI-compatible HTTP server (completions, chat, streaming)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from rotary.errors import RotaryError, RotaryWarning

INSTALL_HINT = "rotary: error: rotary serve needs FastAPI and uvicorn: pip install 'rotary[serve]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import DefaultsHelp

    p = subparsers.add_parser(
        "serve", help="serve a causal LM over HTTP with the OpenAI API",
        description="Serve a trained causal LM at /v1/completions and /v1/chat/completions (OpenAI's API, "
                    "streaming included), /v1/models, /health and /metrics. Requests decode together "
                    "(continuous batching): a new one joins the running batch at the next token.",
        formatter_class=DefaultsHelp)
    p.add_argument("run", help="run directory (uses best/, else the latest checkpoint) or a checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every /v1/ request; /health and /metrics stay "
                        "open for probes (default: $ROTARY_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the run's directory name)")
    p.add_argument("--slots", type=int, default=16, help="sequences decoded together (one KV cache row each)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait for a slot; more get 503")
    p.add_argument("--max-len", type=int, default=None,
                   help="positions per sequence, prompt + completion (default: the model's max_seq_len)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="weights in bf16: half the bytes per token (AMX / AVX512-BF16 CPUs, GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (compiled at startup)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of a run directory: best/ (lowest validation loss) or the latest step")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the checkpoint's files (sizes are still checked)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's and rotary.serve's log level (debug logs every decode step's batch size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    import logging

    from rotary.model import CausalLM
    from rotary.pretrained import load
    from rotary.serve.app import create_app, default_model_name

    if args.slots < 1 or args.max_queue < 1:
        raise RotaryError(f"--slots and --max-queue must be >= 1 (got {args.slots}, {args.max_queue})")
    if not 0 < args.port < 65536:
        raise RotaryError(f"--port must be in 1..65535, got {args.port}")
    api_key = args.api_key or os.environ.get("ROTARY_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        warnings.warn(f"serving on {args.host} without --api-key: anyone who can reach it can use it", RotaryWarning,
                      stacklevel=1)
    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify, precision=args.precision)
    if not isinstance(pre.model, CausalLM):
        raise RotaryError(f"rotary serve needs a causal LM, and {args.run} holds a {type(pre.model).__name__}")
    name = args.model_name or default_model_name(pre.path)
    app = create_app(pre, slots=args.slots, max_queue=args.max_queue, api_key=api_key, model_name=name,
                     compile=args.compile, max_len=args.max_len)
    logging.getLogger("rotary.serve").setLevel(args.log_level.upper())
    print(f"serving {name} ({pre.path}) at http://{args.host}:{args.port}/v1 with {args.slots} slots"
          f"{', compiled' if args.compile else ''}{', API key required' if api_key else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
