"""Which fine-tuning settings pay, on one pretrained encoder: lever 5 of issue #33.

Each arm fine-tunes the same pretraining (default: chinese-mix-mlm) on TASK with one change to
`rotary finetune`'s defaults, seed 1337, and is judged by its best validation accuracy only. The
arm with the best validation accuracy is then run on the other seeds, and only its test split is
reported (each fine-tune scores its test split once, at its end; the other arms' test figures
are never read).

Resumable (a finished fine-tune is reused, an interrupted one resumes). Writes
docs/results/finetune_levers.{json,md}.

    python experiments/finetune_levers.py                       # every arm, then the winner's seeds
    python experiments/finetune_levers.py --arms defaults llrd-0.8 --final-seeds 1337
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_seeds import ROOT, run_one, summarise, wall_seconds, write_atomic  # noqa: E402
from pretraining_levers import pretrain  # noqa: E402

from rotary import cpu_model  # noqa: E402

# arm -> the `rotary finetune` options it changes from the task's recipe (chinese-sentiment: lr 2e-4,
# [CLS] pooling, 600 steps of 32 = ~2.3 epochs, warmup 10%, dropout 0.1, no layer-wise decay)
ARMS: dict[str, list[str]] = {
    "defaults": [],
    "lr-1e-4": ["--lr", "1e-4"],
    "lr-5e-4": ["--lr", "5e-4"],
    "llrd-0.8": ["--layer-lr-decay", "0.8"],
    "mean-pooling": ["--pooling", "mean"],
    "1200-steps": ["--max-steps", "1200"],
}


def best_val_accuracy(run: Path) -> float:
    """The best validation accuracy the fine-tune logged (what best/ holds)."""
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
             if '"eval"' in x]
    return max(e["accuracy"] for e in evals)


def fine_tune(task: str, pretrained: Path, arm: str, seed: int, runs: Path) -> Path:
    run = runs / "finetune-levers" / f"{task}-{arm}-s{seed}"
    if not (run / "test_results.json").is_file():
        run_one(task, str(pretrained), run, seed, ARMS[arm])
    return run


def table(results: dict[str, Any]) -> str:
    lines = [f"# Fine-tuning levers on {results['task']}\n",
             f"Pretraining: `rotary train {results['pretraining']}`. Command: `{results['command']}`. Machine: "
             f"{results['cpu']}. Each arm changes one `rotary finetune` default and is judged on validation "
             "(seed 1337); only the winner's test split is read, over its seeds.\n",
             "| arm | options | best val accuracy | fine-tune s |", "|---|---|---|---|"]
    for arm, r in results["arms"].items():
        lines.append(f"| {arm} | `{' '.join(ARMS[arm]) or '(none)'}` | {r['val_accuracy']:.4f} | {r['wall_s']} |")
    final = results.get("final")
    if final:
        lines.append(f"\nChosen on validation: **{final['arm']}**. Test accuracy over seeds "
                     f"{', '.join(map(str, final['seeds']))}: **{final['accuracy_mean']:.3f}** ± "
                     f"{final['accuracy_std']:.3f} (per seed {', '.join(f'{a:.3f}' for a in final['accuracy'])}).")
        bar = final.get("baseline")
        if bar:
            lines.append(f"\nThe bar: {bar['method']} on the same splits, test accuracy {bar['accuracy']:.3f} "
                         f"({final['accuracy_mean'] - bar['accuracy']:+.3f} for rotary).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--task", default="chinese-sentiment")
    p.add_argument("--pretraining", default="chinese-mix-mlm", help="the recipe pretrained first")
    p.add_argument("--final-seeds", nargs="+", type=int, default=[1337, 1338, 1339])
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = p.parse_args(argv)
    started = time.time()
    pretrained = pretrain(args.pretraining, args.runs_dir)
    results: dict[str, Any] = {"cpu": cpu_model(), "task": args.task, "pretraining": args.pretraining,
                               "command": " ".join(["python experiments/finetune_levers.py", *(argv or sys.argv[1:])]),
                               "arms": {}}
    for arm in args.arms:
        run = fine_tune(args.task, pretrained, arm, 1337, args.runs_dir)
        results["arms"][arm] = {"val_accuracy": best_val_accuracy(run), "wall_s": wall_seconds(run)}
    winner = max(results["arms"], key=lambda a: results["arms"][a]["val_accuracy"])
    rows = []
    for seed in args.final_seeds:
        run = fine_tune(args.task, pretrained, winner, seed, args.runs_dir)
        test = json.loads((run / "test_results.json").read_text(encoding="utf-8"))
        rows.append({**test, "seed": seed, "wall_s": wall_seconds(run)})
    results["final"] = {"arm": winner, **summarise(rows), "baseline": rows[0].get("baseline")}
    results["wall_s_this_invocation"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "finetune_levers.json", json.dumps(results, indent=2, ensure_ascii=False))
    md = table(results)
    write_atomic(args.out / "finetune_levers.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
