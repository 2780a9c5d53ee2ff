"""Prepare at scale: throughput and peak memory of ``rotary.prepare`` on a >= 1 GB corpus, vs the raw
``tokenizers`` batch encode (bench/prepare.py measures the in-memory ceiling on a small corpus).

A synthetic corpus of ``--gb`` GB (a .jsonl of ~8 KB documents: lines of Shakespeare drawn at
random, so no two documents are alike) is written once; a byte-level BPE of ``--vocab`` tokens
is trained on its first 20 MB. Then, for each worker count, in fresh processes: rotary's
``prepare`` (read, hash split, encode, write uint16 shards: all of it timed) and the ceiling, the
same tokenizer's ``encode_batch_fast`` (no character offsets, what prepare calls) and
``encode_batch`` over the same documents in batches of 1,024, already read into memory (only the
encode timed, nothing written). Printed per row: MB/s of text, the ratios rotary / each, and
each process's peak RSS (the ceiling's holds the whole corpus in memory);
with ``--gb-small`` a second, smaller corpus shows whether rotary's peak RSS depends on the size.

    python bench/prepare_scale.py                     # 1 GB, workers 1 and 2
    python bench/prepare_scale.py --gb 0.2 --gb-small 0.05 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:  # read first, not timed: the ceiling is the encode alone
    docs = [json.loads(line)["text"] for line in f]
out = {"bytes": sum(len(d.encode("utf-8")) for d in docs)}
for name in sys.argv[3].split(","):  # encode_batch_fast (no character offsets), encode_batch
    encode, t, n_tokens = getattr(tok, name), time.perf_counter(), 0
    for i in range(0, len(docs), 1024):
        n_tokens += sum(len(e.ids) for e in encode(docs[i:i + 1024], add_special_tokens=False))
    out[name] = time.perf_counter() - t
    out["tokens"] = n_tokens
print(json.dumps(out))
"""

OURS = r"""
import json, sys, time
from rotary import prepare
t = time.perf_counter()
info = prepare(sys.argv[1], sys.argv[2], sys.argv[3], num_workers=int(sys.argv[4]), progress=False, overwrite=True)
meta = json.load(open(sys.argv[3] + "/meta.json"))
tokens = sum(s["tokens"] for s in meta["splits"].values())
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": tokens}))
"""


def write_corpus(path: Path, gb: float, seed: int = 0) -> int:
    """``gb`` GB of ~8 KB documents of Shakespeare lines drawn at random; returns its text bytes."""
    from rotary import load_corpus

    lines = [ln for doc in load_corpus("shakespeare").documents("train") for ln in doc.splitlines() if ln.strip()]
    rng, target, total = random.Random(seed), int(gb * 1e9), 0
    with open(path, "w", encoding="utf-8") as f:
        while total < target:
            doc, size = [], 0
            while size < 8000:
                line = rng.choice(lines)
                doc.append(line)
                size += len(line) + 1
            text = "\n".join(doc)
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            total += len(text.encode("utf-8"))
    return total


def run(code: str, *args: str, threads: int) -> tuple[dict, float]:
    """``code`` in a fresh Python with ``threads`` tokenizer threads: its JSON line and peak RSS (bytes)."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{code.splitlines()[1]}... failed with status {status}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--gb-small", type=float, default=0.25, help="a second corpus size for the RSS check (0: none)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--peers", nargs="+", default=["encode_batch_fast", "encode_batch"],
                   choices=("encode_batch_fast", "encode_batch"), help="the ceilings to time")
    p.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = p.parse_args()
    from rotary import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="rotary-prepare-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        sizes = [args.gb] + ([args.gb_small] if args.gb_small else [])
        corpora = {}
        for gb in sizes:
            corpora[gb] = work / f"corpus-{gb:g}gb.jsonl"
            text_bytes = write_corpus(corpora[gb], gb)
            print(f"corpus {gb:g} GB: {text_bytes / 1e9:.3f} GB of text in {corpora[gb].stat().st_size / 1e9:.3f} "
                  f"GB of jsonl", flush=True)
        sample = work / "sample.jsonl"
        with open(corpora[args.gb], encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as g:
            for _, line in zip(range(2500), f):  # ~20 MB
                g.write(line)
        tok_dir = work / "tok"
        train_tokenizer(str(sample), "bpe", args.vocab, tok_dir)
        sample_mb = sample.stat().st_size / 1e6
        print(f"cpu: {os.cpu_count()} logical cores; BPE {args.vocab:,} trained on {sample_mb:.0f} MB", flush=True)
        print(f"{'corpus':>8} {'workers':>7} | {'rotary MB/s':>11} {'RSS':>8} | {'fast MB/s':>9} {'MB/s':>6} "
              f"{'RSS':>8} | rotary / fast, / encode_batch")
        for gb in sizes:
            for w in args.workers:
                peer, peer_rss = run(PEER, str(tok_dir / "tokenizer.json"), str(corpora[gb]), ",".join(args.peers),
                                     threads=w)
                ours, our_rss = run(OURS, str(corpora[gb]), str(tok_dir), str(work / f"out-{gb:g}-{w}"), str(w),
                                    threads=w)
                mb = peer["bytes"] / 1e6
                r = mb / ours["seconds"]
                fast, slow = (mb / peer[k] if k in peer else float("nan")
                              for k in ("encode_batch_fast", "encode_batch"))
                print(f"{gb:>6g}GB {w:>7} | {r:>11.2f} {our_rss / 2**20:>6.0f}MB | {fast:>9.2f} {slow:>6.2f} "
                      f"{peer_rss / 2**20:>6.0f}MB | {r / fast:5.2f}x {r / slow:5.2f}x   (tokens {ours['tokens']:,} "
                      f"vs {peer['tokens']:,})", flush=True)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
