"""What the RoPE studies share: one tokenizer and shard set per corpus, resumable training runs
through ``rotary train``, seed statistics, training-stability statistics and the result files.

Every study script (``experiments/*.py``) uses rotary's public API and this module only. A run
is trained by ``rotary.train_model`` in the study's own process, and resumed from its last
checkpoint when the study is run again after a kill; a finished run is marked by
``study_done.json`` beside its checkpoints and never trained again.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

import rotary
from rotary import atomic_write_text, cpu_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DONE = "study_done.json"


def set_key(recipe: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = recipe
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def shared_data(runs_dir: Path, corpus: str, kind: str, vocab_size: int, *, jieba: bool = False,
                corpus_opts: dict[str, Any] | None = None, tag: str | None = None) -> tuple[Path, Path]:
    """One tokenizer and one set of shards for every run of a study, so that schemes and seeds
    see exactly the same tokens. Returns (tokenizer dir, shards dir); made once, then reused."""
    base = runs_dir / f"data-{tag or corpus}"
    tok_dir, shards = base / "tokenizer", base / "shards"
    opts = dict(corpus_opts or {})
    if not (tok_dir / "tokenizer.json").is_file():
        rotary.train_tokenizer(corpus, kind, vocab_size, tok_dir, jieba=jieba, **opts)
    if not (shards / "meta.json").is_file():
        rotary.prepare(corpus, tok_dir, shards, progress=False, corpus_opts=opts, print_summary=False)
    return tok_dir, shards


def train_run(run_dir: Path, recipe: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir`` unless it finished before; resume it if it was cut short.
    Returns the run's ``study_done.json`` record (its wall time)."""
    done = run_dir / DONE
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir.parent / f"{run_dir.name}.recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    resume = (run_dir / "recipe.yaml").is_file()
    t0 = time.perf_counter()
    cfg = rotary.load_recipe(str(recipe_path), {"output_dir": str(run_dir)})
    for warning in cfg.warnings():
        print(f"rotary: warning: {warning}", file=sys.stderr)
    # in this process (a fresh interpreter per run cost ~5 s of imports and teardown each)
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        result = rotary.train_model(cfg, resume=resume)
    if result.stopped == "interrupted":  # Ctrl-C or SIGTERM: the run saved; the study stops too
        raise SystemExit(128 + int(result.signal or signal.SIGTERM))
    record = {"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds(run_dir),
              "cpu": cpu_model(), "resumed": resume}
    atomic_write_text(done, json.dumps(record, indent=2))
    print(f"[study] trained {run_dir} in {record['wall_seconds']:.0f}s", flush=True)
    return record


def train_seconds(run_dir: Path) -> float | None:
    """The training loop's own wall time ("trained N steps in Xs"), summed over resumed pieces."""
    total, found = 0.0, False
    for line in (run_dir / "train.log").read_text(encoding="utf-8").splitlines():
        if line.startswith("trained ") and " in " in line:
            total += float(line.split(" in ")[1].split("s")[0])
            found = True
    return total if found else None


def metrics(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if record.get("kind") == kind:
            out.append(record)
    return out


def stability(records: Sequence[dict[str, Any]], *, grad_clip: float | None, skip: int, window: int = 50,
              sigmas: float = 4.0) -> dict[str, float]:
    """Loss spikes and gradient-norm statistics of one run's per-step records.

    A spike is a step whose loss exceeds the mean of the previous ``window`` steps by more than
    ``sigmas`` of their standard deviations (steps after ``skip``: warmup's fall is not a spike).
    """
    losses = [r["loss"] for r in records]
    norms = sorted(r["grad_norm"] for r in records if "grad_norm" in r)
    spikes = 0
    for i in range(max(skip, window), len(losses)):
        prev = losses[i - window:i]
        mu, sd = statistics.fmean(prev), statistics.pstdev(prev)
        if sd > 0 and losses[i] > mu + sigmas * sd:
            spikes += 1
    out = {"loss_spikes": float(spikes)}
    if norms:
        out.update(grad_norm_mean=statistics.fmean(norms), grad_norm_p99=norms[min(len(norms) - 1,
                                                                                     int(0.99 * len(norms)))],
                   grad_norm_max=norms[-1])
        if grad_clip:
            out["clipped_fraction"] = sum(n > grad_clip for n in norms) / len(norms)
    return out


def spread(values: Iterable[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max (std 0 for one value)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def pm(s: dict[str, float], digits: int = 3) -> str:
    """'mean ± std' of a :func:`spread`."""
    if not s.get("n"):
        return "—"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def write_results(out: Path, stem: str, data: dict[str, Any], markdown: list[str]) -> None:
    """``{stem}.json`` and ``{stem}.md`` under ``out``, each written whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps({"cpu": cpu_model(), **data}, indent=2) + "\n")
    atomic_write_text(out / f"{stem}.md", "\n".join(markdown) + "\n")


def cached(path: Path, compute: Any) -> Any:
    """``compute()``'s JSON result, stored at ``path`` the first time and read back afterwards."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    atomic_write_text(path, json.dumps(value, indent=2))
    return value


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    from rotary import atomic_open
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    pyplot().close(fig)


def smooth(values: Sequence[float], width: int) -> list[float]:
    """A trailing moving average (the first points average what exists so far)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= width:
            acc -= values[i - width]
        out.append(acc / min(i + 1, width))
    return out


def lm_documents(corpus: str, split: str = "val", **opts: Any) -> list[str]:
    return list(rotary.load_corpus(corpus, **opts).documents(split))
