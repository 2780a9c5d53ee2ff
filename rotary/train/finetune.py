"""Fine-tuning: a sequence classifier on a labelled corpus, through the same loop as pretraining.

``finetune(cfg)`` takes the backbone and tokenizer of ``cfg.init_from`` (a masked-LM run, or a
RoFormer checkpoint converted with ``rotary convert --from-hf``), puts a fresh classification
head on it, and hands model and batches to ``rotary.train.loop.fit``: resume, DDP/FSDP, bf16,
early stopping on a chosen metric, keep-N + best, TensorBoard and the progress bar all hold.
``init_from: none`` trains the same classifier from scratch (the pretraining ablation). Model
selection uses the validation split only; the test split is scored once, at the end.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError

# What `rotary finetune` assumes beneath any recipe (a recipe or --key names its own): a user's own
# labelled file needs nothing else. Without max_steps it trains DEFAULT_EPOCHS passes over the data.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "task": "classification", "best_metric": "accuracy", "batch_size": 16, "lr": 2.0e-4,
    "warmup_fraction": 0.1, "weight_decay": 0.01, "dropout": 0.1, "eval_batches": None,
    "early_stopping_patience": 3, "keep_checkpoints": 2,
}
DEFAULT_EPOCHS = 3.0


def finetune_defaults(recipe: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The defaults beneath a fine-tune's recipe and overrides (``load_recipe``'s ``defaults``)."""
    from rotary.config import apply_overrides, load_yaml
    from rotary.train.config import resolve_recipe

    named = apply_overrides(load_yaml(resolve_recipe(recipe)) if recipe else {}, overrides)
    if named.get("task", "classification") != "classification":
        given = f"the recipe {recipe} trains {named['task']}: run it with `rotary train {recipe}`" if recipe else (
            f"not {named['task']}: remove --task")
        raise RotaryError(f"rotary finetune trains task classification; {given}, or fine-tune with a "
                          "classification recipe (or with none and --data.corpus FILE)")
    out = dict(FINETUNE_DEFAULTS)
    if "warmup_steps" in named:  # the user's warmup, not a default beside it
        del out["warmup_fraction"]
    if "dropout" in named.get("model", {}):  # the backbone's dropout comes from the top-level key
        out["dropout"] = named["model"]["dropout"]
    if "max_steps" not in named:
        out["epochs"] = DEFAULT_EPOCHS
    if recipe is None and isinstance(corpus := named.get("data", {}).get("corpus"), str):
        out["name"] = f"finetune-{Path(corpus).stem}"  # runs/finetune-reviews for reviews.jsonl
    return out


def steps_for_epochs(cfg: Any, n_train: int, rows_per_step: int) -> Any:
    """``cfg`` with max_steps set to ``cfg.epochs`` passes over ``n_train`` examples (``rows_per_step``
    examples a step, over all processes and accumulation micro-steps), and evaluation
    and checkpoints at least once an epoch; ``cfg`` itself when it sets no epochs."""
    import dataclasses
    import math

    if cfg.epochs is None:
        return cfg
    per_epoch = max(1, math.ceil(n_train / rows_per_step))
    steps = max(1, math.ceil(cfg.epochs * per_epoch))
    return dataclasses.replace(cfg, max_steps=steps, eval_interval=min(cfg.eval_interval, per_epoch),
                               checkpoint_interval=min(cfg.checkpoint_interval, per_epoch))


