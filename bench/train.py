"""Training throughput: rotary vs HF transformers, side by side in one run.

Measures tokens/s and MFU (against this machine's fp32 matmul peak, measured in the same run) of
- rotary CausalLM vs transformers LlamaForCausalLM (GQA + SwiGLU + RMSNorm), and
- rotary MaskedLM vs transformers RoFormerForMaskedLM (post-LN, GELU, LayerNorm),
with identical configs, batch, labels and optimiser (torch AdamW, fused); each model computes its
loss its own way, as its trainer does (HF: ``model(ids, labels=...)``, shifted inside; rotary:
``model(ids, targets=...)``, one target per position). MLM labels cover 15% of the
positions. Rounds alternate A and B so machine noise hits both; medians with min-max are
printed, then the ratio rotary / HF.

rotary's fp32 linear layers run on the CPU GEMM backend picked for the machine (``auto``: oneDNN
where MKL would not run its AVX-512 code, e.g. on AMD; see ``rotary.ops.gemm``); HF runs on
PyTorch's default (MKL). ``MKL_ENABLE_INSTRUCTIONS=AVX2`` makes an Intel machine behave like that.

    python bench/train.py                      # the reference config: 6 layers, d=384, batch 8x256
    python bench/train.py --steps 5 --rounds 5 --precision bf16 --compile model
    python bench/train.py --cpu-gemm onednn    # force rotary's GEMM backend (auto, blas, onednn)
    python bench/train.py --precision bf16 --no-kernels   # without rotary.ops.inductor's kernels

``--compile``: ``auto`` (the default) runs each library's default training path: rotary's as
its trainer's ``compile: auto`` picks it (``rotary.train.compilation``: its blocks compiled for
bf16 on a CPU with Inductor, else eager), transformers eager, as its Trainer runs by default.
``none``: both eager; ``model`` (a bare ``--compile``): both whole models compiled; ``blocks``:
both compiled per block (rotary's Blocks; transformers' decoder / encoder layers).

Like rotary's trainer, the run first makes glibc keep freed memory (``rotary.device.
keep_freed_cpu_memory``); that is process-wide, so transformers gets it too (``--default-malloc``:
neither does).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def matmul_peak(dtype: torch.dtype) -> float:
    from rotary.train.metrics import measure_matmul_peak

    return max(measure_matmul_peak(torch.device("cpu"), dtype, n) for n in (1024, 2048))


def rotary_llama(args):
    from rotary import CausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=args.seq, n_layer=args.layers, n_head=args.heads,
                      n_kv_head=args.kv_heads, d_model=args.d_model, d_ff=args.d_ff, mlp="swiglu",
                      norm="rmsnorm", tie_embeddings=False)
    return CausalLM(cfg)


def hf_llama(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_ff,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def rotary_roformer(args):
    from rotary import MaskedLM, ModelConfig

    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=args.seq, n_layer=args.layers, n_head=args.heads,
                      d_model=args.d_model, d_ff=4 * args.d_model, mlp="gelu", norm="layernorm",
                      norm_eps=1e-12, pre_norm=False, bias=True, causal=False, type_vocab_size=2)
    return MaskedLM(cfg)


def hf_roformer(args):
    from transformers import RoFormerConfig, RoFormerForMaskedLM

    cfg = RoFormerConfig(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, intermediate_size=4 * args.d_model,
                         max_position_embeddings=args.seq, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    return RoFormerForMaskedLM(cfg)


class Runner:
    """One model + optimiser + fixed batch; ``run(n)`` times n training steps."""

    def __init__(self, name: str, model: torch.nn.Module, args, hf: bool, mlm: bool = False) -> None:
        from rotary.model.transformer import compile_blocks
        from rotary.train.compilation import resolve

        self.name, self.hf = name, hf
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        self.y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        if mlm:  # BERT's 15% of positions carry a label; the rest are ignored (-100)
            self.y[torch.rand(self.y.shape, generator=g) >= 0.15] = -100
        self.precision = args.precision
        mode = args.compile
        if mode == "auto":  # each library's default: rotary's trainer decides, transformers runs eager
            mode = "none" if hf else resolve("auto", torch.device("cpu"), args.precision, "ddp", 1)[0]
        self.compiled = mode
        self.fwd = torch.compile(model) if mode == "model" else model
        if mode == "blocks":
            if hf:
                base = model.model if hasattr(model, "model") else model.roformer.encoder
                for layer in (base.layers if hasattr(base, "layers") else base.layer):
                    layer.compile()
            else:
                compile_blocks(model)

    def step(self) -> float:
        bf16 = self.precision == "bf16"
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:  # each library's own training path: the loss comes out of the model
            if self.hf:
                loss = self.fwd(self.x, labels=self.y).loss
            else:  # the trainer's path: per-position targets, no shift inside
                loss = self.fwd(self.x, targets=self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def run(self, steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        return self.x.numel() * steps / (time.perf_counter() - t)


def compare(label: str, a: Runner, b: Runner, args, peak: float, flops_per_token: float, note: str = "") -> float:
    for r in (a, b):  # warm-up (and compilation)
        r.run(args.warmup)
    res = {a.name: [], b.name: []}
    for _ in range(args.rounds):
        for r in (a, b):
            res[r.name].append(r.run(args.steps))
    print(f"\n{label}  (batch {args.batch} x {args.seq}, {args.precision}, --compile {args.compile})")
    for r in (a, b):
        med = statistics.median(res[r.name])
        print(f"  {r.name:<28} {med:>8,.0f} tok/s  (min {min(res[r.name]):,.0f}, max {max(res[r.name]):,.0f})  "
              f"MFU {100 * flops_per_token * med / peak:5.1f}%  compiled: {r.compiled}")
    # Each round runs A then B back to back: their ratio cancels slow phases of a noisy machine
    # better than a ratio of medians does.
    paired = [x / y for x, y in zip(res[a.name], res[b.name])]
    ratio = statistics.median(paired)
    if note:
        print(f"  ({note})")
    print(f"  ratio rotary / HF: {ratio:.2f}x  (median of {len(paired)} paired rounds, "
          f"min {min(paired):.2f}, max {max(paired):.2f})")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", nargs="?", const="model", default="auto", choices=("auto", "none", "model", "blocks"),
                   help="auto: each library's default path (rotary's trainer decides; transformers eager); "
                        "none, model or blocks: the same for both (bare --compile = model)")
    p.add_argument("--only", choices=("llama", "roformer"), default=None)
    p.add_argument("--cpu-gemm", choices=("auto", "blas", "onednn"), default=None,
                   help="rotary's CPU GEMM backend (default: ROTARY_CPU_GEMM, else auto)")
    p.add_argument("--no-kernels", action="store_true",
                   help="switch off rotary's compiled CPU kernels (rotary.ops.inductor)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc as it is (the trainer makes it keep freed memory)")
    args = p.parse_args()
    from rotary.device import keep_freed_cpu_memory
    from rotary.ops import gemm, inductor

    if args.cpu_gemm:
        gemm.set_cpu_gemm(args.cpu_gemm)
    inductor.enabled = inductor.enabled and not args.no_kernels
    kept = not args.default_malloc and keep_freed_cpu_memory()

    torch.manual_seed(0)
    peak = matmul_peak(torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, measured matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s ({args.precision}); rotary's CPU GEMM backend: {gemm.cpu_gemm()}; "
          f"compiled CPU kernels {'on' if inductor.active() else 'off'}; "
          f"malloc {'keeps freed memory (both libraries)' if kept else 'default'}")
    ratios = {}
    if args.only in (None, "llama"):
        a = Runner("rotary CausalLM", rotary_llama(args), args, hf=False)
        b = Runner("HF LlamaForCausalLM", hf_llama(args), args, hf=True)
        ratios["llama"] = compare("Llama-style decoder", a, b, args, peak, a.model.flops_per_token(args.seq))
    if args.only in (None, "roformer"):
        a = Runner("rotary MaskedLM", rotary_roformer(args), args, hf=False, mlm=True)
        b = Runner("HF RoFormerForMaskedLM", hf_roformer(args), args, hf=True, mlm=True)
        ratios["roformer"] = compare(
            "RoFormer encoder (MLM)", a, b, args, peak, a.model.flops_per_token(args.seq),
            note="MFU counts the full model's FLOPs for both; rotary runs its MLM head on the 15% "
                 "labelled positions only, so it does fewer FLOPs than it is credited with")
    print("\nsummary: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) + "  (goal >= 1.3x)")


if __name__ == "__main__":
    main()
