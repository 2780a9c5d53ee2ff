"""Study 3: length extrapolation. The causal LMs of study 1 (trained at L = 128 tokens) scored at
L, 2L, 4L, 8L and 16L on the three whole held-out works, with non-overlapping windows of each
length (every token is predicted from the context its window gives it, as in the ALiBi paper).

Schemes: every study-1 model as trained; RoPE with inference-time scaling and no training
(position interpolation and YaRN with factor = length / L at each length; dynamic NTK with
factor 2, whose base follows the length by itself); and RoPE after a short fine-tune at 4L
(position interpolation x4, YaRN x4, and plain RoPE at 4L as the control that shows what the
longer data alone does). Learned absolute positions cannot read past L: shown as such.

    python experiments/length_extrapolation.py           # trains study 1's runs first if missing
    python experiments/length_extrapolation.py --quick --runs-dir DIR --out DIR

Resumable: every score is cached in its run directory (``extrapolation_*.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import position_ablation as study1
import studylib as lib

import rotary
from rotary import RotaryError, causal_documents_metrics

MULTIPLES = [1, 2, 4, 8, 16]
# fine-tunes at 4L: name -> model keys laid over the rope run's config
FINETUNES: dict[str, dict[str, Any]] = {
    "rope-ft4L": {},
    "pi-ft4L": {"rope_scaling": "linear", "rope_scaling_factor": 4.0},
    "yarn-ft4L": {"rope_scaling": "yarn", "rope_scaling_factor": 4.0},
}
FT_FULL = {"max_steps": 100, "batch_size": 4}
FT_QUICK = {"max_steps": 2, "batch_size": 1}
# inference-time scaling of the plain rope runs: name -> (rotary.load's rope_scaling, factor or None = length/L)
SCALED: dict[str, tuple[str, float | None]] = {
    "rope+pi": ("linear", None),
    "rope+dynamic-ntk": ("dynamic_ntk", 2.0),
    "rope+yarn": ("yarn", None),
}


def finetune_recipe(name: str, seed: int, runs_dir: Path, quick: bool) -> dict[str, Any]:
    context = study1.budget(quick).get("context", study1.CONTEXT)
    long = 4 * context
    base = study1.recipe("rope", seed, runs_dir, quick)
    b = FT_QUICK if quick else FT_FULL
    model = {"max_seq_len": long, **FINETUNES[name]}
    if FINETUNES[name]:
        model["rope_original_max_seq_len"] = context
    data = {"shards": base["data"]["shards"]}  # the rope run brings its tokenizer (the same one)
    return {**base, "name": f"extrapolation-{name}-s{seed}", "model": model, "data": data,
            "init_from": str(study1.run_dir(runs_dir, "rope", seed)), "seq_len": long,
            "batch_size": b["batch_size"], "max_steps": b["max_steps"], "lr": 3.0e-4, "min_lr": 3.0e-5,
            "warmup_fraction": 0.1, "eval_interval": b["max_steps"], "checkpoint_interval": b["max_steps"]}


def score(run: Path, docs: list[str], length: int, *, scaling: str | None = None, factor: float | None = None,
          tag: str) -> float | None:
    """Bits per byte of ``run`` with windows of ``length`` tokens (None: the model cannot read them)."""
    def compute() -> dict[str, Any]:
        try:
            pre = rotary.load(run, which="latest", device="cpu", rope_scaling=scaling, rope_factor=factor)
            batch = max(1, 4096 // length)
            m = causal_documents_metrics(pre, docs, seq_len=length, batch_size=batch)
            return {"bits_per_byte": m["bits_per_byte"], "loss": m["loss"]}
        except RotaryError as err:  # learned positions past L
            return {"bits_per_byte": None, "error": str(err)}

    return lib.cached(run / f"extrapolation_{tag}_{length}.json", compute)["bits_per_byte"]


def collect(seeds: list[int], runs_dir: Path, quick: bool, schemes: list[str]) -> dict[str, dict[int, list]]:
    context = study1.budget(quick).get("context", study1.CONTEXT)
    lengths = [m * context for m in MULTIPLES]
    docs = study1.validation_docs(quick)
    table: dict[str, dict[int, list]] = {}
    for scheme in schemes:
        table[scheme] = {n: [score(study1.run_dir(runs_dir, scheme, s), docs, n, tag="plain")
                             for s in study1.seeds_of(scheme, seeds)]
                         for n in lengths}
    for name, (scaling, fixed) in SCALED.items():
        table[name] = {}
        for n in lengths:
            factor = fixed if fixed is not None else n / context
            if factor <= 1.0:  # at L itself a factor of 1 is plain RoPE
                table[name][n] = table["rope"][n]
                continue
            table[name][n] = [score(study1.run_dir(runs_dir, "rope", s), docs, n, scaling=scaling, factor=factor,
                                    tag=f"{scaling}{factor:g}") for s in seeds]
    for name in FINETUNES:
        table[name] = {n: [score(runs_dir / f"{name}-s{s}", docs, n, tag="plain") for s in seeds] for n in lengths}
    return table


def plot(table: dict[str, dict[int, list]], context: int, out: Path) -> str:
    plt = lib.pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for name, by_len in table.items():
        xs, ys, es = [], [], []
        for n, values in by_len.items():
            s = lib.spread(v for v in values if v is not None)
            if s["n"]:
                xs.append(n)
                ys.append(s["mean"])
                es.append(s["std"])
        style = "--" if "ft4L" in name else (":" if "+" in name else "-")
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, ls=style, capsize=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks([m * context for m in MULTIPLES], [f"{m}L={m * context}" for m in MULTIPLES])
    ax.axvline(context, color="grey", lw=0.8)
    ax.set(xlabel="evaluation window (tokens)", ylabel="validation bits per byte",
           title=f"Length extrapolation, trained at L={context}\n(dashed: fine-tuned at 4L; dotted: scaled, untrained)")
    finite = [v for by_len in table.values() for vals in by_len.values() for v in vals if v is not None]
    ax.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 3.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    lib.save_figure(fig, out / "length_extrapolation.png")
    return "length_extrapolation.png"


def markdown(table: dict[str, dict[int, list]], seeds: list[int], quick: bool, image: str) -> list[str]:
    from rotary import cpu_model
    context = study1.budget(quick).get("context", study1.CONTEXT)
    lengths = [m * context for m in MULTIPLES]
    ft = FT_QUICK if quick else FT_FULL
    lines = [
        "# Study 3: length extrapolation (Shakespeare)",
        "",
        f"`python experiments/length_extrapolation.py` on {cpu_model()}, 2 threads. The models of study 1 "
        f"(`position_ablation.md`: trained at L = {context} tokens), seeds {', '.join(map(str, seeds))}, scored "
        f"in fp32 on the three held-out works with non-overlapping windows of each length. Fine-tunes: "
        f"{ft['max_steps']} steps x {ft['batch_size']} x {4 * context} tokens from each seed's rope run "
        "(lr 3e-4 cosine). Bits per byte, mean ± std over seeds; '—' = the model cannot read that length.",
        *(["", "**--quick budget (a test of the code, not a result).**"] if quick else []),
        "",
        "| scheme | " + " | ".join(f"{n // context}L = {n}" for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for name, by_len in table.items():
        cells = [lib.pm(lib.spread(v for v in by_len[n] if v is not None)) for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![{image}]({image})"]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=study1.SEEDS)
    parser.add_argument("--schemes", nargs="+", default=list(study1.SCHEMES), choices=list(study1.SCHEMES))
    parser.add_argument("--runs-dir", type=Path, default=lib.ROOT / "runs" / "studies" / "positions")
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    schemes = list(dict.fromkeys(["rope", *args.schemes]))  # the scaled and fine-tuned rows start from rope
    study1.ensure_runs(schemes, args.seeds, args.runs_dir, args.quick)
    for name in FINETUNES:
        for seed in args.seeds:
            lib.train_run(args.runs_dir / f"{name}-s{seed}", finetune_recipe(name, seed, args.runs_dir, args.quick),
                          quiet=args.quick)
    table = collect(args.seeds, args.runs_dir, args.quick, schemes)
    context = study1.budget(args.quick).get("context", study1.CONTEXT)
    image = plot(table, context, args.out)
    data = {"context": context, "seeds": args.seeds,
            "table": {name: {str(n): v for n, v in by_len.items()} for name, by_len in table.items()}}
    lib.write_results(args.out, "length_extrapolation", data, markdown(table, args.seeds, args.quick, image))
    print(f"wrote {args.out / 'length_extrapolation.md'}")


if __name__ == "__main__":
    main()
