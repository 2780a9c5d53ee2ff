"""Where a training step's time goes: torch.profiler over rotary's own step, fp32 vs bf16.

The step is the trainer's (``rotary.train.step.train_step``: autocast, forward with the fused
loss, backward, clip, optimizer) on the demo model (6 layers, d=384, GQA 6/2, SwiGLU, vocab
8192, batch 8 x 256). Prints the ops by self CPU time, grouped into GEMMs, attention, the loss,
the optimizer, casts and the rest, and the FLOP-weighted bf16 GEMM peak at the step's own shapes
(``--gemm-peak``): the denominator of "% of the bf16 matmul peak".

    python bench/profile_step.py                      # fp32 and bf16, 3 profiled steps each
    python bench/profile_step.py --precision bf16 --rows 30 --optimizer muon
    python bench/profile_step.py --precision bf16 --kernels-ab   # A/B: rotary.ops.inductor on vs off
    python bench/profile_step.py --precision bf16 --compile-ab   # A/B: compiled blocks vs eager

``--compile`` follows the trainer's ``compile`` (``auto``: the blocks compiled for bf16 where
Inductor runs; ``none``; ``blocks``). ``--kernels-ab`` compares eager steps.

Like the trainer, it makes glibc keep freed memory first (``--default-malloc``: it does not).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

GROUPS = [  # (group, substrings of op names), first match wins
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn")),
    ("attention", ("attention", "sdpa", "flash")),
    ("loss", ("cross_entropy", "log_softmax", "nll", "FusedLinearCrossEntropy", "logsumexp")),
    ("optimizer", ("adam", "muon", "Optimizer", "_foreach", "clip_grad", "norm")),
    ("cast", ("aten::to", "aten::_to_copy", "aten::copy_")),
]


def build(args):
    from rotary import CausalLM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=args.seq, n_layer=args.layers, n_head=args.heads,
                      n_kv_head=args.kv_heads, d_model=args.d_model, d_ff=args.d_ff)
    return CausalLM(cfg)


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in low for k in keys):
            return group
    return "other"


def step_fn(args, precision: str, compile_mode: str | None = None):
    from rotary import get_task
    from rotary.model.transformer import Block, compile_blocks
    from rotary.train.compilation import resolve
    from rotary.train.schedule import make_optimizer
    from rotary.train.step import train_step

    model = build(args)
    mode = compile_mode or args.compile
    if resolve(False if mode == "none" else mode, torch.device("cpu"), precision, "ddp", 1)[0] == "blocks":
        compile_blocks(model)
    compiled = any(isinstance(m, Block) and m.compiled for m in model.modules())
    print(f"  ({precision}: blocks {'compiled' if compiled else 'eager'})")
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
                         device=torch.device("cpu"), kind=args.optimizer)
    task = get_task("causal_lm")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    batch = (x[:, :-1], x[:, 1:])

    def batches():
        while True:
            yield batch

    it = batches()

    def step():
        loss, _ = train_step(model, model, task, it, optimizer=opt, scaler=None, accum=1, precision=precision,
                             grad_clip=1.0, device=torch.device("cpu"))
        return float(loss)

    return step


def gemm_shapes(args) -> list[tuple[int, int, int, int, bool]]:
    """(m, k, n, count, transposed) of every GEMM in one forward + backward step: each linear
    y = x W^T of (m, k) x (k, n) costs three GEMMs of the same FLOPs (forward, grad input, grad
    weight). ``transposed``: the left operand is a transposed view in the step (the weight
    gradient dy^T x, whose rows are the batch's columns)."""
    m = args.batch * args.seq
    hd = args.d_model // args.heads
    qkv = (args.heads + 2 * args.kv_heads) * hd
    per_layer = [(m, args.d_model, qkv), (m, args.heads * hd, args.d_model), (m, args.d_model, 2 * args.d_ff),
                 (m, args.d_ff, args.d_model)]
    shapes = []
    for mm, k, n in per_layer:
        shapes += [(mm, k, n, args.layers, False), (mm, n, k, args.layers, False), (k, mm, n, args.layers, True)]
    v = args.vocab
    shapes += [(m, args.d_model, v, 1, False), (m, v, args.d_model, 1, False), (args.d_model, m, v, 1, True)]  # head
    return shapes


def gemm_peak(args, dtype=torch.bfloat16, step_layouts: bool = False) -> float:
    """FLOP-weighted peak: total GEMM FLOPs of a step / time to run those GEMMs alone, every
    operand row-major (the goal's denominator), or with ``step_layouts`` the weight gradients'
    left operand transposed as in the step (on 2 Xeon cores oneDNN runs that layout at about
    half the rate, and a transposed bf16 copy costs more than it saves)."""
    total_flops, total_s = 0.0, 0.0
    for m, k, n, count, transposed in gemm_shapes(args):
        a = torch.randn(k, m, dtype=dtype).t() if step_layouts and transposed else torch.randn(m, k, dtype=dtype)
        b = torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t0 < 0.1:
            a @ b
            reps += 1
        total_s += (time.perf_counter() - t0) / reps * count
        total_flops += 2 * m * k * n * count
    return total_flops / total_s


def profile(args, precision: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = step_fn(args, precision)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profiled):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_group: dict[str, float] = defaultdict(float)
    for e in events:
        by_group[group_of(e.key)] += e.self_cpu_time_total
    step_s = statistics.median(times)
    tokens = args.batch * args.seq
    print(f"\n== {precision}, optimizer {args.optimizer}: {step_s * 1e3:.0f} ms/step, {tokens / step_s:,.0f} tok/s "
          f"(median of {args.steps}) ==")
    print("  by group (self CPU time): " + ", ".join(
        f"{g} {100 * t / total:.0f}%" for g, t in sorted(by_group.items(), key=lambda kv: -kv[1])))
    print(f"  {'op':<48} {'self ms/step':>12} {'share':>6} {'calls/step':>10}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        print(f"  {e.key[:48]:<48} {e.self_cpu_time_total / 1e3 / args.profiled:>12.1f} "
              f"{100 * e.self_cpu_time_total / total:>5.1f}% {e.count / args.profiled:>10.0f}")


def compile_ab(args, precision: str, rounds: int = 5) -> None:
    """Median step time with the blocks compiled and eager, alternating rounds (two models of the
    same initialisation)."""
    steps = {"blocks": step_fn(args, precision, "blocks"), "none": step_fn(args, precision, "none")}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for mode, step in steps.items():
            step()  # the first step (and the compilation) is not timed
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times[mode].append(time.perf_counter() - t0)
    on, off = (statistics.median(times[k]) for k in ("blocks", "none"))
    tokens = args.batch * args.seq
    print(f"\n== {precision}: blocks compiled {on * 1e3:.0f} ms/step ({tokens / on:,.0f} tok/s), "
          f"eager {off * 1e3:.0f} ms/step ({tokens / off:,.0f} tok/s): {off / on:.3f}x, "
          f"medians of {rounds} x {args.steps} steps ==")


def kernels_ab(args, precision: str, rounds: int = 5) -> None:
    """Median step time with ``rotary.ops.inductor``'s kernels on and off, alternating rounds
    (eager blocks: compiled ones would fuse the same work either way)."""
    from rotary.ops import inductor

    step = step_fn(args, precision, "none")
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for on in (True, False):
            inductor.enabled = on
            step()  # the first step after a switch (and the kernels' compilation) is not timed
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times[on].append(time.perf_counter() - t0)
    inductor.enabled = True
    on, off = (statistics.median(times[k]) for k in (True, False))
    tokens = args.batch * args.seq
    print(f"\n== {precision}: kernels on {on * 1e3:.0f} ms/step ({tokens / on:,.0f} tok/s), "
          f"off {off * 1e3:.0f} ms/step ({tokens / off:,.0f} tok/s): {off / on:.3f}x, "
          f"medians of {rounds} x {args.steps} steps ==")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (no profiler)")
    p.add_argument("--profiled", type=int, default=3)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--gemm-peak", action="store_true", help="also measure the FLOP-weighted bf16 GEMM peak")
    p.add_argument("--no-kernels", action="store_true", help="switch off the compiled CPU kernels")
    p.add_argument("--kernels-ab", action="store_true",
                   help="instead of profiling, time steps with the compiled kernels on and off in alternating rounds")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc as it is")
    p.add_argument("--compile", choices=("auto", "none", "blocks"), default="auto",
                   help="the trainer's compile setting (auto: blocks compiled for bf16 where Inductor runs)")
    p.add_argument("--compile-ab", action="store_true",
                   help="instead of profiling, time steps with the blocks compiled and eager in alternating rounds")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    from rotary.device import cpu_model, keep_freed_cpu_memory
    from rotary.ops import inductor

    kept = not args.default_malloc and keep_freed_cpu_memory()
    inductor.enabled = inductor.enabled and not args.no_kernels
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}; "
          f"compiled CPU kernels {'available' if inductor.available else 'unavailable (no C++ compiler)'}"
          f"{', off' if args.no_kernels else ''}; malloc {'keeps freed memory' if kept else 'default'}")
    for precision in (("fp32", "bf16") if args.precision == "both" else (args.precision,)):
        if args.kernels_ab:
            kernels_ab(args, precision)
        elif args.compile_ab:
            compile_ab(args, precision)
        else:
            profile(args, precision)
    if args.gemm_peak:
        from rotary import CausalLM  # noqa: F401  (the model's FLOPs per token below)

        flops = build(args).flops_per_token(args.seq)
        peak = gemm_peak(args)
        print(f"\nbf16 GEMM peak at this step's shapes (FLOP-weighted): {peak / 1e9:,.0f} GFLOP/s; "
              f"the model needs {flops / 1e6:.1f} MFLOP/token, so 40% of it is "
              f"{0.4 * peak / flops:,.0f} tok/s")
        in_place = gemm_peak(args, step_layouts=True)
        print(f"the same GEMMs with the weight gradients' operand transposed as in the step: "
              f"{in_place / 1e9:,.0f} GFLOP/s ({100 * in_place / peak:.0f}% of it)")


if __name__ == "__main__":
    main()
