"""The RoFormer paper's translation comparison at CPU scale: the built-in recipes
``tatoeba-zh-en`` (RoPE self-attention) and ``tatoeba-zh-en-sinusoidal`` (the original
Transformer), 3 seeds each, scored on the Tatoeba test split (every reference of a source
counts) with sacrebleu BLEU and chrF after beam search (beam 5).

One tokenizer and one set of prepared pairs serve all six runs (made by the first). Resumable:
finished runs are skipped, scores are cached in each run directory.

    python experiments/translation_seeds.py                   # 2 schemes x 3 seeds
    python experiments/translation_seeds.py --quick --runs-dir DIR --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import studylib as lib
import yaml

import rotary
from rotary import load_parallel, seq2seq_metrics

SCHEMES = {"rope": "tatoeba-zh-en", "sinusoidal": "tatoeba-zh-en-sinusoidal"}
SEEDS = [1, 2, 3]
QUICK = {"max_steps": 4, "batch_size": 4, "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 4,
         "seq_len": 32, "data.max_documents": 400, "data.tokenizer.vocab_size": 400,
         "model": {"n_layer": 1, "n_decoder_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64, "max_seq_len": 32}}


def recipe(scheme: str, seed: int, runs_dir: Path, quick: bool) -> dict[str, Any]:
    r = yaml.safe_load((lib.ROOT / "rotary" / "recipes" / f"{SCHEMES[scheme]}.yaml").read_text(encoding="utf-8"))
    r["seed"] = seed
    r["progress"] = False
    if quick:
        for key, value in QUICK.items():
            if key == "model":
                r["model"] = {"preset": r["model"]["preset"], **value}
            else:
                lib.set_key(r, key, value)
        r["warmup_steps"] = 1
    first = runs_dir / "rope-s1"
    if (scheme, seed) != ("rope", 1):  # the first run's tokenizer and prepared pairs
        r["data"] = {"shards": str(first / "data"), "tokenizer": {"path": str(first / "tokenizer")}}
    return r


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--runs-dir", type=Path, default=lib.ROOT / "runs" / "studies" / "translation")
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    from rotary import cpu_model
    order = [("rope", 1)] + [(s, k) for s in SCHEMES for k in args.seeds if (s, k) != ("rope", 1)]
    done = {}
    for scheme, seed in order:
        run = args.runs_dir / f"{scheme}-s{seed}"
        done[(scheme, seed)] = lib.train_run(run, recipe(scheme, seed, args.runs_dir, args.quick), quiet=args.quick)
    data = load_parallel("tatoeba-zh-en", **({"max_pairs": 60} if args.quick else {}))
    rows: dict[str, Any] = {}
    samples = []
    for scheme in SCHEMES:
        per_seed = []
        for seed in args.seeds:
            run = args.runs_dir / f"{scheme}-s{seed}"

            def compute(run: Path = run) -> dict[str, Any]:
                pre = rotary.load(run, device="cpu")
                return seq2seq_metrics(pre, data, "test", num_beams=args.beam)

            m = lib.cached(run / f"test_beam{args.beam}.json", compute)
            per_seed.append({"seed": seed, "bleu": m["bleu"], "chrf": m["chrf"], "loss": m["loss"],
                             "train_seconds": done[(scheme, seed)].get("train_seconds"),
                             "bleu_signature": m["bleu_signature"]})
            if seed == args.seeds[0]:
                samples.append((scheme, m["samples"]))
        rows[scheme] = {"seeds": per_seed, **{k: lib.spread(r[k] for r in per_seed)
                                              for k in ("bleu", "chrf", "loss", "train_seconds")}}
    r0 = recipe("rope", 1, args.runs_dir, args.quick)
    lines = ["# Translation: RoPE vs sinusoidal positions (Tatoeba zh→en)", "",
             f"`python experiments/translation_seeds.py` on {cpu_model()}, 2 threads. The built-in recipes "
             "`tatoeba-zh-en` (RoPE) and `tatoeba-zh-en-sinusoidal`, identical but for the position scheme: "
             f"{r0['max_steps']} steps, token budget {r0['batch_size']} x {r0['seq_len']} per batch, seeds "
             f"{', '.join(map(str, args.seeds))}. Test split: {len(data.references('test')[0]):,} Chinese sentences "
             f"with all their English references; beam {args.beam}; sacrebleu "
             f"`{rows['rope']['seeds'][0]['bleu_signature']}`.",
             *(["", "**--quick budget (a test of the code, not a result).**"] if args.quick else []),
             "", "| positions | BLEU | chrF | test loss (per token) | train s |", "|---|---|---|---|---|"]
    for scheme, r in rows.items():
        lines.append(f"| {scheme} | {lib.pm(r['bleu'], 2)} | {lib.pm(r['chrf'], 2)} | {lib.pm(r['loss'])} | "
                     f"{lib.pm(r['train_seconds'], 0)} |")
    lines += ["", "Sample translations (seed " + str(args.seeds[0]) + "):", ""]
    for scheme, items in samples:
        for s in items[:5]:
            lines.append(f"- {scheme}: {s['source']} → {s['translation']}  (reference: {s['references'][0]})")
    lib.write_results(args.out, "translation_seeds", {"rows": rows, "beam": args.beam, "seeds": args.seeds}, lines)
    print(f"wrote {args.out / 'translation_seeds.md'}")


if __name__ == "__main__":
    main()
