"""``TrainConfig``: what a recipe YAML holds, typed and strict.

A recipe names the model (a preset plus overrides), the data (a built-in corpus or files, a
tokenizer to train or load, or shards already prepared) and the training settings. Every key can
be overridden on the command line: ``rotary train recipe.yaml --max-steps 200 --model.n_layer 4``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rotary.config import apply_overrides, doc, from_dict, load_yaml, to_dict
from rotary.corpus_names import CORPUS_NAMES, PARALLEL_NAMES
from rotary.errors import RotaryError


@dataclass
class TokenizerSpec:
    """A tokenizer to load (``path``) or to train on the corpus's training split."""

    path: str | None = doc(None, "directory of a trained tokenizer; None = train one")
    kind: Literal["bpe", "wordpiece", "char"] = doc("bpe", "kind to train when path is None")
    vocab_size: int = doc(8192, "vocabulary size to train")
    jieba: bool = doc(False, "Chinese word pre-tokenization with jieba (rjieba, as RoFormer) before the vocabulary")
    lowercase: bool = doc(False, "lowercase text before training/encoding")

    def check(self, key: str) -> None:
        """Checked when the recipe is read, so that a bad one fails before the run directory is written."""
        if self.vocab_size < 1:
            raise RotaryError(f"recipe: {key}.vocab_size must be positive, got {self.vocab_size}")
        if self.jieba and self.kind == "bpe" and self.path is None:
            raise RotaryError(f"recipe: {key}.jieba is for the wordpiece and char kinds "
                              f"(byte-level BPE keeps spaces): set {key}.kind or jieba false")


