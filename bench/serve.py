"""``rotary serve`` under load: requests/s and tokens/s at 1, 4 and 16 concurrent clients, and what
continuous batching gains over serving one request at a time.

The server runs in this process (uvicorn on 127.0.0.1, a free port) with ``--slots 1`` and then
``--slots 16``; each level sends ``--requests`` completions from that many client threads over
HTTP (stdlib ``http.client``, so the clients cost little CPU). Every request streams up to
``--max-tokens`` greedy tokens; a row may end early at EOS, so tokens/s counts the tokens the
server reports in ``usage``. Latency is the mean per request, TTFT (time to first token) the
median.

    python bench/serve.py runs/demo
    python bench/serve.py runs/demo --threads 1 --requests 32 --max-tokens 64 --clients 1 4 16 --slots 1 16
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["ROMEO:", "To be, or not to be", "Now is the winter of our discontent", "JULIET:\nO Romeo",
           "All the world's a stage", "Friends, Romans, countrymen", "KING LEAR:", "Once more unto the breach"]


def start_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("uvicorn did not start")
        time.sleep(0.01)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


def one_request(port: int, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, tokens = None, 0
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if ttft is None and chunk["choices"]:
            ttft = time.perf_counter() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return time.perf_counter() - t0, ttft or 0.0, tokens


def level(port: int, model: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: one_request(port, model, p, max_tokens), prompts))
    wall = time.perf_counter() - t0
    return {"req/s": requests / wall, "tok/s": sum(r[2] for r in results) / wall,
            "latency": statistics.mean(r[0] for r in results), "ttft": statistics.median(r[1] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run or checkpoint directory of a causal LM")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (at least the client count)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 on a shared machine, where spinning threads collide")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from rotary import create_app, load

    pre = load(args.run, device=args.device)
    model = "bench"
    print(f"{args.run}: {sum(p.numel() for p in pre.model.parameters()) / 1e6:.1f}M parameters on {args.device}, "
          f"{torch.get_num_threads()} threads; {args.max_tokens} greedy tokens per request")
    rows = {}
    for slots in args.slots:
        app = create_app(pre, slots=slots, max_queue=max(64, max(args.clients)), model_name=model,
                         compile=args.compile)
        server, thread, port = start_server(app)
        try:
            one_request(port, model, PROMPTS[0], 4)  # warm up (first-call allocations, compilation)
            for clients in args.clients:
                rows[slots, clients] = level(port, model, clients, max(args.requests, clients), args.max_tokens)
        finally:
            server.should_exit = True
            thread.join(10)

    print(f"\n{'slots':>5}  {'clients':>7}  {'req/s':>7}  {'tok/s':>8}  {'latency s':>9}  {'TTFT s':>7}")
    for (slots, clients), r in rows.items():
        print(f"{slots:>5}  {clients:>7}  {r['req/s']:>7.2f}  {r['tok/s']:>8.1f}  {r['latency']:>9.3f}  "
              f"{r['ttft']:>7.3f}")
    lo, hi = min(args.slots), max(args.slots)
    for clients in args.clients:
        if (lo, clients) in rows and (hi, clients) in rows and lo != hi:
            gain = rows[hi, clients]["tok/s"] / rows[lo, clients]["tok/s"]
            print(f"batching gain at {clients} clients (slots {hi} vs {lo}): {gain:.2f}x tokens/s")


if __name__ == "__main__":
    main()
