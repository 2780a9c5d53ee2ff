"""Time for one epoch of a fixed translation budget on each available device and process count,
as one bar chart (the chart the original from-scratch Transformer project shows).

The budget: the first ``--pairs`` training pairs of tatoeba-zh-en (zh->en), one joint BPE
vocabulary, the ``tatoeba-zh-en`` recipe's model and token budget per batch. One epoch = every
training pair once: with W processes each step takes W micro-batches, so an epoch is
ceil(batches / W) steps. Each configuration runs ``rotary train`` (under ``torch.distributed.run``
for W > 1: DDP, gloo on the CPU) and the time is the loop's own ("trained N steps in Xs"), which
excludes start-up and data preparation. Devices: cpu always, cuda and mps when present (one
process per GPU, up to the GPUs there are).

    python bench/epoch_time.py                      # cpu x {1, 2}, and cuda/mps if present
    python bench/epoch_time.py --procs 1 2 4 --pairs 4000 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def devices() -> list[tuple[str, int]]:
    """(device, how many processes it can take at most)."""
    import torch

    out = [("cpu", 1 << 10)]
    if torch.cuda.is_available():
        out.append(("cuda", torch.cuda.device_count()))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append(("mps", 1))
    return out


def prepare(work: Path, pairs: int, seq_len: int) -> tuple[Path, Path, int]:
    """Tokenizer and prepared pairs of the budget; returns them and the epoch's micro-batches."""
    from rotary import load_parallel, train_tokenizer
    from rotary.data.seq2seq import Seq2SeqData, prepare_pairs
    from rotary.data.seq2seq_run import _TextCorpus

    recipe = yaml.safe_load((ROOT / "rotary" / "recipes" / "tatoeba-zh-en.yaml").read_text(encoding="utf-8"))
    data = load_parallel("tatoeba-zh-en", max_pairs=pairs)
    tok, shards = work / "tokenizer", work / "pairs"
    train_tokenizer(_TextCorpus(list(data.texts("train"))), "bpe", recipe["data"]["tokenizer"]["vocab_size"], tok)
    prepare_pairs(data, tok, shards)
    d = Seq2SeqData(shards, tok)
    d.configure(seq_len=seq_len, batch_size=recipe["batch_size"], seed=0, model_vocab=d.vocab_size)
    return tok, shards, len(d._plan(0))


def run_one(device: str, procs: int, tok: Path, shards: Path, batches: int, work: Path) -> dict:
    recipe = yaml.safe_load((ROOT / "rotary" / "recipes" / "tatoeba-zh-en.yaml").read_text(encoding="utf-8"))
    steps = math.ceil(batches / procs)
    run_dir = work / f"{device}-x{procs}"
    recipe.update({"name": run_dir.name, "output_dir": str(run_dir), "device": device, "max_steps": steps,
                   "warmup_steps": max(1, steps // 10), "eval_interval": steps, "eval_batches": 1,
                   "checkpoint_interval": steps, "progress": False, "tensorboard": False,
                   "data": {"shards": str(shards), "tokenizer": {"path": str(tok)}}})
    if device == "cpu":
        recipe["threads"] = max(1, 2 // procs) if procs <= 2 else 1
    path = work / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    launch = [sys.executable, "-m", "rotary", "train", str(path)]
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}", "-m", "rotary",
                  "train", str(path)]
    t0 = time.perf_counter()
    done = subprocess.run(launch, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{device} x{procs} failed:\n{done.stderr[-2000:]}")
    line = next(ln for ln in (run_dir / "train.log").read_text().splitlines() if ln.startswith("trained "))
    seconds = float(line.split(" in ")[1].split("s")[0])
    return {"device": device, "processes": procs, "steps": steps, "micro_batches": batches,
            "epoch_seconds": seconds, "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2], help="process counts to time")
    ap.add_argument("--pairs", type=int, default=8000, help="training pairs in the epoch")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rotary import cpu_model

    with tempfile.TemporaryDirectory(prefix="rotary-epoch-") as tmp:
        work = Path(tmp)
        recipe = yaml.safe_load((ROOT / "rotary" / "recipes" / "tatoeba-zh-en.yaml").read_text(encoding="utf-8"))
        tok, shards, batches = prepare(work, args.pairs, recipe["seq_len"])
        rows = []
        for device, most in devices():
            for procs in args.procs:
                if procs > most:
                    continue
                rows.append(run_one(device, procs, tok, shards, batches, work))
                print(f"{device} x{procs}: {rows[-1]['epoch_seconds']:.1f}s per epoch", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "epoch_time.json").write_text(json.dumps({"cpu": cpu_model(), "pairs": args.pairs,
                                                          "rows": rows}, indent=2) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [f"{r['device']} x{r['processes']}" for r in rows]
    bars = ax.bar(labels, [r["epoch_seconds"] for r in rows], color="tab:blue")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['epoch_seconds']:.0f}s", ha="center",
                va="bottom", fontsize=8)
    ax.set(ylabel="seconds per epoch", title=f"One epoch of {args.pairs:,} tatoeba pairs ({cpu_model()})")
    fig.tight_layout()
    fig.savefig(args.out / "epoch_time.png", dpi=110)
    print(f"wrote {args.out / 'epoch_time.png'}")


if __name__ == "__main__":
    main()
