"""Study 2: position schemes in a masked LM on People's Daily: RoPE vs learned absolute (BERT)
vs none, the RoFormer paper's Figure 3 comparison (its MLM loss curves), at CPU scale.

The RoFormer layout (post-LN, GELU, LayerNorm, token types; 4 layers, d=256, 4 heads), whole-word
masking over jieba words (15%), one WordPiece vocabulary of 12,000 for every run; only
``model.position`` changes. Reported per scheme, mean ± std over the seeds: the MLM loss curves
(training and validation) and the final masked-token accuracy (top-1, top-5) on the validation
split with masks fixed by one seed (the same masked positions for every model).

An encoder without positions sees a bag of words: "Transformer language models without positional
encodings still learn positional information" found that a masked LM without positions
collapses while a causal LM does not (compare study 1's `none` row).

    python experiments/mlm_position_ablation.py           # full: 3 schemes x 3 seeds
    python experiments/mlm_position_ablation.py --quick --runs-dir DIR --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import studylib as lib

import rotary
from rotary import masked_lm_metrics

SEEDS = [1, 2, 3]
SCHEMES = {"rope": "rope", "learned": "learned", "none": "none"}
FULL = {"max_steps": 250, "batch_size": 32, "context": 128, "eval_interval": 50, "eval_batches": 20,
        "checkpoint_interval": 125, "vocab_size": 12000}
QUICK = {"max_steps": 6, "batch_size": 2, "context": 32, "eval_interval": 3, "eval_batches": 1,
         "checkpoint_interval": 6, "vocab_size": 400, "max_documents": 30,
         "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64}}


def budget(quick: bool) -> dict[str, Any]:
    return QUICK if quick else FULL


def recipe(scheme: str, seed: int, runs_dir: Path, quick: bool) -> dict[str, Any]:
    b = budget(quick)
    opts = {"max_documents": b["max_documents"]} if quick else {}
    tok_dir, shards = lib.shared_data(runs_dir, "peoples-daily", "wordpiece", b["vocab_size"], jieba=True,
                                      corpus_opts=opts, tag="peoples-daily-quick" if quick else "peoples-daily")
    model = {"preset": "roformer-small", "n_layer": 4, "n_head": 4, "d_model": 256, "d_ff": 1024,
             "max_seq_len": b["context"], **b.get("model", {}), "position": SCHEMES[scheme]}
    return {"name": f"mlm-positions-{scheme}-s{seed}", "task": "masked_lm", "model": model,
            "data": {"shards": str(shards), "tokenizer": {"path": str(tok_dir)}, "mlm_probability": 0.15,
                     "whole_word_mask": True},
            "seq_len": b["context"], "batch_size": b["batch_size"], "max_steps": b["max_steps"], "lr": 5.0e-4,
            "min_lr": 5.0e-5, "warmup_fraction": 0.05, "weight_decay": 0.01, "beta2": 0.98, "grad_clip": 1.0,
            "precision": "auto", "seed": seed, "eval_interval": b["eval_interval"],
            "eval_batches": b["eval_batches"], "checkpoint_interval": b["checkpoint_interval"],
            "keep_checkpoints": 2, "log_interval": 1, "progress": False, "tensorboard": False}


def evaluate(run: Path, quick: bool) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        pre = rotary.load(run, which="latest", device="cpu")
        docs = lib.lm_documents("peoples-daily", **({"max_documents": 30} if quick else {}))
        tokens = np.concatenate([np.asarray(pre.tokenizer.encode(d) + [pre.tokenizer.sep_id], dtype=np.int64)
                                 for d in docs])
        m = masked_lm_metrics(pre.model, pre.tokenizer, tokens, seq_len=pre.model.config.max_seq_len, seed=0)
        return {k: m[k] for k in ("loss", "top1_accuracy", "top5_accuracy", "masked_tokens")}

    return lib.cached(run / "study_eval.json", compute)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--runs-dir", type=Path, default=lib.ROOT / "runs" / "studies" / "mlm-positions")
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    from rotary import cpu_model
    rows: dict[str, Any] = {}
    for scheme in args.schemes:
        per_seed = []
        for seed in args.seeds:
            run = args.runs_dir / f"{scheme}-s{seed}"
            done = lib.train_run(run, recipe(scheme, seed, args.runs_dir, args.quick), quiet=args.quick)
            final_train = lib.metrics(run, "train")[-20:]
            per_seed.append({"seed": seed, **evaluate(run, args.quick), "train_seconds": done.get("train_seconds"),
                             "final_train_loss": sum(r["loss"] for r in final_train) / len(final_train)})
        rows[scheme] = {"seeds": per_seed, **{k: lib.spread(r[k] for r in per_seed) for k in (
            "loss", "top1_accuracy", "top5_accuracy", "final_train_loss", "train_seconds")}}

    plt = lib.pyplot()
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4.2))
    for scheme in args.schemes:
        runs = [args.runs_dir / f"{scheme}-s{s}" for s in args.seeds]
        train = [lib.metrics(r, "train") for r in runs]
        n = min(len(t) for t in train)
        mean = [sum(t[i]["loss"] for t in train) / len(train) for i in range(n)]
        line, = ax_t.plot([r["step"] for r in train[0][:n]], lib.smooth(mean, 20), label=scheme)
        evals = [lib.metrics(r, "eval") for r in runs]
        m = min(len(e) for e in evals)
        ax_v.plot([e["step"] for e in evals[0][:m]], [sum(e[i]["loss"] for e in evals) / len(evals) for i in range(m)],
                  marker="o", ms=3, color=line.get_color(), label=scheme)
    ax_t.set(title="MLM training loss (mean of seeds, 20-step average)", xlabel="step", ylabel="loss")
    ax_v.set(title="MLM validation loss (mean of seeds)", xlabel="step", ylabel="loss")
    for ax in (ax_t, ax_v):
        ax.grid(alpha=0.3)
        ax.legend()
    lib.save_figure(fig, args.out / "mlm_position_ablation.png")

    b = budget(args.quick)
    tokens = b["max_steps"] * b["batch_size"] * b["context"]
    lines = ["# Study 2: position schemes in a masked LM (People's Daily)", "",
             f"`python experiments/mlm_position_ablation.py` on {cpu_model()}, 2 threads, `precision: auto`. "
             f"Each run: {b['max_steps']} steps x {b['batch_size']} x {b['context']} tokens = {tokens:,} tokens, "
             "AdamW lr 5e-4 cosine, whole-word masking 15%; seeds " + ", ".join(map(str, args.seeds)) + ". "
             "Model: the RoFormer layout (post-LN, GELU), 4 layers, d=256, 4 heads, WordPiece 12,000 with jieba. "
             "Accuracy: masked tokens of the whole validation split, masks drawn from seed 0 (the same for every "
             "model).",
             *(["", "**--quick budget (a test of the code, not a result).**"] if args.quick else []),
             "", "| scheme | masked top-1 | top-5 | val MLM loss | train loss (last 20 steps) | train s |",
             "|---|---|---|---|---|---|"]
    for scheme, r in rows.items():
        lines.append(f"| {scheme} | {lib.pm(r['top1_accuracy'])} | {lib.pm(r['top5_accuracy'])} | "
                     f"{lib.pm(r['loss'])} | {lib.pm(r['final_train_loss'])} | {lib.pm(r['train_seconds'], 0)} |")
    lines += ["", "![mlm_position_ablation.png](mlm_position_ablation.png)"]
    lib.write_results(args.out, "mlm_position_ablation", {"budget": b, "seeds": args.seeds, "rows": rows}, lines)
    print(f"wrote {args.out / 'mlm_position_ablation.md'}")


if __name__ == "__main__":
    main()