def finetune(cfg: Any, *, resume: bool = False, overwrite: bool = False, verify: bool = True) -> Any:
    """Fine-tune as the recipe says; returns the loop's TrainResult with ``test`` metrics added."""
    import torch

    from rotary.data.labelled_batches import ClassificationData
    from rotary.data.sources import load_labelled
    from rotary.tasks import get_task
    from rotary.tokenizer import load_tokenizer
    from rotary.train.batching import grad_accum_steps
    from rotary.train.distributed import init_distributed, shutdown
    from rotary.train.loop import fit
    from rotary.train.setting_up import setting_up
    from rotary.train.setup import prepare_run

    if cfg.task != "classification":
        raise RotaryError(f"rotary finetune trains task: classification (the recipe says {cfg.task})")
    if cfg.data.corpus is None:
        raise RotaryError("the recipe names no labelled data: set data.corpus (chinese-sentiment, thucnews, or "
                          "a .jsonl/.csv/.parquet file with text and label)")
    task = get_task("classification")
    # Everything that can fail is checked before prepare_run, which with --overwrite sets the old run aside.
    source = _resumed_source(cfg) if resume else None
    if source is None and cfg.tapt_steps:
        tapt = task_adaptive_pretraining(cfg, overwrite=overwrite, verify=verify)
        source = _source(dataclasses.replace(cfg, init_from=str(tapt)))
        source["note"] += f" (task-adaptive pretraining: {cfg.tapt_steps} MLM steps on the task's train texts)"
    source = source or _source(cfg)
    split_opts = {"val_fraction": cfg.data.val_fraction} if cfg.data.val_fraction is not None else {}
    labelled = load_labelled(cfg.data.corpus, **split_opts, **cfg.data.corpus_opts())
    if labelled.pair and source["model_config"].type_vocab_size < 2:
        raise RotaryError(f"{labelled.name} holds text pairs but the model has no segment embeddings "
                          "(type_vocab_size < 2): use a backbone with token types (RoFormer has 2)")
    model_cfg = source["model_config"]
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise RotaryError(f"seq_len {seq_len} is longer than the model's max_seq_len {model_cfg.max_seq_len}: "
                          f"pass --seq-len {model_cfg.max_seq_len} (or less)")
    tokenizer = load_tokenizer(source["tokenizer_dir"])
    data = ClassificationData(labelled.split("train"), labelled.split("val"), tokenizer, source["tokenizer_dir"],
                              labelled.label_names, max_len=seq_len, pair=labelled.pair)
    data.configure(seq_len=seq_len, batch_size=cfg.batch_size, seed=cfg.seed, model_vocab=model_cfg.vocab_size)
    info = init_distributed(cfg.device, cfg.dist_timeout_s)
    try:
        rows = cfg.batch_size * info.world_size * grad_accum_steps(cfg, seq_len, info.world_size)
        cfg = steps_for_epochs(cfg, len(data.train_set), rows)
        # the backbone's config, not the recipe's model section, bounds seq_len here; a failure
        # before the first step leaves the directory as it was (see rotary.train.setting_up)
        with setting_up(cfg.run_dir, enabled=info.is_main, overwrite=overwrite) as setup:
            latest, notes = prepare_run(cfg, info, resume=resume, overwrite=overwrite, verify=verify,
                                        check_model=False, setup=setup)
            torch.manual_seed(cfg.seed)
            model = task.build_model(model_cfg, {**data.head_settings, "pooling": cfg.pooling})
            if source["weights"] is not None and latest is None:
                load_backbone(model, source["weights"])
            notes = [*notes, source["note"],
                     f"labels: {', '.join(labelled.label_names)} | train {len(data.train_set)}, "
                     f"val {len(data.val_set)} examples | reached max_len {seq_len} (truncated): "
                     f"train {data.truncated['train']}, val {data.truncated['val']}"]
        result = fit(cfg, info, task, model.to(info.device), data, seq_len=seq_len, latest=latest, notes=notes)
    finally:
        if info.enabled:
            gc.collect()  # as in rotary.train.loop.train: free collectives while the group lives
        shutdown(info)
    if info.is_main and result.stopped != "interrupted":
        result.test = score_test(cfg.run_dir, labelled, cfg)
    return result


def _resumed_source(cfg: Any) -> dict[str, Any] | None:
    """A resumed fine-tune rebuilds its model and tokenizer from its own latest checkpoint, so it
    does not need the --from run (or the tokenizer path) any more; None before the first save."""
    from rotary import checkpoint as ckpt
    from rotary.model.config import ModelConfig

    newest = ckpt.newest_step_dir(Path(cfg.run_dir)) if Path(cfg.run_dir).is_dir() else None
    if newest is None or not (newest / "tokenizer").is_dir():
        return None
    model = ModelConfig.from_dict(dict(ckpt.read_json(newest / "config.json")["model"]))
    # The run keeps its own copy: keep-N pruning deletes `newest`, and every later checkpoint
    # copies its tokenizer from here.
    tokenizer = Path(cfg.run_dir) / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        import shutil

        from rotary.io import replace_dir

        tmp = Path(cfg.run_dir) / ".tokenizer-partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(newest / "tokenizer", tmp)
        replace_dir(tmp, tokenizer)
    return {"model_config": model, "tokenizer_dir": tokenizer, "weights": None,
            "note": f"resumed: model and tokenizer from {newest} (the tokenizer kept in {tokenizer})"}


def tapt_dir(cfg: Any) -> Path:
    """The run directory of a fine-tune's task-adaptive pretraining: ``<output_dir>-tapt``."""
    return cfg.run_dir.parent / f"{cfg.run_dir.name}-tapt"