@dataclass
class DataConfig:
    corpus: str | dict[str, float] | None = doc(
        None, f"built-in corpus ({', '.join(CORPUS_NAMES + PARALLEL_NAMES)}), a path (a Wikipedia dump too: "
        "wikidump:PATH), labelled:DATA (its train texts), or a pretraining mix {corpus: weight, ...} "
        "(weight = passes over its train split)")
    shards: str | None = doc(None, "directory of prepared shards; None = prepare into <output_dir>/data")
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec, metadata={"help": "tokenizer to use"})
    target_tokenizer: TokenizerSpec | None = doc(
        None, "seq2seq: a vocabulary of the target side's own, with data.tokenizer's keys "
        "(--data.target_tokenizer.kind wordpiece); data.tokenizer is then the source's. None = one joint vocabulary")
    val_fraction: float | None = doc(None, "validation share for sources without a fixed split")
    split_by: Literal["file", "paragraph", "line"] | None = doc(
        None, "local .txt files: one document per file (default), paragraph or line")
    text_field: str | None = doc(None, "field holding the text in .jsonl/.parquet/HF records (default: text)")
    max_documents: int | None = doc(None, "read at most this many documents per split")
    corpus_options: dict[str, Any] = doc(None, "other corpus options, e.g. {config: wikitext-2-raw-v1} for hf:NAME")
    mlm_probability: float = doc(0.15, "masked LM: share of tokens to predict")
    whole_word_mask: bool = doc(False, "masked LM: mask whole words (Chinese via jieba)")
    chat_template: str | None = doc(None, "sft: a Jinja chat template, or the path of a .jinja file; None = the "
                                          "tokenizer's own, else rotary's ChatML default")
    drop_long: bool = doc(False, "sft: drop conversations longer than the context (counted in the log) instead "
                                 "of refusing the run")
    packing: bool = doc(False, "sft: pack a step's conversations into full rows (positions restart and attention "
                               "stays inside each conversation); the loss is the same as unpacked")

    def __post_init__(self) -> None:
        if self.corpus_options is None:
            self.corpus_options = {}
        if isinstance(self.corpus, dict):  # a mix, kept as the one string every reader of corpus takes
            from rotary.data.sources.mixture import mixture_spec

            self.corpus = mixture_spec(self.corpus)
        self.tokenizer.check("data.tokenizer")
        if self.target_tokenizer is not None:
            self.target_tokenizer.check("data.target_tokenizer")
        # Checked here so that a bad recipe fails before the run directory is written.
        checks = [
            (0 < self.mlm_probability < 1, f"data.mlm_probability must be in (0, 1), got {self.mlm_probability}"),
            (self.val_fraction is None or 0 < self.val_fraction < 1,
             f"data.val_fraction must be in (0, 1) (training needs a validation split), got {self.val_fraction}"),
            (self.max_documents is None or self.max_documents > 0,
             f"data.max_documents must be positive, got {self.max_documents}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RotaryError(f"recipe: {msg}")
        if self.corpus == "shakespeare" and self.val_fraction is not None and self.shards is None:
            raise RotaryError("recipe: shakespeare holds out whole works, data.val_fraction does not apply: remove it")
        named = {"split_by", "text_field", "max_documents", "val_fraction"} & set(self.corpus_options)
        if named:
            key = sorted(named)[0]
            raise RotaryError(f"recipe: set data.{key} itself, not in data.corpus_options")

    def corpus_opts(self) -> dict[str, Any]:
        """The options for ``load_corpus`` (val_fraction apart); unset ones are left out."""
        opts = {"split_by": self.split_by, "text_field": self.text_field, "max_documents": self.max_documents}
        return {**self.corpus_options, **{k: v for k, v in opts.items() if v is not None}}


@dataclass
class TrainConfig:
    name: str = doc("run", "run name; the default output directory is runs/<name>")
    task: str = doc("causal_lm", "objective, a row of rotary.tasks: causal_lm, masked_lm, electra, seq2seq or sft "
                                 "(the model follows it)")
    model: dict[str, Any] = doc(None, "ModelConfig keys, optionally with `preset:`")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data source"})
    output_dir: str | None = doc(None, "where checkpoints and logs go; default runs/<name>")

    # -- batch and steps ---------------------------------------------------------------------
    seq_len: int | None = doc(None, "tokens per training window; default model.max_seq_len")
    batch_size: int = doc(8, "sequences per micro-batch on each process")
    grad_accum_steps: int | None = doc(None, "micro-batches per step; default from global_batch_tokens or 1")
    global_batch_tokens: int | None = doc(None, "tokens per optimizer step over all processes (sets accumulation)")
    max_steps: int = doc(1000, "optimizer steps to train")
    epochs: float | None = doc(None, "classification: passes over the training split; sets max_steps from the "
                                     "data size and evaluates and saves at least once an epoch (rotary finetune "
                                     "without a recipe: 3)")

    # -- optimiser and schedule ----------------------------------------------------------------
    lr: float = doc(3e-4, "peak learning rate")
    min_lr: float | None = doc(None, "final learning rate of the cosine; default lr / 10")
    warmup_steps: int | None = doc(None, "linear warmup steps")
    warmup_fraction: float | None = doc(None, "linear warmup as a share of max_steps (e.g. 0.07)")
    optimizer: Literal["adamw", "muon"] = doc(
        "adamw", "adamw, or muon: Muon (torch.optim.Muon) for the blocks' matrices, AdamW for embeddings, "
        "head, norms and biases; one lr for both (Muon's scaled to AdamW's RMS)")
    muon_momentum: float = doc(0.95, "Muon's Nesterov momentum")
    weight_decay: float = doc(0.1, "decoupled decay, applied to matrices only (not norms, biases, embeddings)")
    beta1: float = doc(0.9, "AdamW beta1")
    beta2: float = doc(0.95, "AdamW beta2")
    eps: float = doc(1e-8, "AdamW epsilon")
    grad_clip: float | None = doc(1.0, "clip the global gradient norm to this; None = no clipping")
    dropout: float | None = doc(None, "override the model's dropout for training")
    lr_schedule: Literal["cosine", "constant", "inverse_sqrt"] = doc(
        "cosine", "after warmup: cosine decay to min_lr, constant (the RoFormer CAIL2019-SCM setup), or "
        "inverse_sqrt (Vaswani et al.: lr x sqrt(warmup / step))")
    label_smoothing: float = doc(0.0, "seq2seq: label smoothing of the training loss (Vaswani et al.: 0.1); "
                                      "evaluation reports the plain loss")

    # -- fine-tuning (rotary finetune) -----------------------------------------------------------
    init_from: str | None = doc(None, "run or checkpoint whose backbone and tokenizer a fine-tune starts "
                                      "from (--from); none = the recipe's model from scratch. In rotary train: "
                                      "continue a run of the same task from its weights, the recipe's model keys "
                                      "over its config (e.g. rope_scaling for a context-extension fine-tune)")
    layer_lr_decay: float | None = doc(None, "layer-wise lr decay (fine-tuning, as ELECTRA's): block i of L "
                                             "learns at lr x decay^(L - i), the embeddings at lr x decay^(L+1), "
                                             "the head at lr; e.g. 0.8. None = one lr")
    tapt_steps: int = doc(0, "fine-tune: first continue the --from masked LM for this many steps on the task's "
                             "own train texts (task-adaptive pretraining, Gururangan et al. 2020), in the run "
                             "<output_dir>-tapt; then fine-tune from it. 0 = none")
    tapt_lr: float = doc(1e-4, "fine-tune: peak learning rate of the task-adaptive pretraining")
    pooling: Literal["cls", "mean", "last"] | None = doc(
        None, "classifier pooling: first token ([CLS]), mean, or last token (decoders); None = cls for an "
        "encoder backbone, last for a decoder")

    # -- precision, device, speed --------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16", "fp16"] = doc(
        "fp32", "fp32, bf16 autocast, fp16 autocast with GradScaler (CUDA), or auto: bf16 on CPUs with "
        "AMX/AVX512-BF16 and GPUs with bf16, else fp32 (rotary.precision)")
    compile: bool | Literal["blocks", "auto"] = doc(
        "auto", "torch.compile: true = the whole model, blocks = each transformer block (one shared graph, "
        "compiled in seconds), auto = blocks for bf16 training on a CPU where Inductor can build its C++ "
        "kernels, else none; false = eager (rotary.train.compilation)")
    device: str = doc("auto", "auto (cuda > mps > cpu), or cpu / cuda / cuda:N / mps")
    threads: int | None = doc(None, "CPU threads for torch (default: torch's choice)")
    seed: int = doc(1337, "seed for initialisation, data order and dropout")

    # -- distributed ---------------------------------------------------------------------------
    distributed: Literal["ddp", "fsdp"] = doc("ddp", "strategy under torchrun/accelerate: ddp, or fsdp (fully_shard)")
    dist_timeout_s: float = doc(600.0, "seconds a collective may wait before a dead rank fails the run")

    # -- evaluation, checkpoints, logging -----------------------------------------------------
    eval_interval: int = doc(200, "evaluate every N steps (and at the end)")
    eval_batches: int | None = doc(50, "validation batches per evaluation; None = the whole split")
    early_stopping_patience: int | None = doc(None, "stop after this many evaluations without improvement")
    best_metric: str = doc("loss", "validation metric that picks best/ and drives early stopping "
                                   "(loss: lower is better; accuracy, macro_f1, ...: higher)")
    checkpoint_interval: int = doc(1000, "save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = doc(10, "keep the last N step checkpoints (best/ is kept apart)")
    log_interval: int = doc(10, "write a log line every N steps")
    progress: bool = doc(True, "show a progress bar")
    tensorboard: bool = doc(True, "write TensorBoard event files")

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = {}
        from rotary.tasks import get_task

        task = get_task(self.task)
        if self.best_metric not in task.metric_names:
            raise RotaryError(f"recipe: best_metric {self.best_metric} is not a metric of {self.task} "
                              f"(it reports {', '.join(task.metric_names)})")
        checks = [
            (self.batch_size > 0, "batch_size must be positive"),
            (self.max_steps > 0, "max_steps must be positive"),
            (self.epochs is None or self.epochs > 0, "epochs must be positive"),
            (self.tapt_steps >= 0 and self.tapt_lr > 0, "tapt_steps must be >= 0 and tapt_lr positive"),
            (self.layer_lr_decay is None or 0 < self.layer_lr_decay <= 1, "layer_lr_decay must be in (0, 1]"),
            (self.lr > 0, "lr must be positive"),
            (self.eval_interval > 0 and self.checkpoint_interval > 0 and self.log_interval > 0,
             "eval_interval, checkpoint_interval and log_interval must be positive"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.warmup_fraction is None or 0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.grad_accum_steps is None or self.grad_accum_steps >= 1, "grad_accum_steps must be >= 1"),
            (self.seq_len is None or self.seq_len > 0, "seq_len must be positive"),
            # values that train silently wrong (a negative clip flips the gradients) or crash later
            (0 <= self.seed < 2**32, f"seed must be in 0..2**32-1, got {self.seed}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
            (self.eps > 0, "eps must be positive"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive (or null for none)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.min_lr is None or 0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr = {self.lr}]"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.eval_batches is None or self.eval_batches >= 1, "eval_batches must be at least 1 (null = all)"),
            (0 <= self.muon_momentum < 1, "muon_momentum must be in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RotaryError(f"recipe: {msg}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_fraction is not None:
            return int(self.warmup_fraction * self.max_steps)
        return min(100, self.max_steps // 10)

    def warnings(self) -> list[str]:
        """Settings that are legal but almost certainly not what was meant."""
        out = []
        if self.warmup() >= self.max_steps:
            out.append(f"warmup ({self.warmup()} steps) is not shorter than max_steps ({self.max_steps}): "
                       "the learning rate never reaches its peak (lower warmup_steps or raise max_steps)")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            out.append(f"warmup_steps {self.warmup_steps} and warmup_fraction {self.warmup_fraction} are both set: "
                       "warmup_steps is used (set warmup_fraction null to silence this)")
        model_dropout = self.model.get("dropout")
        if self.dropout is not None and model_dropout is not None and model_dropout != self.dropout:
            out.append(f"dropout {self.dropout} replaces model.dropout {model_dropout} for training "
                       "(remove one of them)")
        return out

    def final_lr(self) -> float:
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of best_metric improves on ``best`` (None: nothing yet)."""
        if best is None:
            return True
        return value < best if self.best_metric in ("loss", "perplexity", "bits_per_byte") else value > best

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data, where="recipe")


BUILTIN_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def builtin_recipes() -> list[str]:
    """Names of the recipes that ship in the package (``rotary train NAME``)."""
    return sorted(p.stem for p in BUILTIN_RECIPES.glob("*.yaml"))


def resolve_recipe(spec: str | Path) -> Path:
    """The YAML file a recipe argument names: a path, or a built-in recipe's name.

    ``shakespeare`` (no directory, no suffix) and ``recipes/shakespeare.yaml`` that does not
    exist relative to the working directory both mean the packaged recipe, so the README's
    commands work outside the repository too.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.exists():
        raise RotaryError(f"recipe {path} is a directory, not a YAML file")
    bare = path.parent == Path(".") and path.suffix in ("", ".yaml", ".yml")
    if bare or path.parent.name == "recipes":
        packaged = BUILTIN_RECIPES / f"{path.stem}.yaml"
        if packaged.is_file():
            return packaged
    raise RotaryError(f"recipe not found: {spec} (built-in recipes: {', '.join(builtin_recipes())}; "
                      "or give the path of a YAML file)")


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None,
                defaults: dict[str, Any] | None = None) -> TrainConfig:
    """A recipe from YAML (a path or a built-in recipe's name; TrainConfig's defaults when ``path``
    is None) with dotted-key overrides; ``defaults`` (top-level keys) fill what neither names."""
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_recipe(path)
        data = load_yaml(path)
        data.setdefault("name", path.stem)
    if overrides:
        data = apply_overrides(data, overrides)
    for key, value in (defaults or {}).items():
        data.setdefault(key, value)
    try:
        return TrainConfig.from_dict(data)
    except RotaryError as err:
        unknown = re.match(r"(recipe[.\w]*): unknown key '(\w+)'", str(err))
        if unknown and (home := _home_of(unknown[2])):
            raise RotaryError(f"{unknown[1]}: unknown key '{unknown[2]}': it is {home} (on the command line "
                              f"--{home} VALUE)") from None
        raise


# options of a labelled corpus's split, set through data.corpus_options
CORPUS_SPLIT_OPTIONS = ("test_fraction",)


def _home_of(key: str) -> str | None:
    """The one dotted recipe key that ``key`` names at the wrong level (``val_fraction`` at the
    top for ``data.val_fraction``); None when none or several do."""
    if key in CORPUS_SPLIT_OPTIONS:
        return f"data.corpus_options.{key}"
    from rotary.train.recipe_keys import recipe_keys

    homes = [k for k, *_ in recipe_keys() if k.endswith(f".{key}")]
    return homes[0] if len(homes) == 1 else None
