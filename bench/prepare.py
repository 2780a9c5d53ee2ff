"""prepare's throughput against the raw speed of the same tokenizer on the same text, in one run.

The ceiling is ``tokenizers.Tokenizer.encode_batch`` on the corpus's documents already in
memory (nothing read, nothing written). ``rotary.data.prepare.prepare`` reads the corpus,
encodes, joins ids with numpy and writes shards atomically. Rounds alternate the two so
machine noise hits both; the best round of each is compared. Goal: ratio >= 0.8.

    python bench/prepare.py                              # shakespeare, byte-level BPE 8192
    python bench/prepare.py --corpus peoples-daily --kind char --vocab-size 6000
    python bench/prepare.py --tokenizer runs/x/tokenizer --corpus data/my.jsonl --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--tokenizer", help="tokenizer dir (default: train one into a temp dir)")
    ap.add_argument("--kind", default="bpe", choices=("bpe", "wordpiece", "char"))
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from rotary import load_corpus, load_tokenizer, prepare, train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="rotary-bench-prepare-"))
    tok_dir = Path(args.tokenizer) if args.tokenizer else tmp / "tokenizer"
    if not args.tokenizer:
        t0 = time.perf_counter()
        train_tokenizer(args.corpus, args.kind, args.vocab_size, tok_dir)
        print(f"trained a {args.kind} tokenizer ({args.vocab_size}) in {time.perf_counter() - t0:.1f} s")
    tok = load_tokenizer(tok_dir)
    if tok.jieba:
        sys.exit("bench/prepare.py compares against encode_batch on raw text: use a tokenizer without jieba")

    corpus = load_corpus(args.corpus)
    docs = list(corpus.train_documents()) + list(corpus.val_documents())
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"corpus {args.corpus}: {len(docs):,} documents, {n_bytes / 1e6:.2f} MB; tokenizer {tok!r}; "
          f"{os.cpu_count()} CPUs")

    def raw(method: str) -> tuple[float, int]:
        encode = getattr(tok.backend, method)
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(docs), 1024):  # the same batch size prepare uses by default
            n += sum(len(e.ids) for e in encode(docs[i:i + 1024], add_special_tokens=False))
        return time.perf_counter() - t0, n

    def prep() -> tuple[float, int]:
        out = tmp / "shards"
        t0 = time.perf_counter()
        info = prepare(args.corpus, tok_dir, out, progress=False, overwrite=True, print_summary=False)
        seconds = time.perf_counter() - t0
        return seconds, info.meta["splits"]["train"]["tokens"] + info.meta["splits"]["val"]["tokens"]

    raw("encode_batch")  # warm up the thread pool and the page cache
    times: dict[str, list[float]] = {"encode_batch": [], "encode_batch_fast": [], "prepare": []}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        for name in times:
            seconds, n = prep() if name == "prepare" else raw(name)
            times[name].append(seconds)
            tokens[name] = n

    print(f"{'':<22} {'best s':>8} {'median s':>9} {'MB/s':>8} {'tokens/s':>12}")
    best = {}
    for name, ts in times.items():
        best[name] = min(ts)
        print(f"{name:<22} {min(ts):>8.3f} {statistics.median(ts):>9.3f} {n_bytes / min(ts) / 1e6:>8.2f} "
              f"{tokens[name] / min(ts):>12,.0f}")
    print(f"(prepare's tokens include one separator per document: {tokens['prepare'] - tokens['encode_batch']:,})")
    ratio = best["encode_batch"] / best["prepare"]
    ratio_fast = best["encode_batch_fast"] / best["prepare"]
    print(f"ratio prepare / encode_batch (MB/s): {ratio:.2f}  (goal >= 0.8)")
    print(f"ratio prepare / encode_batch_fast (MB/s): {ratio_fast:.2f}  (prepare uses encode_batch_fast)")


if __name__ == "__main__":
    main()
