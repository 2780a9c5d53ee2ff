"""Checkpoints: atomic directories, keep-last-N plus ``best/``, and exact-resume state.

A checkpoint directory is a complete run directory that HF users recognise::

    config.json           model config, task, head settings, rotary version
    model.safetensors     weights (never pickled)
    tokenizer/            the tokenizer the model was trained with
    training_state.pt     optimiser, grad scaler and RNG state (tensors only: weights_only=True)
    trainer_state.json    step, data position, best metric, early-stopping counter

It is written under a temporary name and renamed into place, so a directory named
``step-NNNNNNN`` is always complete; a killed save leaves only a ``.tmp-*`` directory that the
next run removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rotary.errors import RotaryError
from rotary.io import atomic_write_text, fsync_dir

STEP_DIR = re.compile(r"^step-(\d{7,})$")
CHECKPOINTS = "checkpoints"
BEST = "best"
REQUIRED_FILES = ("config.json", "model.safetensors", "trainer_state.json")


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes (nanoGPT #325)."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.replace(prefix, "")
        out[key] = value
    return out


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, tied weights stored once (safetensors refuses shared storage)."""
    state = _strip_wrappers(model.state_dict())
    seen: dict[int, str] = {}
    out = {}
    for key, t in state.items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            continue  # a tied weight: restored by the tie when loading
        seen[ptr] = key
        out[key] = t.detach().to("cpu").contiguous()
    return out


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights; missing keys are allowed only where weights are tied."""
    state = _strip_wrappers(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_keys(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RotaryError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _tied_keys(model: torch.nn.Module) -> set[str]:
    by_ptr: dict[int, list[str]] = {}
    for key, t in model.state_dict().items():
        by_ptr.setdefault(t.data_ptr(), []).append(key)
    return {k for keys in by_ptr.values() if len(keys) > 1 for k in keys}


@dataclass
class CheckpointContent:
    """Everything that goes into one checkpoint directory."""

    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]
    training_state: dict[str, Any] | None = None  # optimiser etc.; absent in exported models
    tokenizer_dir: Path | None = None


def write_checkpoint_dir(target: Path, content: CheckpointContent) -> Path:
    """Write ``content`` to ``target`` atomically: a temp directory, fsynced, then renamed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        atomic_write_text(tmp / "config.json", json.dumps(content.config, indent=2, ensure_ascii=False))
        save_file(content.model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if content.training_state is not None:
            torch.save(content.training_state, tmp / "training_state.pt")
        if content.tokenizer_dir is not None and Path(content.tokenizer_dir).is_dir():
            shutil.copytree(content.tokenizer_dir, tmp / "tokenizer")
        # trainer_state.json last: its presence marks the content as whole.
        atomic_write_text(tmp / "trainer_state.json", json.dumps(content.trainer_state, indent=2))
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if target.exists():  # re-saving the same step (e.g. after a resume): replace it
            old = target.parent / f".old-{target.name}-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


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


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def publish_best(run_dir: Path, source: Path) -> Path:
    """Make ``best/`` a copy of ``source`` (hard links where possible: files are never rewritten)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".tmp-{BEST}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    best = run_dir / BEST
    if best.exists():
        old = run_dir / f".old-{BEST}-{os.getpid()}"
        os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, best)
    fsync_dir(run_dir)
    return best


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RotaryError(f"missing file: {path}") from None
    except json.JSONDecodeError as err:
        raise RotaryError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def load_training_state(path: Path) -> dict[str, Any]:
    """Optimiser/RNG state, loaded without unpickling code (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RotaryError(f"missing file: {path}") from None
    except Exception as err:  # UnpicklingError for pickled code, among others
        raise RotaryError(
            f"refusing to load {path}: it is not a plain tensor checkpoint ({type(err).__name__}); "
            "only load checkpoints you trust"
        ) from None
