"""Which pretraining pays: the levers of issue #33 as arms, each pretrained once and fine-tuned on
a task over seeds, every figure from the test split the fine-tune scores once.

    mlm          rotary train peoples-daily-mlm, then rotary finetune TASK --from it
    mlm+tapt     the same MLM, then rotary finetune TASK --from it --tapt-steps N (task-adaptive)
    electra      rotary train peoples-daily-electra, then rotary finetune TASK --from it

Resumable: a finished pretraining or fine-tune is reused, an interrupted one resumes, so the
study can span sessions. Writes docs/results/pretraining_levers.{json,md} (for another --task,
pretraining_levers_TASK.{json,md}).

    python experiments/pretraining_levers.py --arms electra mlm mlm+tapt --seeds 1337
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_seeds import ROOT, run_one, summarise, wall_seconds, write_atomic  # noqa: E402

from rotary import cpu_model  # noqa: E402

PRETRAINING = {"mlm": "peoples-daily-mlm", "mlm+tapt": "peoples-daily-mlm", "electra": "peoples-daily-electra",
               "mix-char": "chinese-mix-mlm"}


def pretrain(recipe: str, runs: Path) -> Path:
    run = runs / recipe
    done = run / "best"
    cmd = [sys.executable, "-m", "rotary", "train", recipe, "--output-dir", str(run), "--progress", "false"]
    if (run / "checkpoints").is_dir():
        cmd.append("--resume")
    if not (done.is_dir() and _finished(run)):
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return run


def _finished(run: Path) -> bool:
    """Its newest checkpoint has reached the max_steps of its recipe.yaml."""
    import yaml

    steps = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
    if not steps or not (run / "recipe.yaml").is_file():
        return False
    state = json.loads((steps[-1] / "trainer_state.json").read_text(encoding="utf-8"))
    return state["step"] >= yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))["max_steps"]


def last_eval(run: Path) -> dict[str, Any]:
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if '"eval"' in x]
    return evals[-1] if evals else {}


def _earlier_arms(path: Path, task: str) -> dict[str, Any]:
    """The arms an earlier invocation recorded for this task (this one adds or replaces its own)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier.get("task") != task:
        return {}
    return {arm: {"cpu": earlier.get("cpu"), **r} for arm, r in earlier["arms"].items()}


def stem(task: str) -> str:
    """The results' file name: one table per task (chinese-sentiment's is the first, unsuffixed)."""
    return "pretraining_levers" if task == "chinese-sentiment" else f"pretraining_levers_{task.replace('-', '_')}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(PRETRAINING), choices=list(PRETRAINING))
    p.add_argument("--task", default="chinese-sentiment")
    p.add_argument("--seeds", nargs="+", type=int, default=[1337])
    p.add_argument("--tapt-steps", type=int, default=300)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `rotary finetune` arguments")
    args = p.parse_args(argv)
    started = time.time()
    results: dict[str, Any] = {"cpu": cpu_model(), "task": args.task, "tapt_steps": args.tapt_steps,
                               "arms": _earlier_arms(args.out / f"{stem(args.task)}.json", args.task)}
    task_option = ["--task", args.task] if args.task != "chinese-sentiment" else []
    for arm in args.arms:
        pretrained = pretrain(PRETRAINING[arm], args.runs_dir)
        extra = list(args.extra) + (["--tapt-steps", str(args.tapt_steps)] if arm == "mlm+tapt" else [])
        rows = []
        for seed in args.seeds:
            run = args.runs_dir / "levers" / f"{args.task}-{arm.replace('+', '-')}-s{seed}"
            if not (run / "test_results.json").is_file():
                run_one(args.task, str(pretrained), run, seed, extra)
            test = json.loads((run / "test_results.json").read_text(encoding="utf-8"))
            rows.append({**test, "seed": seed, "wall_s": wall_seconds(run)})
        results["arms"][arm] = {**summarise(rows), "pretraining": PRETRAINING[arm],
                                "pretraining_wall_s": wall_seconds(pretrained),
                                "pretraining_last_eval": last_eval(pretrained),
                                "baseline": rows[0].get("baseline"), "cpu": cpu_model(),
                                "command": " ".join(["python experiments/pretraining_levers.py", "--arms", arm,
                                                     *task_option,
                                                     "--seeds", *map(str, args.seeds)])}
    results["wall_s_this_invocation"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / f"{stem(args.task)}.json", json.dumps(results, indent=2, ensure_ascii=False))
    lines = [f"# Pretraining levers on {args.task}\n",
             "Each arm: `python experiments/pretraining_levers.py --arms ARM --seeds ...` on the machine "
             "named in its row; the test split is scored once per run.\n",
             "| arm | pretraining (wall s) | its last eval | test accuracy mean ± std | per seed | fine-tune s "
             "| machine |",
             "|---|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        ev = r["pretraining_last_eval"]
        shown = ", ".join(f"{k} {ev[k]:.3f}" for k in ("accuracy", "disc_accuracy") if k in ev)
        lines.append(f"| {arm} | {r['pretraining']} ({r['pretraining_wall_s']}) | {shown} | "
                     f"**{r['accuracy_mean']:.3f}** ± {r['accuracy_std']:.3f} | "
                     f"{', '.join(f'{a:.3f}' for a in r['accuracy'])} | "
                     f"{', '.join(str(w) for w in r['wall_s'])} | {r.get('cpu', results['cpu'])} |")
    bar = next((r["baseline"] for r in results["arms"].values() if r.get("baseline")), None)
    if bar:
        lines.append(f"\nThe bar: {bar['method']} on the same splits, test accuracy {bar['accuracy']:.3f}.")
    md = "\n".join(lines) + "\n"
    write_atomic(args.out / f"{stem(args.task)}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
