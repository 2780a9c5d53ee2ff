"""Atomic file writes: a temp name in the same directory, flushed, fsynced, then renamed.

A reader never sees a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it replaces ``path``, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; a plain open() would honour the umask (0644 usually), so
        # weights stay readable by the other users of a shared machine.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (best effort on platforms without O_DIRECTORY)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def apply_umask(directory: str | Path) -> None:
    """Give every file under ``directory`` the mode a plain open() would: safetensors and
    mkstemp create 0600 files, which the other users of a shared machine cannot read."""
    mode = 0o666 & ~_umask()
    for f in Path(directory).rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, mode)


def replace_dir(tmp: str | Path, target: str | Path) -> Path:
    """Move the finished directory ``tmp`` to ``target``; an existing ``target`` is swapped out
    and removed only after the new one is in place (a reader never sees a missing or half dir)."""
    import shutil

    tmp, target = Path(tmp), Path(target)
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)
    return target
