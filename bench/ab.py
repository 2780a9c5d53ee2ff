"""A/B of rotary's training throughput between two commits, in one run.

Checks a commit out into a temporary worktree and times the trainer's own step
(``rotary.train.step.train_step`` with ``make_optimizer``'s fused AdamW, grad clip 1.0) on the
demo model (6 layers, d=384, GQA 6/2, vocab 8,192, batch 8 x 256) from both source trees, in
alternating rounds (A B A B ...) so machine drift hits both alike; prints each side's median
tok/s and the ratio. Used for "fp32 does not regress". Where a tree's trainer compiles the
blocks by default (``compile: auto``, ``rotary.train.compilation``), its side does too.
``--model roformer`` times bench/train.py's RoFormer MLM instead (post-LN, GELU, LayerNorm,
non-causal; 15% of the positions labelled): the encoder's paths.

    python bench/ab.py 4c95a6b                    # that commit (A) vs the working tree (B), fp32
    python bench/ab.py 4c95a6b --precision bf16
    python bench/ab.py 4c95a6b --precision bf16 --model roformer
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"TOKS ([\d.]+) FROM (.+)")
# Only what both sides' APIs share (the step and the optimiser factory predate this bench).
SNIPPET = """
import statistics, sys, time, torch, rotary
from rotary import CausalLM, ModelConfig
from rotary import get_task
from rotary.train.schedule import make_optimizer
from rotary.train.step import train_step
keep = getattr(__import__("rotary.device", fromlist=["device"]), "keep_freed_cpu_memory", None)
if keep is not None:  # what the trainer of that tree does before training
    keep()
torch.manual_seed(0)
if "{model}" == "llama":
    model = CausalLM(ModelConfig(vocab_size=8192, max_seq_len=256, n_layer=6, n_head=6, n_kv_head=2, d_model=384,
                                 d_ff=1024))
else:  # bench/train.py's RoFormer MLM
    model = rotary.MaskedLM(ModelConfig(vocab_size=8192, max_seq_len=256, n_layer=6, n_head=6, d_model=384,
                                        d_ff=1536, mlp="gelu", norm="layernorm", norm_eps=1e-12, pre_norm=False,
                                        bias=True, causal=False, type_vocab_size=2))
try:  # what the trainer of that tree does with compile: auto, where it has that setting
    from rotary.model.transformer import compile_blocks
    from rotary.train.compilation import resolve
    if resolve("auto", torch.device("cpu"), "{precision}", "ddp", 1)[0] == "blocks":
        compile_blocks(model)
except ImportError:
    pass
opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device=torch.device("cpu"))
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 8192, (8, 257), generator=g)
batch = (x[:, :-1], x[:, 1:])
if "{model}" == "roformer":  # BERT's 15% of the positions carry a label, the rest are ignored
    batch = (batch[0], batch[0].masked_fill(torch.rand(8, 256, generator=g) >= 0.15, -100))
def batches():
    while True:
        yield batch
it, task, times = batches(), get_task("causal_lm" if "{model}" == "llama" else "masked_lm"), []
for i in range(2 + {steps}):
    t0 = time.perf_counter()
    train_step(model, model, task, it, optimizer=opt, scaler=None, accum=1, precision="{precision}",
               grad_clip=1.0, device=torch.device("cpu"))
    times.append(time.perf_counter() - t0)
print("TOKS", 8 * 256 / statistics.median(times[2:]), "FROM", rotary.__file__)
"""


def throughput(tree: Path, precision: str, steps: int, model: str) -> float:
    code = SNIPPET.format(precision=precision, steps=steps, model=model)
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=tree).stdout
    match = LINE.search(out)
    if match is None or not Path(match.group(2)).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the step did not run from {tree}:\n{out}")
    return float(match.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("commit", help="the A side (B is this working tree)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (after 2 warm-up steps)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--model", choices=("llama", "roformer"), default="llama")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree_a = Path(tmp) / "a"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree_a), args.commit],
                       check=True, capture_output=True)
        try:
            a, b = [], []
            for r in range(args.rounds):
                a.append(throughput(tree_a, args.precision, args.steps, args.model))
                b.append(throughput(ROOT, args.precision, args.steps, args.model))
                print(f"round {r + 1}: A {a[-1]:,.0f} tok/s, B {b[-1]:,.0f} tok/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree_a)], check=False)
    ratios = [y / x for x, y in zip(a, b)]
    print(f"A {args.commit}: {statistics.median(a):,.0f} tok/s; B working tree: {statistics.median(b):,.0f} tok/s; "
          f"B/A {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) "
          f"over {args.rounds} paired rounds, {args.model}, {args.precision}")


if __name__ == "__main__":
    main()
