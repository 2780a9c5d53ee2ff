"""Run logs: ``metrics.jsonl``, TensorBoard event files, a progress bar and plain log lines.

Only rank 0 logs; the other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rotary.io import atomic_open, atomic_write_text


class RunLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, progress: bool,
                 total_steps: int, start_step: int) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._bar = None
        self._metrics = None
        self.log_path = self.run_dir / "train.log"
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Appending keeps the history of a resumed run in one file.
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._log = open(self.log_path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # tensorboard is a dependency, but keep training without it
                self.line("tensorboard is not installed: no event files will be written")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True, file=sys.stderr, leave=True)

    def metrics(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record to metrics.jsonl and TensorBoard (``kind``/name tags)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{name}", value, step)

    def line(self, text: str) -> None:
        """A log line to train.log and the terminal (above the progress bar)."""
        if not self.enabled:
            return
        self._log.write(text + "\n")
        self._log.flush()
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def progress(self, step: int, postfix: dict[str, str]) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        self._metrics.close()
        self._log.close()


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def plot_losses(run_dir: Path, title: str | None = None) -> Path | None:
    """``loss.png``: training and validation loss against step, from metrics.jsonl."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for rec in read_metrics(metrics):
        if rec.get("kind") in ("train", "eval") and "loss" in rec:
            (train if rec["kind"] == "train" else val)[rec["step"]] = rec["loss"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train loss", lw=1.2)
    if val:
        ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title(title or f"rotary: {run_dir.name}")
    ax.grid(alpha=0.3)
    if train or val:  # an empty legend is a matplotlib warning on the user's terminal
        ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a line cut by a kill is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the records after ``step`` (steps a resumed run will redo); returns how many."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    records = read_metrics(path)
    keep = [r for r in records if int(r.get("step", 0)) <= step]
    if len(keep) != len(records) or path.read_text(encoding="utf-8").count("\n") != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(records) - len(keep)


def plot_confusion(confusion: list[list[int]], names: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rotary.io import atomic_open

    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.6 * len(names)), dpi=120)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
