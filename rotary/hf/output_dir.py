"""Output directories that verbs write: never destroy what is not theirs."""

from __future__ import annotations

import json
from pathlib import Path

from rotary.checkpoint import CHECKPOINT_ENTRIES, CHECKPOINTS, RUN_ENTRIES, is_complete
from rotary.errors import RotaryError

# What an HF checkpoint directory (save_pretrained + a tokenizer) may hold.
HF_ENTRIES = frozenset({"config.json", "generation_config.json", "model.safetensors",
                        "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json",
                        "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                        "merges.txt", "added_tokens.json", "rotary_tokenizer.json"})


def _kind_of_dir(path: Path) -> str | None:
    """"checkpoint", "run" or "hf" when ``path`` is one (and holds nothing else), else None."""
    names = {p.name for p in path.iterdir()}
    config = path / "config.json"
    if is_complete(path) and names <= CHECKPOINT_ENTRIES:
        return "checkpoint"
    if ((path / "recipe.yaml").is_file() or (path / CHECKPOINTS).is_dir()) and names <= RUN_ENTRIES:
        return "run"
    if config.is_file() and names <= HF_ENTRIES and ({"model.safetensors", "pytorch_model.bin",
                                                      "model.safetensors.index.json"} & names):
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, AttributeError):
            return None
        return "hf" if model_type not in (None, "rotary") else None
    return None


def check_output_dir(out: str | Path, *, kind: str, overwrite: bool, sources: tuple[Path, ...] = ()) -> Path:
    """Refuse an output directory whose content would be lost.

    ``out`` may be new or empty. A non-empty ``out`` must be a complete checkpoint of the same
    ``kind`` ("checkpoint": a rotary checkpoint directory, "hf": a transformers one) and is
    replaced only with ``overwrite``; a training run and anything else (notes, other files) are
    refused even then. ``out`` may never be, contain or lie inside one of ``sources``.
    """
    out = Path(out)
    here = out.resolve()
    for src in sources:
        src_r = Path(src).resolve()
        if here == src_r or src_r.is_relative_to(here) or here.is_relative_to(src_r):
            raise RotaryError(f"output {out} overlaps the source {src}: choose an output directory outside it")
    if out.exists() and not out.is_dir():
        raise RotaryError(f"output {out} is a file: choose a directory name")
    if not out.exists() or not any(out.iterdir()):
        return out
    found = _kind_of_dir(out)
    if found == "run":  # its checkpoints, metrics and recipe are not what a single checkpoint replaces
        raise RotaryError(f"output {out} is a training run: writing one checkpoint there would lose its "
                          "checkpoints and history, even with --overwrite; choose a new or empty directory")
    if found != kind:
        what = f"a {found} directory" if found else "not a checkpoint"
        raise RotaryError(f"output {out} is not empty and is {what}: it would be lost; choose a new or "
                          "empty directory (nothing was written)")
    if not overwrite:
        raise RotaryError(f"output {out} already holds a {found}: pass --overwrite to replace it, or choose "
                          "another directory")
    return out
