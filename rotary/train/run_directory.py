"""The run directory as the training loop sees it: one object owns the checkpoint protocol.

Resume (weights before the model is wrapped, optimiser, scaler and RNG after), save (every
rank's state gathered, rank 0 writes ``checkpoints/step-N`` atomically, keep-N prunes), best/
(published after the save that beat it, repaired on resume when a full disk stopped that), and
the records a resumed run must not duplicate (``recipe.yaml``, ``metrics.jsonl``). The loop calls
it; ``rotary.checkpoint`` holds the file formats and their atomic writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rotary import __version__
from rotary import checkpoint as ckpt
from rotary.config import save_yaml, to_dict
from rotary.errors import RotaryError
from rotary.train.config import TrainConfig
from rotary.train.distributed import DistInfo, barrier
from rotary.train.keep import prune_checkpoints, publish_best
from rotary.train.logging import truncate_metrics
from rotary.train.metrics import LogWindow
from rotary.train.state import full_state_dicts, gather_rng, load_optimizer_state


@dataclass
class Progress:
    """What the loop carries from step to step and a checkpoint keeps: the step, the best value
    of best_metric so far, evaluations without improvement, the best and last evaluations, and
    the open log window (so the first line after a resume averages the same steps)."""

    step: int = 0
    best_value: float | None = None
    bad_evals: int = 0
    best_eval: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    window: LogWindow = field(default_factory=LogWindow)

    @classmethod
    def from_saved(cls, saved: dict[str, Any], best_metric: str) -> Progress:
        best_value = saved.get("best_value", saved.get("best_val_loss"))  # older checkpoints: the loss
        bad_evals = int(saved.get("evals_without_improvement", 0))
        if saved.get("best_metric", "loss") != best_metric:  # another metric's best: start afresh
            best_value, bad_evals = None, 0
        return cls(saved["step"], best_value, bad_evals, saved.get("best_eval", {}), saved.get("last_eval", {}),
                   LogWindow(saved.get("log_window")))

    def record_eval(self, metrics: dict[str, Any], cfg: TrainConfig) -> tuple[bool, bool]:
        """Note an evaluation at this step: (it is the best so far, early stopping is due)."""
        self.last_eval = metrics
        value = metrics[cfg.best_metric]
        if math.isfinite(value) and cfg.better(value, self.best_value):
            self.best_value, self.bad_evals = value, 0
            self.best_eval = {**metrics, "step": self.step}
            return True, False
        self.bad_evals += 1
        return False, cfg.early_stopping_patience is not None and self.bad_evals >= cfg.early_stopping_patience


@dataclass
class Training:
    """The objects a training step uses: the (wrapped) model, the function that runs it (the
    compiled model, or the model itself), the optimiser, the fp16 grad scaler, the precision
    and what was compiled."""

    model: nn.Module
    forward: Any
    optimizer: Any
    scaler: Any
    precision: str
    compiled: str  # none, blocks or model


class RunDirectory:
    """``cfg.run_dir`` for one run of ``fit``: resume from a checkpoint, save one, publish best/."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, task: str, raw_model: nn.Module, *, head: dict[str, Any],
                 tokenizer_dir: Path | None, accum: int, tokens_per_step: int) -> None:
        self.cfg, self.info, self.task, self.raw_model = cfg, info, task, raw_model
        self.path = cfg.run_dir
        self.head, self.tokenizer_dir = head, tokenizer_dir
        self.accum, self.tokens_per_step = accum, tokens_per_step
        self.global_rows = cfg.batch_size * info.world_size * accum

    # -- resume -----------------------------------------------------------------------------
    def load_weights(self, latest: Path | None) -> Progress:
        """Load ``latest``'s weights into the unwrapped model; its progress (step 0 when None)."""
        if latest is None:
            return Progress()
        ckpt.load_weights(self.raw_model, latest / "model.safetensors")
        saved = ckpt.read_trainer_state(latest / "trainer_state.json")
        if saved.get("global_rows", self.global_rows) != self.global_rows:
            raise RotaryError(
                f"{latest} was trained with {saved['global_rows']} sequences per step, this run has "
                f"{self.global_rows}: keep batch_size x processes x grad_accum_steps the same to resume")
        return Progress.from_saved(saved, self.cfg.best_metric)

    def load_training_state(self, training: Training, latest: Path | None) -> dict[str, Any] | None:
        """Optimiser and scaler from ``latest``; returns this rank's RNG state to set last."""
        if latest is None:
            return None
        state = ckpt.load_training_state(latest / "training_state.pt")
        load_optimizer_state(training.model, training.optimizer, state["optimizer"], self.cfg.distributed, self.info)
        if training.scaler is not None and "scaler" in state:
            training.scaler.load_state_dict(state["scaler"])
        return state.get("rng", {}).get(str(self.info.rank))

    def begin(self, start_step: int) -> None:
        """The recipe as run, and metrics.jsonl cut back to the checkpoint (its later steps are redone)."""
        if self.info.is_main:
            save_yaml(to_dict(self.cfg), self.path / "recipe.yaml")
            truncate_metrics(self.path, start_step)

    def repair_best(self, latest: Path, progress: Progress) -> bool:
        """Publish ``latest`` as best/ when it was the best evaluation and best/ does not hold it
        (the save succeeded, then publishing failed: a full disk). True when it did."""
        best = self.path / ckpt.BEST
        if not self.info.is_main or progress.best_eval.get("step") != progress.step:
            return False
        if ckpt.is_complete(best) and ckpt.read_json(best / "trainer_state.json").get("step") == progress.step:
            return False
        publish_best(self.path, latest)
        return True

    # -- save -------------------------------------------------------------------------------
    def save(self, training: Training, progress: Progress, *, best: bool) -> Path | None:
        """Checkpoint the current step (a collective: every rank calls it; rank 0 writes, prunes to
        keep_checkpoints and, with ``best``, publishes it as best/). The path on rank 0."""
        cfg, info = self.cfg, self.info
        model_sd, optim_sd = full_state_dicts(training.model, training.optimizer, cfg.distributed, info)
        rng_all = gather_rng(info)  # every rank's, so each resumes its own dropout stream
        if not info.is_main:
            barrier(info)
            return None
        if cfg.distributed == "fsdp" and info.enabled:
            weights = {k: v.contiguous() for k, v in ckpt.strip_wrappers(model_sd).items()}
            if self.raw_model.config.tie_embeddings:  # stored once, as in unsharded checkpoints
                weights.pop("lm_head.weight", None)
        else:
            weights = ckpt.model_state_for_saving(self.raw_model)
        training_state: dict[str, Any] = {"optimizer": optim_sd, "rng": rng_all}
        if training.scaler is not None:
            training_state["scaler"] = training.scaler.state_dict()
        step = progress.step
        content = ckpt.CheckpointContent(
            config=ckpt.checkpoint_config(self.task, self.raw_model.config, self.head),
            model_state=weights,
            trainer_state={
                "step": step, "tokens_seen": step * self.tokens_per_step, "micro_batches": step * self.accum,
                "grad_accum_steps": self.accum, "global_rows": self.global_rows,
                "best_metric": cfg.best_metric, "best_value": progress.best_value,
                "evals_without_improvement": progress.bad_evals, "best_eval": progress.best_eval,
                "last_eval": progress.last_eval, "seed": cfg.seed, "rotary_version": __version__,
                "log_window": progress.window.state(),
            },
            training_state=training_state,
            tokenizer_dir=self.tokenizer_dir,
        )
        path = ckpt.write_checkpoint_dir(self.path / ckpt.CHECKPOINTS / ckpt.step_dir_name(step), content)
        prune_checkpoints(self.path, cfg.keep_checkpoints)
        barrier(info)
        if best:
            publish_best(self.path, path)
        return path


def checkpoint_due(cfg: TrainConfig, step: int) -> bool:
    return step % cfg.checkpoint_interval == 0 or step == cfg.max_steps


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