def task_adaptive_pretraining(cfg: Any, *, overwrite: bool = False, verify: bool = True) -> Path:
    """Continue the --from masked LM for ``cfg.tapt_steps`` steps on the fine-tune's own train
    texts (``labelled:`` corpus: train texts for training, val texts for its evaluation, never a
    test text), with the pretraining run's masking; returns that run's directory. A finished one
    is reused, an interrupted one resumed, ``overwrite`` starts it afresh."""
    from rotary import checkpoint as ckpt
    from rotary.run_source import open_run
    from rotary.train.config import load_recipe
    from rotary.train.loop import train

    if cfg.init_from in (None, "none"):
        raise RotaryError("tapt_steps continues a pretrained masked LM on the task's texts: give --from RUN "
                          "(a masked_lm run), or set tapt_steps 0")
    source = open_run(cfg.init_from, "best", verify=verify)
    kind = source.task
    if kind != "masked_lm":
        raise RotaryError(f"tapt_steps continues a masked LM's pretraining; --from {cfg.init_from} is a {kind} run: "
                          "set tapt_steps 0")
    out = tapt_dir(cfg)
    done = ckpt.latest_checkpoint(out)
    reached = ckpt.read_trainer_state(done / "trainer_state.json").get("step", 0) if done is not None else 0
    if done is not None and not overwrite and reached >= cfg.tapt_steps:
        return out
    # the pretraining's own masking (whole words for a jieba tokenizer), when its recipe is beside it
    recipes = [p / "recipe.yaml" for p in (source.path, source.path.parent, source.path.parent.parent)
               if (p / "recipe.yaml").is_file()]
    pretrained = load_recipe(recipes[0]).data if recipes else None
    d = cfg.data
    overrides = {
        "name": out.name, "task": "masked_lm", "output_dir": str(out), "init_from": str(cfg.init_from),
        "data.corpus": f"labelled:{d.corpus}", "data.corpus_options": dict(d.corpus_options),
        "data.text_field": d.text_field, "data.max_documents": d.max_documents, "data.val_fraction": d.val_fraction,
        "data.mlm_probability": pretrained.mlm_probability if pretrained else d.mlm_probability,
        "data.whole_word_mask": pretrained.whole_word_mask if pretrained else d.whole_word_mask,
        "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "max_steps": cfg.tapt_steps, "lr": cfg.tapt_lr,
        "warmup_fraction": 0.06, "weight_decay": 0.01, "eval_interval": cfg.tapt_steps, "eval_batches": 20,
        "checkpoint_interval": min(cfg.tapt_steps, 200), "keep_checkpoints": 1, "seed": cfg.seed,
        "device": cfg.device, "threads": cfg.threads, "precision": cfg.precision, "compile": cfg.compile,
        "progress": cfg.progress, "tensorboard": cfg.tensorboard,
    }
    tapt = load_recipe(None, {k: v for k, v in overrides.items() if v is not None})
    train(tapt, resume=done is not None and not overwrite, overwrite=overwrite and out.exists(), verify=verify)
    return out


def _source(cfg: Any) -> dict[str, Any]:
    """The model config, tokenizer and weights a fine-tune starts from."""
    from rotary.model.config import ModelConfig
    from rotary.run_source import open_run

    if cfg.init_from in (None, "none"):
        if cfg.data.tokenizer.path is None:
            raise RotaryError("init_from none trains from scratch but needs a tokenizer: set data.tokenizer.path "
                              "(e.g. the pretrained run's tokenizer, for a like-for-like ablation)")
        spec = dict(cfg.model)
        tok_dir = Path(cfg.data.tokenizer.path)
        from rotary.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_dir)
        spec.setdefault("vocab_size", tok.vocab_size)
        if tok.pad_id is not None:
            spec.setdefault("pad_token_id", tok.pad_id)
        spec.setdefault("causal", False)  # an encoder unless the recipe asks for a decoder (model.causal)
        if cfg.dropout is not None:
            spec["dropout"] = cfg.dropout
        return {"model_config": ModelConfig.from_dict(spec), "tokenizer_dir": tok_dir, "weights": None,
                "note": "from scratch: no pretrained weights (init_from none)"}
    source = open_run(cfg.init_from, "best")
    if source.task not in ("masked_lm", "electra", "causal_lm", "classification"):
        raise RotaryError(f"--from {cfg.init_from} is a {source.task} run: a classifier's backbone comes from a "
                          "masked_lm, electra or causal_lm run (or a converted RoFormer / Llama)")
    model_config = ModelConfig.from_dict(source.model_spec({"dropout": cfg.dropout} if cfg.dropout is not None
                                                           else None))
    kind = "decoder" if model_config.causal else "encoder"
    return {"model_config": model_config, "tokenizer_dir": source.tokenizer_dir("fine-tuning"),
            "weights": source.weights, "note": f"{kind} backbone from {source.path}; a fresh classification head"}


def load_backbone(model: Any, weights: Path) -> None:
    """The encoder weights of a pretrained checkpoint into ``model.backbone`` (its head stays fresh)."""
    from safetensors.torch import load_file

    from rotary.checkpoint import strip_wrappers

    state = strip_wrappers(load_file(str(weights)))
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    missing, unexpected = model.backbone.load_state_dict(backbone, strict=False)
    if missing or unexpected:
        raise RotaryError(f"{weights} does not fit this backbone: missing {missing[:3]}, unexpected {unexpected[:3]}")


def score_test(run_dir: Path, labelled: Any, cfg: Any) -> dict[str, Any]:
    """The best checkpoint on the test split, once, with the classical bar fitted on the same
    splits beside it (``rotary.baselines``): written to ``test_results.json``."""
    from rotary.baselines import baseline
    from rotary.evaluation import evaluate_classifier
    from rotary.io import atomic_write_text

    metrics = evaluate_classifier(run_dir, labelled.split("test"), labelled.label_names, pair=labelled.pair,
                                  batch_size=cfg.batch_size, device="cpu" if cfg.device == "cpu" else "auto")
    metrics["baseline"] = baseline(labelled.split("train"), labelled.split("val"), labelled.split("test"),
                                   len(labelled.label_names))
    atomic_write_text(Path(run_dir) / "test_results.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    return metrics
