"""Study 1: position schemes in a causal LM on Shakespeare (RoPE's "improved performance" and
"more stable training dynamics" claims), and linear attention with and without RoPE.

The same model (4 layers, d=256, 4 query / 2 KV heads, SwiGLU, BPE 4,096), the same data and
tokens, the same seeds; only ``model.position`` (rope, learned, sinusoidal, alibi, none) or
``model.attention`` (linear, RoFormer section 3.3) changes. Trained at context L = 128 so that
study 3 (``length_extrapolation.py``) evaluates the same models at 2L..16L.

Reported per scheme, mean ± std over the seeds: validation bits per byte on the three held-out
works (non-overlapping windows of L, and a sliding window of stride L/2), the loss curves, and
the stability statistics behind the claim: loss spikes (a step more than 4 standard deviations
above the mean of the 50 before it), gradient-norm mean / 99th percentile / max, and the share of
steps whose gradient norm was clipped (grad_clip 1.0).

    python experiments/position_ablation.py                 # full: 7 schemes x 3 seeds
    python experiments/position_ablation.py --schemes rope alibi
    python experiments/position_ablation.py --quick --runs-dir DIR --out DIR   # the test's budget

Resumable: finished runs are skipped, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import studylib as lib

import rotary
from rotary import causal_documents_metrics

CONTEXT = 128  # L: the trained context, also study 3's unit of length
SEEDS = [1, 2, 3]
SCHEMES: dict[str, dict[str, Any]] = {
    "rope": {"position": "rope"},
    "learned": {"position": "learned"},
    # Vaswani et al. scale token embeddings by sqrt(d) so that the unit-sized table does not drown them
    # (at init std 0.02 they are ~50x smaller); unscaled is shown once as a diagnostic (one seed).
    "sinusoidal": {"position": "sinusoidal", "scale_embeddings": True},
    "sinusoidal-unscaled": {"position": "sinusoidal"},
    "alibi": {"position": "alibi"},
    "none": {"position": "none"},
    "linear-rope": {"position": "rope", "attention": "linear"},
    "linear-none": {"position": "none", "attention": "linear"},
}
FULL = {"max_steps": 500, "batch_size": 16, "eval_interval": 100, "eval_batches": 20, "checkpoint_interval": 250}
QUICK = {"max_steps": 6, "batch_size": 2, "eval_interval": 3, "eval_batches": 1, "checkpoint_interval": 6,
         "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1}, "vocab_size": 300,
         "max_documents": 6, "context": 32}


def budget(quick: bool) -> dict[str, Any]:
    return QUICK if quick else FULL


def data_for(runs_dir: Path, quick: bool) -> tuple[Path, Path]:
    b = budget(quick)
    opts = {"max_documents": b["max_documents"]} if quick else {}
    return lib.shared_data(runs_dir, "shakespeare", "bpe", b.get("vocab_size", 4096), corpus_opts=opts,
                           tag="shakespeare-quick" if quick else "shakespeare")


def recipe(scheme: str, seed: int, runs_dir: Path, quick: bool) -> dict[str, Any]:
    b = budget(quick)
    tok_dir, shards = data_for(runs_dir, quick)
    context = b.get("context", CONTEXT)
    model = {"preset": "llama-mini", "n_layer": 4, "d_model": 256, "n_head": 4, "n_kv_head": 2,
             "max_seq_len": context, **b.get("model", {}), **SCHEMES[scheme]}
    return {"name": f"positions-{scheme}-s{seed}", "task": "causal_lm", "model": model,
            "data": {"shards": str(shards), "tokenizer": {"path": str(tok_dir)}},
            "seq_len": context, "batch_size": b["batch_size"], "max_steps": b["max_steps"],
            "lr": 2.0e-3, "min_lr": 1.0e-4, "warmup_fraction": 0.05, "weight_decay": 0.1, "grad_clip": 1.0,
            "precision": "auto", "seed": seed, "eval_interval": b["eval_interval"],
            "eval_batches": b["eval_batches"], "checkpoint_interval": b["checkpoint_interval"],
            "keep_checkpoints": 2, "log_interval": 1, "progress": False, "tensorboard": False}


def run_dir(runs_dir: Path, scheme: str, seed: int) -> Path:
    return runs_dir / f"{scheme}-s{seed}"


# schemes trained on fewer seeds than the others (diagnostic rows)
ONLY_SEEDS = {"sinusoidal-unscaled": [1]}


def seeds_of(scheme: str, seeds: list[int]) -> list[int]:
    return [s for s in seeds if s in ONLY_SEEDS.get(scheme, seeds)] or seeds[:1]


def ensure_runs(schemes: list[str], seeds: list[int], runs_dir: Path, quick: bool) -> None:
    """Train every (scheme, seed) not trained yet: study 3 calls this too."""
    for scheme in schemes:
        for seed in seeds_of(scheme, seeds):
            lib.train_run(run_dir(runs_dir, scheme, seed), recipe(scheme, seed, runs_dir, quick), quiet=quick)


def validation_docs(quick: bool) -> list[str]:
    docs = lib.lm_documents("shakespeare")
    return [d[:4000] for d in docs] if quick else docs


def evaluate_run(run: Path, docs: list[str], context: int) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        pre = rotary.load(run, which="latest", device="cpu")
        plain = causal_documents_metrics(pre, docs)
        sliding = causal_documents_metrics(pre, docs, stride=context // 2)
        return {"bits_per_byte": plain["bits_per_byte"], "sliding_bits_per_byte": sliding["bits_per_byte"],
                "loss": plain["loss"], "parameters": pre.model.num_parameters()}

    return lib.cached(run / "study_eval.json", compute)


def collect(schemes: list[str], seeds: list[int], runs_dir: Path, quick: bool) -> dict[str, Any]:
    docs = validation_docs(quick)
    context = budget(quick).get("context", CONTEXT)
    b = budget(quick)
    rows = {}
    for scheme in schemes:
        per_seed = []
        for seed in seeds_of(scheme, seeds):
            run = run_dir(runs_dir, scheme, seed)
            done = json.loads((run / lib.DONE).read_text(encoding="utf-8"))
            ev = evaluate_run(run, docs, context)
            steps = lib.metrics(run, "train")
            per_seed.append({"seed": seed, **ev, "train_seconds": done.get("train_seconds"),
                             **lib.stability(steps, grad_clip=1.0, skip=max(1, b["max_steps"] // 10))})
        rows[scheme] = {"seeds": per_seed, **{key: lib.spread(r[key] for r in per_seed) for key in (
            "bits_per_byte", "sliding_bits_per_byte", "train_seconds", "loss_spikes", "grad_norm_mean",
            "grad_norm_p99", "grad_norm_max", "clipped_fraction")}}
    return rows


def plot_curves(schemes: list[str], seeds: list[int], runs_dir: Path, out: Path) -> list[str]:
    plt = lib.pyplot()
    fig, (ax_train, ax_val, ax_norm) = plt.subplots(1, 3, figsize=(15, 4.2))
    for scheme in schemes:
        runs = [run_dir(runs_dir, scheme, s) for s in seeds_of(scheme, seeds)]
        train = [lib.metrics(r, "train") for r in runs]
        n = min(len(t) for t in train)
        steps = [rec["step"] for rec in train[0][:n]]
        mean_loss = [sum(t[i]["loss"] for t in train) / len(train) for i in range(n)]
        line, = ax_train.plot(steps, lib.smooth(mean_loss, 20), label=scheme, lw=1.2)
        norms = [sum(t[i].get("grad_norm", 0.0) for t in train) / len(train) for i in range(n)]
        ax_norm.plot(steps, lib.smooth(norms, 20), color=line.get_color(), lw=1.0, label=scheme)
        evals = [lib.metrics(r, "eval") for r in runs]
        m = min(len(e) for e in evals)
        ax_val.plot([e["step"] for e in evals[0][:m]],
                    [sum(e[i]["loss"] for e in evals) / len(evals) for i in range(m)], marker="o", ms=3,
                    color=line.get_color(), label=scheme)
    ax_train.set(title="training loss (mean of seeds, 20-step average)", xlabel="step", ylabel="loss")
    ax_val.set(title="validation loss (mean of seeds)", xlabel="step", ylabel="loss")
    ax_norm.set(title="gradient norm before clipping (20-step average)", xlabel="step", ylabel="norm",
                yscale="log")
    for ax in (ax_train, ax_val, ax_norm):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=8)
    lo = min(min(line.get_ydata()) for line in ax_train.get_lines())
    ax_train.set_ylim(lo - 0.1, lo + 2.5)
    lib.save_figure(fig, out / "position_ablation_curves.png")
    return ["position_ablation_curves.png"]


def markdown(rows: dict[str, Any], seeds: list[int], quick: bool, runs_dir: Path, images: list[str]) -> list[str]:
    from rotary import cpu_model
    b = budget(quick)
    context = b.get("context", CONTEXT)
    tokens = b["max_steps"] * b["batch_size"] * context
    lines = [
        "# Study 1: position schemes in a causal LM (Shakespeare)",
        "",
        f"`python experiments/position_ablation.py` on {cpu_model()}, 2 threads, `precision: auto` (bf16). "
        f"Each run: {b['max_steps']} steps x {b['batch_size']} x {context} tokens = {tokens:,} tokens, AdamW "
        f"lr 2e-3 cosine, grad_clip 1.0; seeds {', '.join(map(str, seeds))}. Model: 4 layers, d=256, "
        "4 query / 2 KV heads, SwiGLU, BPE 4,096 (one tokenizer and one set of shards for every run). "
        "Validation: the three held-out works (Julius Caesar, Twelfth Night, Richard II), bits per byte "
        f"with non-overlapping windows of {context} tokens and with a sliding window of stride {context // 2}.",
        *(["", "**--quick budget (a test of the code, not a result): a 1-layer d=32 model on 6 documents.**"]
          if quick else []),
        "",
        "| scheme | parameters | bits/byte | sliding | loss spikes | grad-norm mean | p99 | max | clipped | "
        "train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme, r in rows.items():
        params = r["seeds"][0]["parameters"]
        lines.append(
            f"| {scheme} | {params / 1e6:.2f}M | {lib.pm(r['bits_per_byte'])} | {lib.pm(r['sliding_bits_per_byte'])} | "
            f"{lib.pm(r['loss_spikes'], 1)} | {lib.pm(r['grad_norm_mean'], 2)} | {lib.pm(r['grad_norm_p99'], 2)} | "
            f"{lib.pm(r['grad_norm_max'], 2)} | {lib.pm(r['clipped_fraction'], 2)} | {lib.pm(r['train_seconds'], 0)} |")
    lines += ["", "Mean ± standard deviation over the seeds (sinusoidal-unscaled: one seed, ± 0). sinusoidal "
              "scales token embeddings by sqrt(d) as Vaswani et al. do; sinusoidal-unscaled adds the table to "
              "embeddings initialised at std 0.02, which it drowns. Loss spikes: steps (after the first tenth) whose "
              "loss is more than 4 standard deviations above the mean of the previous 50. Clipped: the share "
              "of steps whose gradient norm exceeded 1.0. Train seconds are wall time on a shared host.", ""]
    lines += [f"![{img}]({img})" for img in images]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--runs-dir", type=Path, default=lib.ROOT / "runs" / "studies" / "positions")
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    ensure_runs(args.schemes, args.seeds, args.runs_dir, args.quick)
    rows = collect(args.schemes, args.seeds, args.runs_dir, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    images = plot_curves(args.schemes, args.seeds, args.runs_dir, args.out)
    lib.write_results(args.out, "position_ablation", {"budget": budget(args.quick), "seeds": args.seeds,
                                                      "rows": rows},
                      markdown(rows, args.seeds, args.quick, args.runs_dir, images))
    print(f"wrote {args.out / 'position_ablation.md'}")


if __name__ == "__main__":
    main()
