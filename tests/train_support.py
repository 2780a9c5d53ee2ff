"""Shared pieces of the training tests: a small real-text corpus and recipe factories."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from rotary.train.config import TrainConfig, load_recipe

LINES = [
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.",
    "Sometime too hot the eye of heaven shines, and often is his gold complexion dimm'd;",
    "And every fair from fair sometime declines, by chance or nature's changing course untrimm'd;",
    "But thy eternal summer shall not fade, nor lose possession of that fair thou ow'st;",
    "Nor shall Death brag thou wander'st in his shade, when in eternal lines to time thou grow'st:",
    "So long as men can breathe or eyes can see, so long lives this, and this gives life to thee.",
]


def write_corpus(directory: Path, n_docs: int = 60) -> Path:
    """A directory of small text documents (one per file) with some variety between them."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = [LINES[(i + j) % len(LINES)] for j in range(5 + i % 3)]
        (directory / f"doc{i:03d}.txt").write_text(f"Sonnet {i}.\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return directory


def make_recipe(run_dir: Path, corpus: Path | None = None, shards: Path | None = None,
                tokenizer: Path | None = None, *, tokenizer_kind: str = "bpe", task: str = "causal_lm",
                model: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    data: dict[str, Any] = {"val_fraction": 0.2}
    if shards is not None:
        data["shards"] = str(shards)
    else:
        data["corpus"] = str(corpus)
    data["tokenizer"] = {"path": str(tokenizer)} if tokenizer is not None else {
        "kind": tokenizer_kind, "vocab_size": 300 if tokenizer_kind == "bpe" else 200}
    recipe: dict[str, Any] = {
        "name": "test", "task": task, "output_dir": str(run_dir),
        "model": model or {"preset": "tiny", "max_seq_len": 32},
        "data": data, "seq_len": 32, "batch_size": 4, "max_steps": 4, "lr": 3e-3, "warmup_steps": 1,
        "eval_interval": 2, "eval_batches": 2, "checkpoint_interval": 2, "log_interval": 1,
        "progress": False, "tensorboard": True, "threads": 1,
    }
    recipe.update(overrides)
    return load_recipe(None, recipe)


def train_losses(run_dir: Path) -> dict[int, float]:
    """Training loss per step from a run's metrics.jsonl."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def train_interrupted_at(cfg: TrainConfig, step: int, monkeypatch):
    """Train ``cfg`` with a Ctrl-C arriving during ``step``: the trainer finishes the step, saves
    and stops. Returns the TrainResult."""
    from rotary.train.logging import RunLogger
    from rotary.train.loop import train

    real = RunLogger.progress

    def progress(self, at, postfix):
        real(self, at, postfix)
        if at == step:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunLogger, "progress", progress)
    try:
        return train(cfg)
    finally:
        monkeypatch.setattr(RunLogger, "progress", real)


def write_shards(out: Path, tokenizer_dir: Path, train: Any, val: Any, vocab_size: int) -> Path:
    """Prepared shards holding exactly ``train`` and ``val`` (numpy id arrays), for the tokenizer
    in ``tokenizer_dir``: ids equal to their positions show where each window came from."""
    import numpy as np

    from rotary.data.shards import PREPARE_FORMAT_VERSION
    from rotary.tokenizer import load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(train.dtype).name
    splits = {}
    for split, tokens in (("train", train), ("val", val)):
        np.asarray(tokens, dtype=dtype).tofile(out / f"{split}.bin")
        splits[split] = {"tokens": len(tokens), "bytes": 4 * len(tokens), "documents": 1, "characters": len(tokens)}
    meta = {"version": PREPARE_FORMAT_VERSION, "dtype": dtype, "vocab_size": vocab_size, "splits": splits,
            "tokenizer_hash": load_tokenizer(tokenizer_dir).hash, "word_starts": False, "source": "synthetic"}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
