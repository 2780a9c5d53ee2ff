"""Generation speed: rotary's decode engine vs transformers ``generate``, same weights, one run.

The model (6 layers, d=384, GQA 6/2, vocab 8192 by default) is built in rotary, its weights
redrawn wide (N(0, 1/fan_in), so greedy decoding has clear argmaxes and the two sides' tokens
can be compared exactly), and converted with ``rotary.hf.to_hf``. Greedy, fixed-length random
prompts, ``--new`` tokens; rounds alternate rotary and HF so machine noise hits both. Printed:
tok/s (all rows), time to first token (a 1-token call: prefill + one sample), ms per further
token, and the ratio rotary / HF. Tokens must be identical (fp32; bf16 reports agreement).

Rows: rotary eager vs HF's default ``generate`` (dynamic cache); then rotary with its compiled
decode step vs HF's best CPU configuration (static cache + ``torch.compile``, which
transformers applies to the forward when ``cache_implementation="static"``). ``--quantize int8``
adds rotary with int8 weights (``rotary.ops.int8_linear``), eager and compiled, against HF's
default ``generate`` in the run's precision: the tokens are reported, not required to be equal
(other weights), and the batch-1 rows print the fraction of the memory-bandwidth bound reached
(the bytes one decode step reads, weights and KV cache, over the bandwidth of a copy of that
many bytes on this host; and of a 1 GiB copy, main memory).

    python bench/generate.py                          # batch 1 and 8, 16-token prompt, 256 new tokens
    python bench/generate.py --quantize int8          # + the int8 rows and the bandwidth fraction
    python bench/generate.py --prompt-len 1024        # prefill measured too
    python bench/generate.py --precision bf16 --no-compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(args):
    from rotary import CausalLM, ModelConfig
    from rotary.hf import to_hf

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=args.prompt_len + args.new, n_layer=args.layers,
                      n_head=args.heads, n_kv_head=args.kv_heads, d_model=args.d_model, d_ff=args.d_ff,
                      mlp="swiglu", norm="rmsnorm", tie_embeddings=False)
    model = CausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    model.eval()
    hf = to_hf(model).eval()
    hf.generation_config.pad_token_id = 0
    if args.precision == "bf16":
        model, hf = model.to(torch.bfloat16), hf.to(torch.bfloat16)
    return model, hf


class Rotary:
    def __init__(self, model, compile: bool) -> None:
        self.model, self.compile = model, compile

    def __call__(self, prompts: torch.Tensor, new: int) -> list[list[int]]:
        from rotary import generate

        return generate(self.model, prompts, new, temperature=0, compile=self.compile)


class HF:
    def __init__(self, model, static: bool) -> None:
        self.model, self.static = model, static

    def __call__(self, prompts: torch.Tensor, new: int) -> list[list[int]]:
        kw = {"cache_implementation": "static"} if self.static else {}
        with torch.no_grad():
            out = self.model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                      min_new_tokens=new, do_sample=False, **kw)
        return out[:, prompts.shape[1]:].tolist()


def timed(fn, prompts, new) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    out = fn(prompts, new)
    return time.perf_counter() - t, out


def copy_bandwidth(n_bytes: int, repeats: int = 7) -> float:
    """GB/s of ``dst.copy_(src)`` over ``n_bytes`` (read + write counted), best of ``repeats``."""
    src = torch.ones(max(n_bytes // 4, 1024))
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def step_bytes(model, prompt_len: int, new: int) -> int:
    """Bytes one batch-1 decode step reads: every weight but the embedding table (one row of it),
    and the KV cache at its mean length over the run."""
    weights = sum(b.numel() * b.element_size() for n, b in [*model.named_parameters(), *model.named_buffers()]
                  if "embed_tokens" not in n and not n.endswith("scales_bf16") and b.ndim >= 1)
    cfg = model.config
    head_dim = cfg.d_model // cfg.n_head
    cache = 2 * cfg.n_layer * (prompt_len + new / 2) * (cfg.n_kv_head or cfg.n_head) * head_dim * 4
    return int(weights + cache + cfg.d_model * 4)


def bandwidth_line(model, row: dict, args) -> str:
    per_step = step_bytes(model, args.prompt_len, args.new)
    seconds = row["rotary"]["ms_per_token"] / 1e3
    near, far = copy_bandwidth(per_step), copy_bandwidth(1 << 30)
    return (f"    batch 1 reads {per_step / 1e6:.1f} MB per step: {per_step / seconds / 1e9:.1f} GB/s reached; "
            f"copy bandwidth {near:.1f} GB/s at that size ({per_step / seconds / 1e9 / near:.0%} of it), "
            f"{far:.1f} GB/s at 1 GiB ({per_step / seconds / 1e9 / far:.0%})")


def compare(label: str, ours, theirs, prompts: torch.Tensor, args, exact: bool = True) -> dict:
    B, new = prompts.shape[0], args.new
    for fn in (ours, theirs):  # warm-up: allocations, and compilation where there is one
        fn(prompts, new)
        fn(prompts, 1)
    full = {"rotary": [], "hf": []}
    first = {"rotary": [], "hf": []}
    outs = {}
    for _ in range(args.rounds):
        for name, fn in (("rotary", ours), ("hf", theirs)):
            dt, outs[name] = timed(fn, prompts, new)
            full[name].append(dt)
            first[name].append(timed(fn, prompts, 1)[0])
    same = sum(a == b for ra, rb in zip(outs["rotary"], outs["hf"]) for a, b in zip(ra, rb)) / (B * new)
    row = {}
    for name in ("rotary", "hf"):
        total, ttft = statistics.median(full[name]), statistics.median(first[name])
        row[name] = {"tok_s": B * new / total, "ttft_ms": 1e3 * ttft, "ms_per_token": 1e3 * (total - ttft) / (new - 1)}
    ratio = row["rotary"]["tok_s"] / row["hf"]["tok_s"]
    r, h = row["rotary"], row["hf"]
    print(f"{label:<34} batch {B:>2} | rotary {r['tok_s']:8.1f} tok/s ttft {r['ttft_ms']:7.1f} ms "
          f"{r['ms_per_token']:6.2f} ms/tok | HF {h['tok_s']:8.1f} tok/s ttft {h['ttft_ms']:7.1f} ms "
          f"{h['ms_per_token']:6.2f} ms/tok | {ratio:5.2f}x | same tokens {same:.1%}", flush=True)
    if exact and args.precision == "fp32" and same < 1.0 and not args.allow_mismatch:
        raise SystemExit(f"{label}: greedy tokens differ from transformers' ({same:.1%} equal)")
    return {"label": label, "batch": B, **row, "ratio": ratio, "same_tokens": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled / static-cache rows")
    p.add_argument("--quantize", choices=("int8",), default=None, help="add rows for rotary with int8 weights")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--allow-mismatch", action="store_true", help="report, do not fail, when tokens differ")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from rotary.ops.gemm import cpu_gemm

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU GEMM {cpu_gemm()}, {args.precision}; "
          f"{args.layers} layers d={args.d_model} GQA {args.heads}/{args.kv_heads} vocab {args.vocab}; "
          f"prompt {args.prompt_len}, {args.new} new tokens, greedy, median of {args.rounds} rounds")
    model, hf = build(args)
    quantized = None
    if args.quantize:
        import copy

        from rotary.ops.int8_linear import quantize

        quantized = quantize(copy.deepcopy(model), args.quantize)
    g = torch.Generator().manual_seed(1)
    for B in args.batches:
        prompts = torch.randint(1, args.vocab, (B, args.prompt_len), generator=g)
        row = compare("rotary eager vs HF dynamic cache", Rotary(model, False), HF(hf, False), prompts, args)
        if B == 1 and quantized is not None:
            print(bandwidth_line(model, row, args), flush=True)
        if not args.no_compile:
            row = compare("rotary compiled vs HF static+compile", Rotary(model, True), HF(hf, True), prompts, args)
            if B == 1 and quantized is not None:
                print(bandwidth_line(model, row, args), flush=True)
        if quantized is None:
            continue
        for compiled in ((False,) if args.no_compile else (False, True)):
            label = f"rotary {args.quantize} {'compiled' if compiled else 'eager'} vs HF dynamic cache"
            row = compare(label, Rotary(quantized, compiled), HF(hf, False), prompts, args, exact=False)
            if B == 1:
                print(bandwidth_line(quantized, row, args), flush=True)


if __name__ == "__main__":
    main()
