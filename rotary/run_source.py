"""Starting from a trained run: the one place that opens a run or checkpoint directory to take
its weights, tokenizer and model config from. ``rotary.load`` (generate, serve, classify, ...),
``convert``, ``init_from`` (continued training), ``finetune --from`` and task-adaptive
pretraining all come through :func:`open_run`, so each refuses the same things in the same words
(a transformers checkpoint that needs converting, a damaged or incomplete checkpoint, a missing
tokenizer) and ``--no-verify`` means the same everywhere: no sha256 sums, sizes still checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rotary.checkpoint import load_weights, read_json, resolve_checkpoint
from rotary.errors import RotaryError


@dataclass(frozen=True)
class RunSource:
    """A checkpoint to start from: its directory and its ``config.json``."""

    path: Path
    config: dict[str, Any]

    @property
    def task(self) -> str | None:
        return self.config.get("task")

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    def model_spec(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The model section of its config, with ``overrides`` laid over it."""
        if not isinstance(self.config.get("model"), dict):
            raise RotaryError(f"{self.path / 'config.json'} has no 'model' section: the checkpoint is damaged")
        return {**self.config["model"], **(overrides or {})}

    def load(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Its model with its weights, on ``device``, in eval mode."""
        model = build_model(self.config, self.path / "config.json")
        load_weights(model, self.weights)
        return model.to(device).eval()

    def tokenizer_dir(self, purpose: str) -> Path:
        """Its tokenizer/, which ``purpose`` (e.g. "fine-tuning") needs: an error without one."""
        tok = self.path / "tokenizer"
        if not tok.is_dir():
            raise RotaryError(f"{self.path} has no tokenizer/: {purpose} needs the tokenizer the model was trained "
                              "with (copy it in as tokenizer/, a directory with tokenizer.json)")
        return tok


def open_run(path: str | Path, which: str = "best", *, verify: bool = True) -> RunSource:
    """The checkpoint ``path`` means (a run directory: its best/, else its newest step; or a
    checkpoint directory), checked against its manifest (``verify=False``: sizes only)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model_type = read_json(path / "config.json").get("model_type")
        if model_type not in (None, "rotary"):
            raise RotaryError(f"{path} is a transformers checkpoint ({model_type}): convert it first with "
                              f"`rotary convert {path} --from-hf OUT`, then give OUT")
    ckpt_dir = resolve_checkpoint(path, which, checksums=verify)
    return RunSource(ckpt_dir, read_json(ckpt_dir / "config.json"))


def build_model(config: dict[str, Any], where: str | Path = "config.json") -> torch.nn.Module:
    """The model a checkpoint's config.json describes, with fresh weights."""
    if config.get("model_type") != "rotary":
        if config.get("model_type"):
            raise RotaryError(f"{where} is a transformers checkpoint (model_type "
                              f"{config['model_type']!r}), not a rotary one: convert it first with "
                              f"`rotary convert DIR --from-hf OUT`")
        raise RotaryError(f"{where} is not a rotary checkpoint config (no model_type 'rotary'): "
                          "give a run directory or a checkpoint that rotary wrote")
    if not isinstance(config.get("model"), dict):
        raise RotaryError(f"{where} has no 'model' section: the checkpoint is damaged")
    from rotary.model.config import ModelConfig
    from rotary.tasks import TASKS, head_settings

    task = TASKS.get(config.get("task"))
    if task is None:
        raise RotaryError(f"unknown task {config.get('task')!r} in {where} (rotary knows {', '.join(TASKS)})")
    return task.build_model(ModelConfig.from_dict(config["model"]), head_settings(task, config))


def load_model(path: str | Path, device: str | torch.device = "cpu", which: str = "best", *,
               verify: bool = True) -> tuple[torch.nn.Module, Path]:
    """The model of a run or checkpoint directory, on ``device`` in eval mode, and where it came
    from. ``verify=False`` skips the manifest's sha256 sums (sizes are still checked)."""
    source = open_run(path, which, verify=verify)
    return source.load(device), source.path
