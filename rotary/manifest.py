"""A checkpoint's manifest: the size and sha256 of every file, written last, checked on load.

A checkpoint damaged after it was saved (a truncated copy, an edited file, a file from another
run) is named on load, with what to do, instead of failing deep inside safetensors or
torch.load.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from rotary.errors import RotaryError, RotaryWarning
from rotary.io import atomic_write_text

MANIFEST = "manifest.json"
# Files that using a model (generate, convert, eval) never reads: a damaged one only blocks a resume.
RESUME_ONLY = frozenset({"training_state.pt", "trainer_state.json"})

OTHER_CHECKPOINT_HINT = ("restore it from a copy, or use another checkpoint (delete or move this one "
                          "to resume from the previous step)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_files(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(ckpt_dir: Path) -> None:
    """Record the size and sha256 of every file of ``ckpt_dir`` (last: it seals the content)."""
    ckpt_dir = Path(ckpt_dir)
    files = {p.relative_to(ckpt_dir).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _manifest_files(ckpt_dir)}
    atomic_write_text(ckpt_dir / MANIFEST, json.dumps({"format": 1, "files": files}, indent=2))


def verify_checkpoint(ckpt_dir: Path, *, checksums: bool = True, for_resume: bool = True) -> None:
    """Check ``ckpt_dir`` against its manifest: every file present, of its size and (unless
    ``checksums`` is False, for very large models) of its sha256. A damaged file is a
    RotaryError naming it; a checkpoint from before manifests is loaded with a warning.
    ``for_resume=False`` checks only what using the model reads (not the optimiser state)."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        warnings.warn(f"{ckpt_dir} has no {MANIFEST} (written by an older rotary, or removed): "
                      "its files are not verified", RotaryWarning, stacklevel=2)
        return
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RotaryError(f"{path} is damaged (not a rotary manifest): {OTHER_CHECKPOINT_HINT}") from None
    for name, size, digest in entries:
        if not for_resume and name in RESUME_ONLY:
            continue
        f = ckpt_dir / name
        if not f.is_file():
            raise RotaryError(f"checkpoint {ckpt_dir} is incomplete: {name} is missing; {OTHER_CHECKPOINT_HINT}")
        actual = f.stat().st_size
        if actual != size:
            what = "truncated" if actual < size else "longer than written"
            raise RotaryError(f"checkpoint {ckpt_dir} is damaged: {name} is {actual:,} bytes, {size:,} when "
                              f"saved ({what}); {OTHER_CHECKPOINT_HINT}")
        if checksums and _sha256(f) != digest:
            raise RotaryError(f"checkpoint {ckpt_dir} is damaged: {name} was altered after saving (sha256 "
                              f"differs from {MANIFEST}); {OTHER_CHECKPOINT_HINT}")
