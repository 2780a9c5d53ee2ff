"""``rotary serve RUN``: an OpenAI-compatible HTTP server (completions, chat, streaming)."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import warnings
from typing import Any

from rotary.errors import RotaryError, RotaryWarning

INSTALL_HINT = "rotary: error: rotary serve needs FastAPI and uvicorn: pip install 'rotary[serve]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import RUN_HELP, add_loading_options, add_verb, add_weight_options

    p = add_verb(
        subparsers, "serve",
        help="serve a causal LM over HTTP with the OpenAI API",
        description="Serve a trained causal LM at /v1/completions and /v1/chat/completions (OpenAI's API, "
                    "streaming included), /v1/models, /health and /metrics. Requests decode together "
                    "(continuous batching): a new one joins the running batch at the next token.",
        run=RUN_HELP)
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
    add_weight_options(p)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the decode step for every batch size at startup (about a minute on 2 "
                        "cores the first time, seconds once Inductor's cache holds the graphs; faster decoding "
                        "after); --no-compile starts at once and decodes eagerly")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's and rotary.infer.serve's log level (debug logs every decode step's batch size)")
    add_loading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    import logging

    from rotary.infer.pretrained import load
    from rotary.infer.serve.app import create_app, default_model_name
    from rotary.model import CausalLM

    if args.slots < 1 or args.max_queue < 1:
        raise RotaryError(f"--slots and --max-queue must be >= 1 (got {args.slots}, {args.max_queue})")
    if args.max_len is not None and args.max_len < 2:  # 0 meant "the model's" without a word
        raise RotaryError(f"--max-len must be at least 2 (a prompt token and a completion token), got {args.max_len}")
    if not 0 < args.port < 65536:
        raise RotaryError(f"--port must be in 1..65535, got {args.port}")
    api_key = args.api_key or os.environ.get("ROTARY_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        warnings.warn(f"serving on {args.host} without --api-key: anyone who can reach it can use it", RotaryWarning,
                      stacklevel=1)
    sock = listening_socket(args.host, args.port)  # a busy port fails now, not after loading and "serving ..."
    pre = load(args.run, device=args.device, which=args.checkpoint, verify=not args.no_verify, precision=args.precision,
               quantize=args.quantize)
    if not isinstance(pre.model, CausalLM):
        from rotary.tasks import use_instead

        raise RotaryError(f"rotary serve needs a causal LM, and {args.run} is a {pre.task} run{use_instead(pre.task)}")
    name = args.model_name or default_model_name(pre.path)
    app = create_app(pre, slots=args.slots, max_queue=args.max_queue, api_key=api_key, model_name=name,
                     compile=args.compile, max_len=args.max_len)
    logging.getLogger("rotary.infer.serve").setLevel(args.log_level.upper())
    print(f"serving {name} ({pre.path}) at http://{args.host}:{args.port}/v1 with {args.slots} slots"
          f"{', compiled' if args.compile else ''}{', API key required' if api_key else ''}", flush=True)
    stopped_by = serve_on(sock, uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    return 128 + stopped_by if stopped_by else 0  # 130 after Ctrl-C, 143 after SIGTERM, as the shell reports


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (as uvicorn binds one: SO_REUSEADDR, IPv6 where the
    address is), or a RotaryError saying why it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise RotaryError(f"--host {host}: not an address or a name this machine resolves ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise RotaryError(f"port {port} on {host} is already in use: stop what listens there or pick "
                              "another --port") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise RotaryError(f"--host {host} is not an address of this machine (0.0.0.0 = every address)") from None
        if err.errno == errno.EACCES:
            raise RotaryError(f"port {port} needs privileges to bind: pick a --port above 1023") from None
        raise RotaryError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def serve_on(sock: socket.socket, config: Any) -> int | None:
    """Run uvicorn on the socket bound earlier (it never binds one of its own); returns the
    signal that stopped it, if one did. uvicorn re-raises that signal after its graceful
    shutdown, but inside ``asyncio.run``, whose own SIGINT handler turns it into a
    KeyboardInterrupt only when the cancelled task had an await left: a race, hence the return."""
    import uvicorn

    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    captured = getattr(server, "_captured_signals", None) or [None]
    return int(captured[-1]) if captured[-1] is not None else None
