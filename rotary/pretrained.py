"""Loading a run or checkpoint directory: ``rotary.load("runs/x").generate("To be")``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rotary.config import ModelConfig
from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM, RotaryModel, SequenceClassifier


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory from a run directory (``best/``, else the latest step) or itself."""
    from rotary.train import checkpoint as ckpt

    path = Path(path)
    if not path.exists():
        raise RotaryError(f"no such run or checkpoint directory: {path}")
    if ckpt.is_complete(path):
        return path
    if which == "best" and ckpt.is_complete(path / ckpt.BEST):
        return path / ckpt.BEST
    latest = ckpt.latest_checkpoint(path)
    if latest is None:
        raise RotaryError(f"{path} holds no complete checkpoint (config.json + model.safetensors): train first")
    return latest


def build_model(config: dict[str, Any]) -> RotaryModel:
    """The model a checkpoint's config.json describes, with fresh weights."""
    if config.get("model_type") != "rotary":
        raise RotaryError("config.json is not a rotary checkpoint (model_type != rotary); "
                          "for a transformers checkpoint use `rotary convert --from-hf`")
    model_cfg = ModelConfig.from_dict(config["model"])
    task = config.get("task")
    if task == "causal_lm":
        return CausalLM(model_cfg)
    if task == "masked_lm":
        return MaskedLM(model_cfg)
    if task == "classification":
        return SequenceClassifier(model_cfg, int(config["num_labels"]), config.get("pooling", "cls"))
    raise RotaryError(f"unknown task '{task}' in config.json")


def load_model(path: str | Path, device: str | torch.device = "cpu", which: str = "best") -> tuple[RotaryModel, Path]:
    from rotary.train.checkpoint import load_weights

    ckpt_dir = resolve_checkpoint(path, which)
    try:
        config = json.loads((ckpt_dir / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RotaryError(f"{ckpt_dir / 'config.json'} is not valid JSON: {err.msg}") from None
    model = build_model(config)
    load_weights(model, ckpt_dir / "model.safetensors")
    return model.to(device).eval(), ckpt_dir


class Pretrained:
    """A trained model with its tokenizer, ready to use."""

    def __init__(self, model: RotaryModel, tokenizer: Any, path: Path, config: dict[str, Any]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.config = config

    @property
    def task(self) -> str:
        return self.config.get("task", "")

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        stream: bool = False,
    ) -> str | list[str]:
        """Continue ``prompt`` (or each of a list of prompts); returns the continuation text."""
        from rotary.generate import generate

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [self.tokenizer.encode(p) for p in prompts]
        eos = self.tokenizer.eos_id if stop_at_eos else None
        on_tokens = None
        if stream and len(prompts) == 1:
            emitted: list[int] = []
            printed = [""]

            def on_tokens(ids: torch.Tensor) -> None:
                emitted.append(int(ids[0]))
                text = self.tokenizer.decode(emitted)
                if not text.endswith("\ufffd"):  # wait for a multi-byte character to complete
                    sys.stdout.write(text[len(printed[0]):])
                    sys.stdout.flush()
                    printed[0] = text

        rows = generate(self.model, encoded, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, eos_id=eos, pad_id=self.tokenizer.pad_id, seed=seed,
                        on_tokens=on_tokens)
        texts = [self.tokenizer.decode([t for t in r if t != eos]) for r in rows]
        return texts[0] if isinstance(prompt, str) else texts


def load(path: str | Path, device: str = "auto", which: str = "best") -> Pretrained:
    """Load a run directory (its best checkpoint, else the latest) or a checkpoint directory."""
    from rotary.tokenizer import load_tokenizer
    from rotary.train.distributed import pick_device

    model, ckpt_dir = load_model(path, pick_device(device), which)
    config = json.loads((ckpt_dir / "config.json").read_text(encoding="utf-8"))
    tok_dir = ckpt_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise RotaryError(f"{ckpt_dir} has no tokenizer/ directory")
    return Pretrained(model, load_tokenizer(tok_dir), ckpt_dir, config)
