"""Fine-tuning over seeds, with and without MLM pretraining: the figures of the Chinese workflow.

For each task recipe (chinese-sentiment, thucnews) and each seed, two fine-tunes through the
public CLI: from the pretrained MLM run (``--from RUN``), and the same classifier from scratch
(``--from none``, the MLM run's model config and tokenizer, so the only difference is the
pretraining). Each run's test split is scored once by ``rotary finetune`` itself
(``test_results.json``); this script only collects them: mean, sample standard deviation,
min-max and the bootstrap intervals per (task, init), written as JSON and a markdown table.

Resumable: a run whose test_results.json exists is skipped, an interrupted one resumes.

    python experiments/finetune_seeds.py                      # the full study (about 1 h 40 on 2 cores)
    python experiments/finetune_seeds.py --quick --pretrained RUN --runs-dir DIR --out DIR \\
        --extra --data.corpus my_data/                        # the same code on a tiny budget
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from rotary import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def builtin_recipe(name: str) -> dict[str, Any]:
    path = ROOT / "rotary" / "recipes" / f"{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def scratch_recipe(task: str, pretrained: Path, tmp: Path) -> Path:
    """The task's recipe with no pretraining: the MLM run's model and tokenizer, fresh weights."""
    best = pretrained / "best" if (pretrained / "best").is_dir() else pretrained
    model = json.loads((best / "config.json").read_text(encoding="utf-8"))["model"]
    recipe = builtin_recipe(task)
    recipe["init_from"] = "none"
    recipe["model"] = model
    recipe.setdefault("data", {})["tokenizer"] = {"path": str(best / "tokenizer")}
    path = tmp / f"{task}-scratch.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def wall_seconds(run: Path) -> float | None:
    """The run's training time: the sum over its sessions (a resumed run logs one line each)."""
    spans = [float(line.split(" in ")[1].split("s")[0])
             for line in (run / "train.log").read_text(encoding="utf-8").splitlines()
             if line.startswith("trained ") and " in " in line]
    return round(sum(spans), 1) if spans else None


def run_one(recipe: str, init: str, run: Path, seed: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "rotary", "finetune", recipe, "--from", init, "--output-dir", str(run),
           "--seed", str(seed), "--progress", "false", *extra]
    if (run / "checkpoints").is_dir():
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [r["accuracy"] for r in rows]
    f1 = [r["macro_f1"] for r in rows]
    return {
        "seeds": [r["seed"] for r in rows],
        "accuracy": acc, "accuracy_mean": statistics.fmean(acc),
        "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "accuracy_95ci": [r["accuracy_95ci"] for r in rows],
        "macro_f1_mean": statistics.fmean(f1), "macro_f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
        "wall_s": [r["wall_s"] for r in rows], "examples": rows[0]["examples"],
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| task (test texts) | init | test accuracy, mean ± std | per seed | macro-F1 mean | wall s per run |",
             "|---|---|---|---|---|---|"]
    for key, r in results["runs"].items():
        task, init = key.split("/")
        per_seed = ", ".join(f"{a:.3f}" for a in r["accuracy"])
        walls = [w for w in r["wall_s"] if w is not None]
        wall = f"{statistics.fmean(walls):.0f}" if walls else "?"
        lines.append(f"| {task} ({r['examples']}) | {init} | **{r['accuracy_mean']:.3f}** ± {r['accuracy_std']:.3f} "
                     f"| {per_seed} | {r['macro_f1_mean']:.3f} | {wall} |")
    for task, gain in results["gain"].items():
        lines.append(f"\nPretraining gain on {task}: {gain:+.3f} accuracy (mean over seeds).")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", type=Path, default=ROOT / "runs" / "peoples-daily-mlm")
    p.add_argument("--tasks", nargs="+", default=["chinese-sentiment", "thucnews"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338, 1339])
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "finetune-seeds")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--quick", action="store_true", help="2 seeds, 4 steps per run (the test suite's budget)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `rotary finetune` arguments")
    args = p.parse_args(argv)
    extra = list(args.extra)
    seeds = args.seeds
    if args.quick:
        seeds = seeds[:2]
        extra += ["--max-steps", "4", "--eval-interval", "2", "--checkpoint-interval", "2", "--tensorboard", "false"]
    if not (args.pretrained / "best").is_dir() and not (args.pretrained / "config.json").is_file():
        print(f"error: {args.pretrained} is no run: train it first (rotary train peoples-daily-mlm)", file=sys.stderr)
        return 2
    started = time.time()
    results: dict[str, Any] = {"cpu": cpu_model(), "pretrained": str(args.pretrained), "extra": extra,
                               "runs": {}, "gain": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            inits = {"pretrained": (task, str(args.pretrained)),
                     "scratch": (str(scratch_recipe(task, args.pretrained, Path(tmp))), "none")}
            for init, (recipe, source) in inits.items():
                rows = []
                for seed in seeds:
                    run = args.runs_dir / f"{task}-{init}-s{seed}"
                    if not (run / "test_results.json").is_file():
                        run_one(recipe, source, run, seed, extra)
                    test = json.loads((run / "test_results.json").read_text(encoding="utf-8"))
                    rows.append({**test, "seed": seed, "wall_s": wall_seconds(run)})
                results["runs"][f"{task}/{init}"] = summarise(rows)
            runs = results["runs"]
            pretrained, scratch = runs[f"{task}/pretrained"], runs[f"{task}/scratch"]
            results["gain"][task] = pretrained["accuracy_mean"] - scratch["accuracy_mean"]
    results["wall_s_this_invocation"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "finetune_seeds.json", json.dumps(results, indent=2))
    md = (f"# Fine-tuning over seeds: pretrained vs from scratch\n\nMachine: {results['cpu']}. "
          f"Command: `python experiments/finetune_seeds.py{' --quick' if args.quick else ''}`; "
          f"seeds {', '.join(map(str, seeds))}; 95% bootstrap intervals per run are in finetune_seeds.json.\n\n"
          + table(results))
    write_atomic(args.out / "finetune_seeds.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
