"""The run directory, rotary's one interchange format: checkpoints, keep-last-N, ``best/``.

A checkpoint directory is a complete run directory that HF users recognise::

    config.json           model config, task, head settings, rotary version
    model.safetensors     weights (never pickled)
    tokenizer/            the tokenizer the model was trained with
    training_state.pt     optimiser, grad scaler and RNG state (tensors only: weights_only=True)
    trainer_state.json    step, data position, best metric, early-stopping counter
    manifest.json         size and sha256 of every other file, written last

It is written under a temporary name and renamed into place, so a directory named
``step-NNNNNNN`` is always complete; a killed save leaves only a ``.tmp-*`` directory that the
next run removes. A checkpoint damaged later (a truncated copy, an edited file) is caught on
load by the manifest (``rotary.manifest``). ``train`` writes run directories; ``generate``,
``convert`` and ``rotary.load`` read them through this module alone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rotary import __version__
from rotary.errors import RotaryError
from rotary.io import apply_umask, atomic_write_text, fsync_dir, replace_dir
from rotary.manifest import (
    MANIFEST,
    OTHER_CHECKPOINT_HINT,
    RESUME_ONLY,
    verify_checkpoint,
    write_manifest,
)

STEP_DIR = re.compile(r"^step-(\d{7,})$")
CHECKPOINTS = "checkpoints"
BEST = "best"
REQUIRED_FILES = ("config.json", "model.safetensors", "trainer_state.json")
# Every file a checkpoint or run directory may hold: what `--overwrite` may replace.
CHECKPOINT_ENTRIES = frozenset({*REQUIRED_FILES, "training_state.pt", "tokenizer", MANIFEST})
RUN_ENTRIES = frozenset({"recipe.yaml", CHECKPOINTS, BEST, "metrics.jsonl", "train.log", "tensorboard",
                         "data", "tokenizer", ".tokenizer-partial", "loss.png", "demo_results.json", "eval.json"})


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes (nanoGPT #325)."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.replace(prefix, "")
        out[key] = value
    return out


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, tied weights stored once (safetensors refuses shared storage)."""
    state = strip_wrappers(model.state_dict())
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
    path = Path(path)
    if not path.is_file():
        raise RotaryError(f"missing file: {path}")
    try:
        state = strip_wrappers(load_file(str(path)))
    except Exception as err:  # SafetensorError (truncated, not safetensors) has no public class
        raise RotaryError(
            f"{path} is damaged or not a safetensors file ({str(err).splitlines()[0]}): "
            f"{OTHER_CHECKPOINT_HINT}"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: weights of another model
        detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), "")
        raise RotaryError(f"{path} holds the weights of another model ({detail[:160]}); "
                          f"{OTHER_CHECKPOINT_HINT}") from None
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
        if content.tokenizer_dir is not None:
            if not Path(content.tokenizer_dir).is_dir():  # a checkpoint without it could not be used
                raise RotaryError(f"the tokenizer to save with {target.name} is gone: {content.tokenizer_dir}")
            shutil.copytree(content.tokenizer_dir, tmp / "tokenizer")
        atomic_write_text(tmp / "trainer_state.json", json.dumps(content.trainer_state, indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        write_manifest(tmp)
        apply_umask(tmp)
        fsync_dir(tmp)
        replace_dir(tmp, target)  # re-saving the same step (e.g. after a resume) replaces it
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(err, target, content_bytes(content))
        raise
    return target


def content_bytes(content: CheckpointContent) -> int:
    """About how many bytes ``content`` takes on disk: its tensors, the tokenizer, JSON slack."""
    def tensors(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(tensors(v) for v in obj)
        return 0

    tok = Path(content.tokenizer_dir) if content.tokenizer_dir is not None else None
    tok_bytes = sum(p.stat().st_size for p in tok.rglob("*") if p.is_file()) if tok and tok.is_dir() else 0
    return tensors(content.model_state) + tensors(content.training_state) + tok_bytes + (64 << 10)


def _is_disk_full(err: BaseException) -> bool:
    # safetensors and torch.save do not raise OSError on a full disk (SafetensorError "... os
    # error 28", RuntimeError "unexpected pos"): the errno, else the words, else the free space.
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def raise_if_disk_full(err: BaseException, target: Path, needed: int) -> None:
    """A one-line RotaryError for a write that failed for want of space (the failed write's own
    files are already removed, so the free space is what the next try will find)."""
    if not isinstance(err, Exception):
        return  # KeyboardInterrupt, SystemExit: not a disk problem
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return
    if _is_disk_full(err) or free < needed:
        raise RotaryError(
            f"no space left to write {target}: it needs about {needed / 1e6:,.1f} MB and "
            f"{free / 1e6:,.1f} MB are free there; the earlier checkpoints are untouched: free some space "
            f"(or lower keep_checkpoints), then rerun with --resume") from err


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


def newest_step_dir(run_dir: Path) -> Path | None:
    """The newest ``step-*`` directory, complete or not: never silently skip a broken one."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def check_complete(ckpt_dir: Path, *, verify: bool = True, checksums: bool = True,
                   for_resume: bool = True) -> Path:
    """``ckpt_dir`` if it holds a whole checkpoint (and matches its manifest), else a RotaryError
    that names what is missing or damaged. ``for_resume=False``: only what using the model needs."""
    ckpt_dir = Path(ckpt_dir)
    needed = REQUIRED_FILES if for_resume else tuple(f for f in REQUIRED_FILES if f not in RESUME_ONLY)
    missing = [f for f in needed if not (ckpt_dir / f).is_file()]
    if missing:
        raise RotaryError(f"checkpoint {ckpt_dir} is incomplete: {', '.join(missing)} missing; "
                          f"{OTHER_CHECKPOINT_HINT}")
    if verify:
        verify_checkpoint(ckpt_dir, checksums=checksums, for_resume=for_resume)
    return ckpt_dir


def resolve_checkpoint(path: str | Path, which: str = "best", *, verify: bool = True,
                       checksums: bool = True, for_resume: bool = False) -> Path:
    """The checkpoint directory ``path`` means: itself, or in a run directory ``best/`` (when
    ``which`` is "best" and it exists) else the newest step. A broken candidate is an error
    naming it, never a silent fall back to an older one."""
    path = Path(path)
    if not path.exists():
        raise RotaryError(f"no such run or checkpoint directory: {path}")
    if not path.is_dir():
        raise RotaryError(f"{path} is a file: give a run directory or a checkpoint directory")
    opts = {"verify": verify, "checksums": checksums, "for_resume": for_resume}
    if any((path / f).exists() for f in (*REQUIRED_FILES, MANIFEST)):  # a checkpoint itself
        return check_complete(path, **opts)
    if which == "best" and (path / BEST).exists():
        return check_complete(path / BEST, **opts)
    newest = newest_step_dir(path)
    if newest is None:
        raise RotaryError(f"{path} holds no checkpoint (config.json + model.safetensors, or "
                          f"{CHECKPOINTS}/step-*): train first, or give a checkpoint directory")
    return check_complete(newest, **opts)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a one-line error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RotaryError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" ({err.msg} at line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise RotaryError(f"{path} is not valid JSON{where}: {OTHER_CHECKPOINT_HINT}") from None
    if not isinstance(data, dict):
        raise RotaryError(f"{path} holds a JSON {type(data).__name__}, not an object: {OTHER_CHECKPOINT_HINT}")
    return data


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json``: where a run stands (its step, at least)."""
    state = read_json(path)
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise RotaryError(f"{path} has no valid 'step' (found {step!r}): it is not a rotary trainer state; "
                          f"{OTHER_CHECKPOINT_HINT}")
    return state


def load_training_state(path: Path) -> dict[str, Any]:
    """Optimiser/RNG state, loaded without unpickling code (weights_only=True)."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise RotaryError(f"missing file: {path}: the checkpoint cannot resume training; "
                          f"{OTHER_CHECKPOINT_HINT}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no directory
        raise RotaryError(f"{path} is damaged (truncated or not written by torch.save): "
                          f"{OTHER_CHECKPOINT_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses code: a pickle of another kind
        raise RotaryError(
            f"refusing to load {path}: it holds Python objects, not plain tensors "
            f"({str(err).splitlines()[0][:120]}); only load checkpoints you trust"
        ) from None
    except Exception as err:  # a damaged archive
        raise RotaryError(f"{path} is damaged ({type(err).__name__}): {OTHER_CHECKPOINT_HINT}") from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise RotaryError(f"{path} is not a rotary training state (no optimizer state): {OTHER_CHECKPOINT_HINT}")
    return state



def checkpoint_config(task: str, model_cfg: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory: enough to rebuild the model."""
    return {"model_type": "rotary", "rotary_version": __version__, "task": task,
            "model": model_cfg.to_dict(), **(extra or {})}
