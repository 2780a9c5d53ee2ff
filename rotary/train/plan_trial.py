"""The plan's trial: the recipe's model and data path for 2 steps on this machine, a checkpoint
after the first and a resume for the second, so a run that would crash at step 1 or at its first
checkpoint crashes here, for free.

The trial keeps the recipe's width, depth and sequence length where this machine can hold them:
while the plan's peak estimate exceeds half the memory available, it halves the sequences per
micro-batch (down to 1), then the layers (down to 1); accumulation is cut to at most 2
micro-batches (the path is exercised, the step stays short). What was scaled is reported.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.train.config import load_recipe


@dataclass
class Trial:
    run_dir: Path
    scaled: list[str] = field(default_factory=list)
    estimate_bytes: float = 0.0
    peak_rss_bytes: float = 0.0
    resumed_from: int = 0
    final_step: int = 0
    final_loss: float = float("nan")


def available_bytes() -> float:
    """Memory this process may still use: MemAvailable of /proc/meminfo, else the physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fit_to_machine(recipe: str, overrides: dict[str, Any], budget: float) -> tuple[dict[str, Any], list[str], float]:
    """Overrides that make the recipe's step fit ``budget`` bytes here, what they changed, and the
    estimate they reach."""
    from rotary.train.plan import build, make_plan

    cfg = load_recipe(recipe, overrides)
    plan = make_plan(cfg, world_size=1)
    mem, acts = plan.memory["ddp"], plan.activations
    model = build(cfg)
    n_layer, rows = model.config.n_layer, cfg.batch_size
    per_layer_state = (mem.weights + mem.gradients + mem.optimizer) / max(n_layer, 1)  # blocks dominate

    def peak(layers: int, micro: int) -> float:
        state = mem.weights + mem.gradients + mem.optimizer - per_layer_state * (n_layer - layers)
        return state + acts.bytes(layers, micro)

    changes, notes = {}, []
    while peak(n_layer, rows) > budget and rows > 1:
        rows //= 2
    if rows != cfg.batch_size:
        changes["batch_size"] = rows
        notes.append(f"batch_size {cfg.batch_size} -> {rows}")
    layers = n_layer
    while peak(layers, rows) > budget and layers > 1:
        layers //= 2
    if layers != n_layer:
        changes["model.n_layer"] = layers
        notes.append(f"n_layer {n_layer} -> {layers}")
    if peak(layers, rows) > budget:
        raise RotaryError(f"even 1 layer and 1 sequence of {plan.batching.seq_len} tokens need "
                          f"{peak(layers, rows) / 2**30:.1f} GiB here, more than half of the "
                          f"{budget * 2 / 2**30:.1f} GiB available: try the trial on a larger machine")
    return changes, notes, peak(layers, rows)


def run_trial(recipe: str, overrides: dict[str, Any], out_dir: Path, *, budget: float | None = None) -> Trial:
    """Two steps of the recipe (scaled to fit), checkpointed after the first and resumed."""
    from rotary.train.loop import train

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RotaryError(f"{out_dir} is not empty: the trial writes a fresh run there; give another --output-dir")
    budget = budget if budget is not None else 0.5 * available_bytes()
    changes, notes, estimate = fit_to_machine(recipe, overrides, budget)
    base = load_recipe(recipe, overrides)
    accum = base.grad_accum_steps
    short = {"max_steps": 1, "checkpoint_interval": 1, "eval_interval": 1, "eval_batches": 1, "keep_checkpoints": 2,
             "early_stopping_patience": None, "progress": False, "tensorboard": False, "output_dir": str(out_dir)}
    if accum is not None and accum > 2 or base.global_batch_tokens is not None:
        short.update({"grad_accum_steps": min(accum or 2, 2), "global_batch_tokens": None})
        notes.append("accumulation -> at most 2 micro-batches")
    trial = Trial(out_dir, notes, estimate)
    first = train(load_recipe(recipe, {**overrides, **changes, **short}))
    if first.step != 1:
        raise RotaryError(f"the trial's first run stopped at step {first.step} ({first.stopped}), not 1")
    second = train(load_recipe(recipe, {**overrides, **changes, **short, "max_steps": 2}), resume=True)
    trial.resumed_from, trial.final_step = first.step, second.step
    trial.final_loss = float((second.last_eval or {}).get("loss", float("nan")))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    trial.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return trial
