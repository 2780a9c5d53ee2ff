"""rotary: train and use Transformers with Rotary Position Embeddings (RoPE).

The public names are imported on first use (PEP 562): ``import rotary`` and the ``rotary``
command's help, usage errors and ``--version`` do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public API, pinned: scripts (experiments/, users' own) use only these names and the
# submodules rotary.hf and rotary.baselines; everything else may move. Public name -> the module that defines it.
_LAZY = {
    # models
    "ModelConfig": "rotary.model.config",
    "PRESETS": "rotary.model.presets",
    "get_preset": "rotary.model.presets",
    "CausalLM": "rotary.model",
    "MaskedLM": "rotary.model",
    "SequenceClassifier": "rotary.model",
    "Seq2SeqLM": "rotary.model",
    "KVCache": "rotary.model",
    # data
    "load_corpus": "rotary.data.sources",
    "load_labelled": "rotary.data.sources",
    "train_tokenizer": "rotary.tokenizer",
    "load_tokenizer": "rotary.tokenizer",
    "prepare": "rotary.data.prepare",
    # training
    "TrainConfig": "rotary.train.config",
    "load_recipe": "rotary.train.config",
    "train_model": "rotary.train.loop",  # rotary.train is the package
    "TrainResult": "rotary.train.loop",
    "finetune_model": "rotary.train.finetune",  # what `rotary finetune` runs
    "finetune_defaults": "rotary.train.finetune",
    "Task": "rotary.tasks",
    "register_task": "rotary.tasks",
    "get_task": "rotary.tasks",
    # use
    "load": "rotary.infer.pretrained",
    "Pretrained": "rotary.infer.pretrained",
    "SamplingParams": "rotary.infer.sampling",
    "generate": "rotary.infer.generate",
    "create_app": "rotary.infer.serve",  # the FastAPI app of rotary serve, to mount or test in-process
    # evaluation: what rotary eval and the demo compute, for studies
    "causal_documents_metrics": "rotary.evaluation",
    "masked_lm_metrics": "rotary.evaluation",
    "seq2seq_metrics": "rotary.evaluation",
    "assistant_token_metrics": "rotary.evaluation",
    "run_eval": "rotary.evaluation.runs",  # what `rotary eval` runs
    "load_conversations": "rotary.data.sources.conversations",
    "load_parallel": "rotary.data.parallel",
    "apply_rope": "rotary.model.rope",
    # the machine and files, for records that say where they were measured and are never half-written
    "cpu_model": "rotary.device",
    "atomic_write_text": "rotary.io",
    "atomic_open": "rotary.io",
    "RotaryError": "rotary.errors",
}
_ALIASES = {"train_model": "train", "finetune_model": "finetune"}
# submodules reachable as attributes (``rotary.hf.to_hf``) without importing them first
_SUBMODULES = ("hf", "model", "ops", "data", "train", "tokenizer", "infer", "config",
               "evaluation", "chat", "device", "checkpoint", "tasks", "errors", "demo", "io", "cli", "commands")

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), _ALIASES.get(name, name))
    elif name in _SUBMODULES:
        value = importlib.import_module(f"rotary.{name}")
    else:
        raise AttributeError(f"module 'rotary' has no attribute '{name}'")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
