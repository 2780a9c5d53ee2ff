"""A run's setup (tokenizer, shards, model) either completes or leaves the directory as it was.

A failed first ``rotary train`` used to leave ``tokenizer/`` and ``data/`` behind, which the
corrected rerun then reused without a word; ``--overwrite`` deleted the old run before the new
recipe's data had been found. Here the old run is only set aside (``.replaced-run/``) until the
new one is set up, and whatever a failed setup made is removed again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rotary.checkpoint import RUN_ENTRIES
from rotary.errors import RotaryError

REPLACED = ".replaced-run"


class RunSetup:
    """What one setup changed in a run directory, so that a failure can undo it."""

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # rank 0 only: every rank checks, one changes files
        self.made_dir = not self.run_dir.exists()
        self.kept = self._entries()
        self.aside: list[str] = []

    def _entries(self) -> set[str]:
        if not self.run_dir.is_dir():
            return set()
        return {name for name in RUN_ENTRIES if (self.run_dir / name).exists()}

    def set_aside(self) -> None:
        """``--overwrite``: move the previous run's files to ``.replaced-run/`` (not yet deleted)."""
        if not self.enabled:
            return
        aside = self.run_dir / REPLACED
        shutil.rmtree(aside, ignore_errors=True)  # a killed earlier --overwrite's: replaced again
        if not self.kept:
            return
        aside.mkdir()
        for name in sorted(self.kept):
            os.replace(self.run_dir / name, aside / name)
            self.aside.append(name)
        self.kept = set()

    def undo(self) -> None:
        """Remove what this setup made and put the set-aside run back."""
        for name in self._entries() - self.kept:
            path = self.run_dir / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        aside = self.run_dir / REPLACED
        for name in self.aside:
            os.replace(aside / name, self.run_dir / name)
        if self.aside:
            aside.rmdir()
        if self.made_dir and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()

    def entries_without_a_run(self) -> list[str]:
        """What a run's names cover in a directory that holds no run (rank 0 looks)."""
        return sorted(self.kept) if self.enabled else []

    def commit(self) -> None:
        """The new run is set up: the replaced one goes for good. It is renamed to trash first
        (``clean_partial`` removes ``.old-*`` left by a killed delete), so a half-deleted old run
        never blocks the new one."""
        if self.aside:
            trash = self.run_dir / f".old-replaced-run-{os.getpid()}"
            os.replace(self.run_dir / REPLACED, trash)
            shutil.rmtree(trash)
            self.aside = []


@contextmanager
def setting_up(run_dir: Path, *, enabled: bool, overwrite: bool) -> Iterator[RunSetup]:
    """Undo the setup when anything in the block fails (a mistake, Ctrl-C), keep it otherwise."""
    interrupted = Path(run_dir) / REPLACED
    if not overwrite and interrupted.is_dir():  # every rank reads it, so none waits in a barrier
        raise RotaryError(f"an earlier --overwrite was killed before its run was set up: {interrupted} holds the "
                          f"run it replaced: move its files back into {run_dir} to keep that run, or pass "
                          "--overwrite to replace it")
    setup = RunSetup(run_dir, enabled=enabled)
    try:
        yield setup
    except BaseException:
        if enabled:
            setup.undo()
        raise
    if enabled:
        setup.commit()
