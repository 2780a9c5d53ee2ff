"""Study 5 (speed half): linear attention with RoPE against softmax attention, at contexts of 1k
to 16k tokens. The quality half is in study 1 (``position_ablation.py``, rows linear-rope and
linear-none).

The study-1 model (4 layers, d=256, 4 query / 2 KV heads, RoPE), random weights (speed does not
depend on them), batch 1, fp32, 2 threads. Per context length T and attention kind: one training
step (forward + backward), one forward pass over T tokens (a prefill), the cost of decoding one
more token after T (softmax reads a KV cache of T positions; linear attention updates a state
whose size does not depend on T), and the process's peak resident memory over the training step.
Each measurement runs in a fresh process so that one's peak memory does not hide another's.
Not while anything else runs: this is a benchmark.

    python experiments/linear_attention_speed.py
    python experiments/linear_attention_speed.py --quick --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import studylib as lib

LENGTHS = [1024, 2048, 4096, 8192, 16384]
KINDS = ["softmax", "linear"]

CHILD = r"""
import json, resource, sys, time
import torch
import rotary
kind, T, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(2)
shape = dict(n_layer=4, d_model=256, n_head=4, n_kv_head=2)
if quick:
    shape = dict(n_layer=1, d_model=32, n_head=2, n_kv_head=1)
cfg = rotary.ModelConfig(vocab_size=4096, max_seq_len=T + 1, d_ff=None, attention=kind, **shape)
torch.manual_seed(0)
model = rotary.CausalLM(cfg)
ids = torch.randint(0, 4096, (1, T))
def timed(fn, reps):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps
reps = 1 if quick or T >= 8192 else 2
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def step():
    model.zero_grad(set_to_none=True)
    model(ids, targets=ids).backward()
train_s = timed(step, reps)
peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
model.zero_grad(set_to_none=True)
model.eval()
with torch.no_grad():
    prefill_s = timed(lambda: model(ids, last_only=True), reps)
    cache = model.new_kv_cache(1, T + 8)
    model(ids, kv_cache=cache, last_only=True)
    nxt = ids[:, -1:]
    t0 = time.perf_counter()
    for _ in range(8):
        model(nxt, kv_cache=cache, last_only=True)
    decode_s = (time.perf_counter() - t0) / 8
print(json.dumps({"kind": kind, "T": T, "train_s": train_s, "prefill_s": prefill_s, "decode_ms": 1000 * decode_s,
                  "train_peak_mb": peak_mb}))
"""


def measure(kind: str, length: int, quick: bool) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(length), "1" if quick else "0"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    from rotary import cpu_model
    lengths = [64, 256] if args.quick else LENGTHS
    rows = [measure(kind, n, args.quick) for n in lengths for kind in KINDS]
    by = {(r["kind"], r["T"]): r for r in rows}

    plt = lib.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, key, label in zip(axes, ("train_s", "prefill_s", "decode_ms", "train_peak_mb"),
                              ("training step (s)", "prefill (s)", "decode one token (ms)", "training peak RSS (MB)")):
        for kind in KINDS:
            ax.plot(lengths, [by[(kind, n)][key] for n in lengths], marker="o", label=kind)
        ax.set(xscale="log", yscale="log", xlabel="context T (tokens)", title=label)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.grid(alpha=0.3)
        ax.legend()
    lib.save_figure(fig, args.out / "linear_attention_speed.png")

    lines = ["# Study 5: linear attention (RoFormer section 3.3) against softmax attention: speed and memory", "",
             f"`python experiments/linear_attention_speed.py` on {cpu_model()}, 2 threads, fp32, batch 1. "
             "The study-1 model shape (4 layers, d=256, 4 query / 2 KV heads, RoPE, vocabulary 4,096), random "
             "weights; softmax attention is PyTorch's SDPA (flash kernel on the CPU), linear attention "
             "rotary's chunked scan (chunks of 64). Peak memory: growth of the process's peak resident set over "
             "the training step, in a fresh process per row.",
             *(["", "**--quick budget (a test of the code, not a result).**"] if args.quick else []),
             "", "| T | kind | train step s | prefill s | decode ms/token | train peak MB | linear speed-up (train) |",
             "|---|---|---|---|---|---|---|"]
    for n in lengths:
        for kind in KINDS:
            r = by[(kind, n)]
            ratio = by[("softmax", n)]["train_s"] / r["train_s"]
            lines.append(f"| {n} | {kind} | {r['train_s']:.3f} | {r['prefill_s']:.3f} | {r['decode_ms']:.2f} | "
                         f"{r['train_peak_mb']:.0f} | {ratio:.2f}x |")
    lines += ["", "![linear_attention_speed.png](linear_attention_speed.png)"]
    lib.write_results(args.out, "linear_attention_speed", {"rows": rows}, lines)
    print(f"wrote {args.out / 'linear_attention_speed.md'}")


if __name__ == "__main__":
    main()
