"""Loading a run or checkpoint directory: ``rotary.load("runs/x").generate("To be")``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rotary.config import ModelConfig
from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM, RotaryModel, SequenceClassifier


def build_model(config: dict[str, Any], where: str | Path = "config.json") -> RotaryModel:
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
    model_cfg = ModelConfig.from_dict(config["model"])
    task = config.get("task")
    if task == "causal_lm":
        return CausalLM(model_cfg)
    if task == "masked_lm":
        return MaskedLM(model_cfg)
    if task == "classification":
        return SequenceClassifier(model_cfg, int(config["num_labels"]), config.get("pooling", "cls"))
    raise RotaryError(f"unknown task '{task}' in config.json")


def load_model(path: str | Path, device: str | torch.device = "cpu", which: str = "best", *,
               verify: bool = True) -> tuple[RotaryModel, Path]:
    """The model of a run or checkpoint directory, on ``device`` in eval mode, and where it came
    from. ``verify=False`` skips the manifest's sha256 sums (sizes are still checked)."""
    from rotary.train import checkpoint as ckpt

    ckpt_dir = ckpt.resolve_checkpoint(path, which, checksums=verify)
    model = build_model(ckpt.read_json(ckpt_dir / "config.json"), ckpt_dir / "config.json")
    ckpt.load_weights(model, ckpt_dir / "model.safetensors")
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

    def check_generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """RotaryError for anything :meth:`generate` would refuse, before any output; returns the
        encoded prompts."""
        from rotary.generate import check_generation

        check_generation(self.model, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [self.tokenizer.encode(p) for p in prompts]
        for p, ids in zip(prompts, encoded):
            if not ids:
                raise RotaryError(f"prompt {p!r} encodes to no tokens: give at least one character of text")
        cfg = self.model.config
        longest = max(len(ids) for ids in encoded) + max_new_tokens
        if cfg.position == "learned" and longest > cfg.max_seq_len:
            raise RotaryError(f"prompt + max_new_tokens = {longest} tokens, more than the model's "
                              f"{cfg.max_seq_len} learned positions: lower --max-new-tokens")
        return encoded

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
        # checked first: a streamed continuation never stops half-way on a bad setting
        encoded = self.check_generate(prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
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


def load(path: str | Path, device: str = "auto", which: str = "best", *, verify: bool = True) -> Pretrained:
    """Load a run directory (its best checkpoint, else the latest) or a checkpoint directory.

    The checkpoint is checked against its manifest first; ``verify=False`` skips the sha256
    sums (for very large models), sizes are still checked.
    """
    from rotary.tokenizer import load_tokenizer
    from rotary.train import checkpoint as ckpt
    from rotary.train.distributed import pick_device

    model, ckpt_dir = load_model(path, pick_device(device), which, verify=verify)
    config = ckpt.read_json(ckpt_dir / "config.json")
    tok_dir = ckpt_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise RotaryError(f"{ckpt_dir} has no tokenizer/ directory: copy the tokenizer the model was "
                          "trained with into it (a directory with tokenizer.json)")
    return Pretrained(model, load_tokenizer(tok_dir), ckpt_dir, config)
