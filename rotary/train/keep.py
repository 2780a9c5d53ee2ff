"""The run directory's directory operations: keep-N pruning, ``best/``, and the cleanup of what
killed saves left. Each is atomic the same way: a rename first, then the slow delete or copy, so
a directory named like a checkpoint is complete at every instant."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rotary.checkpoint import BEST, CHECKPOINTS, STEP_DIR, is_complete, list_checkpoints, raise_if_disk_full
from rotary.io import fsync_dir, replace_dir


def clean_partial(run_dir: Path) -> list[Path]:
    """Remove what killed saves left behind (temp directories); restore an interrupted best/ swap."""
    removed = []
    run_dir = Path(run_dir)
    for root in (run_dir / CHECKPOINTS, run_dir):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
                if p.name.startswith(f".old-{BEST}") and not (run_dir / BEST).exists() and is_complete(p):
                    os.replace(p, run_dir / BEST)
                    continue
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints. Each is first renamed to a hidden
    ``.old-*`` name (one atomic step) and only then deleted, so a process killed mid-delete
    leaves trash that ``clean_partial`` removes, never a half-deleted ``step-*`` directory."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    complete = list_checkpoints(run_dir)
    old = complete[:-keep]
    if complete:
        # Incomplete step directories older than every checkpoint kept are debris (left by an
        # older rotary's non-atomic prune): they go too, so nothing under checkpoints/ is broken.
        oldest_kept = complete[-keep:][0][0]
        root = Path(run_dir) / CHECKPOINTS
        old += [(int(m.group(1)), p) for p in root.iterdir()
                if (m := STEP_DIR.match(p.name)) and p.is_dir() and not is_complete(p)
                and int(m.group(1)) < oldest_kept]
    pruned = []
    for _, path in old:
        trash = path.parent / f".old-{path.name}-{os.getpid()}"
        os.replace(path, trash)
        pruned.append(path)
    if pruned:
        fsync_dir(Path(run_dir) / CHECKPOINTS)
    for path in pruned:
        shutil.rmtree(path.parent / f".old-{path.name}-{os.getpid()}", ignore_errors=True)
    return pruned


def publish_best(run_dir: Path, source: Path) -> Path:
    """Make ``best/`` a copy of ``source`` (hard links where possible: files are never rewritten)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".tmp-{BEST}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(source, tmp, copy_function=_link_or_copy)
        return replace_dir(tmp, run_dir / BEST)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous best/ is still in place
        needed = sum(p.stat().st_size for p in Path(source).rglob("*") if p.is_file())
        raise_if_disk_full(err, run_dir / BEST, needed)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
