"""Before the first step: the run directory's state, the checkpoint to resume, the model config.

Everything here only reads: a mistake found here leaves no file behind (``--overwrite`` is the
one exception, and it removes only the previous run's own files).
"""

from __future__ import annotations

from pathlib import Path

from rotary import checkpoint
from rotary.config import to_dict
from rotary.errors import RotaryError
from rotary.model.config import ModelConfig
from rotary.tasks import get_task
from rotary.train.config import TrainConfig


def resolve_model_config(cfg: TrainConfig, vocab_size: int, pad_id: int | None) -> ModelConfig:
    """The recipe's model section, with what the task and tokenizer decide filled in."""
    spec = dict(cfg.model)
    want_causal = get_task(cfg.task).causal
    if "causal" in spec and bool(spec["causal"]) != want_causal:
        raise RotaryError(f"model.causal={spec['causal']} contradicts task={cfg.task}: remove model.causal")
    spec["causal"] = want_causal
    if "vocab_size" not in spec:
        spec["vocab_size"] = vocab_size
    if "pad_token_id" not in spec and pad_id is not None:
        spec["pad_token_id"] = pad_id
    if cfg.dropout is not None:
        spec["dropout"] = cfg.dropout
    model_cfg = ModelConfig.from_dict(spec)
    if model_cfg.vocab_size < vocab_size:
        raise RotaryError(
            f"the data's tokenizer has {vocab_size} tokens but model.vocab_size is "
            f"{model_cfg.vocab_size}: remove model.vocab_size or prepare the data with the model's tokenizer"
        )
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise RotaryError(
            f"seq_len {seq_len} is longer than model.max_seq_len {model_cfg.max_seq_len}: "
            f"lower seq_len or raise model.max_seq_len"
        )
    return model_cfg


def check_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool, remove: bool = True) -> bool:
    """Refuse to mix two runs in one directory; returns whether it already holds a run.

    ``overwrite`` removes the previous run's own files (never anything else in the directory)
    when ``remove`` is true (rank 0 only: every rank checks, one deletes).
    """
    run_dir = cfg.run_dir
    if resume and overwrite:
        raise RotaryError("--resume continues the run in the output directory and --overwrite deletes it: "
                          "pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise RotaryError(f"output directory {run_dir} is a file: choose another --output-dir")
    has_run = (run_dir / "recipe.yaml").exists() or checkpoint.newest_step_dir(run_dir) is not None
    if not has_run:
        if resume:
            raise RotaryError(f"nothing to resume in {run_dir} (no recipe.yaml, no checkpoints): drop --resume "
                              "to start a new run, or point --output-dir at the run to continue")
        return False
    if overwrite:
        if remove:
            import shutil

            for name in checkpoint.RUN_ENTRIES:
                p = run_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        return True
    if not resume:
        raise RotaryError(
            f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to start "
            "over, or --output-dir for a new directory"
        )
    previous = (run_dir / "recipe.yaml")
    if previous.exists():
        from rotary.config import load_yaml

        old = load_yaml(previous)
        for key in ("task", "model"):
            if old.get(key) != to_dict(cfg).get(key):
                raise RotaryError(
                    f"{run_dir} holds a different run ({key} differs from this recipe): use "
                    "--output-dir for a new run or --overwrite to replace it"
                )
    return True


def resume_checkpoint(run_dir: Path, *, verify: bool = True) -> Path | None:
    """The checkpoint a resumed run continues from: the newest step, checked against its
    manifest. A damaged newest step is an error naming it (never a silent older one)."""
    newest = checkpoint.newest_step_dir(run_dir)
    if newest is None:
        return None
    try:
        return checkpoint.check_complete(newest, checksums=verify)
    except RotaryError as err:
        older = [p for _, p in checkpoint.list_checkpoints(run_dir) if p != newest]
        hint = (f"; to resume from {older[-1].name} instead, move {newest} away" if older else "")
        raise RotaryError(f"cannot resume: {err}{hint}") from None
