"""Before the first step: the run directory's state, the checkpoint to resume, the model config.

Everything here only reads: a mistake found here leaves no file behind (``--overwrite``'s
replacement of the previous run is ``rotary.train.setting_up``'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotary import checkpoint
from rotary.config import to_dict
from rotary.errors import RotaryError
from rotary.model.config import ModelConfig
from rotary.run_source import open_run
from rotary.tasks import CAUSAL_TASKS, get_task
from rotary.train.config import TrainConfig

if TYPE_CHECKING:
    from rotary.train.distributed import DistInfo
    from rotary.train.setting_up import RunSetup


def resolve_model_config(cfg: TrainConfig, vocab_size: int, pad_id: int | None,
                         data_settings: dict[str, Any] | None = None) -> ModelConfig:
    """The recipe's model section, with what the task, tokenizer and data decide filled in."""
    spec = dict(cfg.model)
    want_causal = get_task(cfg.task).causal
    if "causal" in spec and bool(spec["causal"]) != want_causal:
        raise RotaryError(f"model.causal={spec['causal']} contradicts task={cfg.task}: remove model.causal")
    spec["causal"] = want_causal
    if "vocab_size" not in spec:
        spec["vocab_size"] = vocab_size
    if "pad_token_id" not in spec and pad_id is not None:
        spec["pad_token_id"] = pad_id
    for key, value in (data_settings or {}).items():  # e.g. a seq2seq target vocabulary of its own
        spec.setdefault(key, value)
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


def check_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> bool:
    """Refuse to mix two runs in one directory; returns whether it already holds a run.

    With ``overwrite`` the previous run is replaced, but not here: ``RunSetup.set_aside`` moves
    it out of the way once every check has passed, and deletes it once the new run is set up.
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
        # what this run reads must survive the deletion of the run it replaces
        here = run_dir.resolve()
        for key, path in (("init_from", cfg.init_from), ("data.shards", cfg.data.shards),
                          ("data.tokenizer.path", cfg.data.tokenizer.path),
                          ("data.target_tokenizer.path", getattr(cfg.data.target_tokenizer, "path", None))):
            if path not in (None, "none") and Path(path).resolve().is_relative_to(here):
                raise RotaryError(f"--overwrite would delete {path}, which this run reads ({key}): choose another "
                                  "--output-dir, or copy it out of the run first (nothing was deleted)")
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


def apply_init_from(cfg: TrainConfig) -> Path | None:
    """``init_from`` for ``rotary train``: continued training (e.g. a context-extension fine-tune)
    from a run of the same task. The recipe's model keys are laid over the run's model config
    (so ``model.rope_scaling`` or ``model.max_seq_len`` may change; shapes may not), and its
    tokenizer encodes the data. Returns the weights to start from, None without ``init_from``.
    Reads only, so a bad path leaves nothing behind."""
    if cfg.init_from in (None, "none"):
        return None
    try:
        source = open_run(cfg.init_from, "best")
    except RotaryError as err:  # say which setting named it: a recipe's init_from is easy to forget
        missing = "" if Path(cfg.init_from).exists() else " (train that run first, or set --init-from to another)"
        raise RotaryError(f"init_from: {err}{missing}") from None
    # SFT starts from a pretrained decoder; every other task continues a run of its own kind.
    allowed = CAUSAL_TASKS if cfg.task == "sft" else (cfg.task,)
    if source.task not in allowed:
        raise RotaryError(f"init_from {cfg.init_from} is a {source.task} run and this recipe trains "
                          f"{cfg.task}: continue a run of {' or '.join(allowed)} "
                          "(a classifier: rotary finetune --from)")
    tok = source.tokenizer_dir("continued training")
    if cfg.data.target_tokenizer is not None:
        raise RotaryError(f"init_from brings its own tokenizers ({tok}): remove data.target_tokenizer")
    if cfg.data.tokenizer.path not in (None, str(tok)):
        raise RotaryError(f"init_from brings its own tokenizer ({tok}): remove data.tokenizer.path")
    cfg.model = source.model_spec({k: v for k, v in cfg.model.items() if k != "preset"})
    cfg.data.tokenizer.path = str(tok)
    _check_shapes(cfg, source.weights)
    return source.weights


def _check_shapes(cfg: TrainConfig, weights: Path) -> None:
    """The recipe's model (built on the meta device: no memory, no time) against the weights'
    shapes in the safetensors header, before any file is written."""
    import torch
    from safetensors import safe_open

    model_cfg = resolve_model_config(cfg, vocab_size=int(cfg.model["vocab_size"]), pad_id=None)
    with torch.device("meta"):
        model = get_task(cfg.task).build_model(model_cfg, {})
    with safe_open(str(weights), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for name, tensor in model.state_dict().items():
        if name in stored and stored[name] != tuple(tensor.shape):
            raise RotaryError(f"init_from {weights.parent} holds {name} of shape {stored[name]} but the recipe's "
                              f"model needs {tuple(tensor.shape)}: change only keys that keep the shapes "
                              "(rope_scaling, max_seq_len, dropout)")


def start_output_bias(model: Any, tokens: Any, chunks: int = 64, chunk_tokens: int = 1 << 20) -> str | None:
    """Start a causal LM's trained logits bias (``model.output_bias``) at the log unigram of
    ``tokens`` (the training shard), add-one smoothed so that a token the shard lacks is not
    -inf. A long shard is counted on ``chunks`` evenly spaced pieces. Returns a log line, or
    None for a model without the bias."""
    import numpy as np
    import torch

    bias = getattr(model, "output_bias", None)
    if bias is None:
        return None
    vocab, n = bias.shape[0], len(tokens)
    if n > chunks * chunk_tokens:
        starts = np.linspace(0, n - chunk_tokens, chunks).astype(np.int64)
        sample = np.concatenate([np.asarray(tokens[s:s + chunk_tokens]) for s in starts])
    else:
        sample = np.asarray(tokens)
    counts = np.bincount(sample.astype(np.int64), minlength=vocab)[:vocab].astype(np.float64)
    log_p = np.log((counts + 1.0) / (counts.sum() + vocab))
    with torch.no_grad():
        bias.copy_(torch.from_numpy(log_p).to(bias.dtype))
    return f"output_bias started at the log unigram of {len(sample):,} training tokens"


def prepare_run(cfg: TrainConfig, info: DistInfo, *, resume: bool, overwrite: bool, verify: bool,
                check_model: bool = True, setup: RunSetup | None = None) -> tuple[Path | None, list[str]]:
    """Every check that needs no data, before the first file is written, so a mistake never
    leaves a run directory that blocks the corrected rerun; then ``--overwrite`` sets the previous
    run aside (``setup``). Returns the checkpoint to resume."""
    if cfg.optimizer == "muon" and info.enabled and cfg.distributed == "fsdp":
        raise RotaryError("optimizer: muon needs whole matrices and FSDP shards them: use distributed: ddp "
                          "or optimizer: adamw")
    if cfg.tapt_steps and cfg.task != "classification":
        raise RotaryError(f"tapt_steps pretrains a fine-tune's backbone on its task's texts (rotary finetune); "
                          f"this recipe trains {cfg.task}: remove it")
    if cfg.epochs is not None and cfg.task != "classification":
        raise RotaryError(f"epochs sets the steps of a fine-tune (task classification); this recipe trains "
                          f"{cfg.task}: use max_steps")
    if cfg.label_smoothing and cfg.task != "seq2seq":
        raise RotaryError(f"label_smoothing applies to task seq2seq, this recipe trains {cfg.task}: remove it")
    if cfg.data.target_tokenizer is not None and cfg.task != "seq2seq":
        raise RotaryError(f"data.target_tokenizer is for task seq2seq, this recipe trains {cfg.task}: remove it")
    if cfg.data.target_tokenizer is not None and cfg.model.get("share_embeddings") is True:
        raise RotaryError("data.target_tokenizer gives the target its own vocabulary and embedding: "
                          "set model.share_embeddings false (or remove it)")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise RotaryError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.precision == "fp16" and info.device.type != "cuda":
        raise RotaryError("fp16 training needs CUDA (GradScaler): use --precision bf16 or fp32")
    import torch

    from rotary.ops import gemm
    from rotary.train.distributed import barrier
    from rotary.train.keep import clean_partial
    from rotary.train.setting_up import REPLACED

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gemm.cpu_gemm()  # a bad ROTARY_CPU_GEMM is an error before any file is written
    # the model section's keys and values (the vocabulary comes from the data later)
    if check_model:
        resolve_model_config(cfg, vocab_size=int(cfg.model.get("vocab_size", 2**16)), pad_id=None)
    had_run = check_run_dir(cfg, resume=resume, overwrite=overwrite)
    if overwrite and setup is not None:
        if had_run or (cfg.run_dir / REPLACED).is_dir():  # a run, or a killed --overwrite's remains
            setup.set_aside()
        elif found := setup.entries_without_a_run():
            # a killed setup's leftovers, or the user's own data/: not rotary's to delete
            raise RotaryError(f"{cfg.run_dir} holds {', '.join(found)} but no run (no recipe.yaml, no checkpoints): "
                              "--overwrite replaces only a run; move them away or choose another --output-dir "
                              "(nothing was deleted)")
    latest = resume_checkpoint(cfg.run_dir, verify=verify) if resume else None
    barrier(info)
    if info.is_main:
        clean_partial(cfg.run_dir)
    notes = []
    if resume and had_run and latest is None:
        notes.append(f"{cfg.run_dir} has no checkpoint yet: training from step 0")
    if latest is not None and (changed := schedule_changes(cfg)):
        notes.append(f"note: the learning-rate schedule differs from the one this run trained under ({changed}): "
                     "the remaining steps follow the new one, so the run is not the one a fresh start with "
                     "these settings would train")
    return latest, notes


# The settings the learning rate of step s depends on (rotary.train.schedule.lr_at).
SCHEDULE_KEYS = ("max_steps", "epochs", "lr", "min_lr", "lr_schedule", "warmup_steps", "warmup_fraction")


def schedule_changes(cfg: TrainConfig) -> str:
    """The schedule settings in which ``cfg`` differs from the recipe.yaml its run directory was
    trained with, as ``max_steps 3600 -> 7200``; "" when none does (or there is no record)."""
    from rotary.config import load_yaml

    previous = cfg.run_dir / "recipe.yaml"
    if not previous.is_file():
        return ""
    old, new = load_yaml(previous), to_dict(cfg)
    # a fine-tune by epochs derives max_steps from the data later: its epochs are what it asked for
    keys = [k for k in SCHEDULE_KEYS if not (k == "max_steps" and new.get("epochs") is not None)]
    return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k))
