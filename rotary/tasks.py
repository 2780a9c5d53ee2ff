"""The task table: one row per objective, read by every verb.

A row says which model a task builds (and which ``config.json`` keys rebuild its head), whether
its attention is causal, where its training batches come from, how a batch becomes the model's
keyword arguments, and which metrics its evaluation reports from the summed statistics. The
training loop, ``rotary.load``, ``convert`` and the run directory all go through this table, so a
new task is one ``register_task(Task(...))``, not an edit in each verb.

Importing this module imports no torch: the builders import the model when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rotary.errors import RotaryError


@dataclass(frozen=True)
class Task:
    name: str
    build_model: Callable[[Any, Mapping[str, Any]], Any]
    """(ModelConfig, head settings from config.json) -> a fresh model."""
    causal: bool
    """The backbone's attention: causal for decoders, bidirectional for encoders."""
    metrics: Callable[[Any, Any], dict[str, float]]
    """(summed (loss, count, correct) as float64 tensor, the task's data) -> extra metrics."""
    make_data: Callable[[Any, Any], Any] | None = None
    """(TrainConfig, DistInfo) -> the object whose train_batches/eval_batches the loop reads;
    None for a task that is only loaded and used (not trained by ``rotary train``)."""
    inputs: Callable[[Any], dict[str, Any]] = field(default=lambda batch: {"targets": batch[1]})
    """A batch -> the model's keyword arguments besides the input ids (``batch[0]``)."""
    head_keys: tuple[str, ...] = ()
    """config.json keys the head needs besides the model section (e.g. num_labels)."""
    metric_names: tuple[str, ...] = ("loss",)
    """What its evaluation reports (best_metric must be one of them)."""
    count_name: str = "tokens"
    """What its evaluation counts (tokens scored, or examples)."""
    score: Callable[..., dict[str, Any]] | None = None
    """``rotary eval``: (loaded run, corpus, split, EvalOptions) -> the metrics of a finished run on
    a split (``rotary.evaluation.runs``); None for a task that rotary eval does not score."""
    eval_options: tuple[str, ...] = ()
    """The ``rotary eval`` options that apply to its runs (given to another task's, they are refused)."""
    fixed_windows: bool = False
    """Every training batch has one shape and no padding (fixed-length windows of a corpus), so a
    compiled model builds one graph for the whole run (``compile: auto`` relies on it)."""
    scored: Callable[[Any], Any] | None = None
    """A batch -> how many positions its loss averages over (a 0-d tensor): the micro-batches of a
    step, on every rank, are weighted by it, so the step's loss is the mean over the global batch's
    scored tokens, not a mean of per-micro-batch means; None where every micro-batch scores the
    same number (fixed windows, classification's fixed batches)."""
    help: str = ""


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a row (or replace the row of the same name)."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    task = TASKS.get(name)
    if task is None:
        import difflib

        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RotaryError(f"unknown task '{name}'{hint}: rotary knows {', '.join(TASKS)}")
    return task


def trainable_tasks() -> list[str]:
    return [name for name, task in TASKS.items() if task.make_data is not None]


def task_of_model(model: Any) -> Task:
    """The row whose builder makes models of ``type(model)`` (for exporting a model)."""
    for task in TASKS.values():
        if task.name in _MODEL_CLASS and type(model).__name__ == _MODEL_CLASS[task.name]:
            return task
    raise RotaryError(f"no task builds a {type(model).__name__}")


# -- the rows ----------------------------------------------------------------------------------


def _causal_lm(cfg: Any, head: Mapping[str, Any]) -> Any:
    from rotary.model import CausalLM

    return CausalLM(cfg)


def _masked_lm(cfg: Any, head: Mapping[str, Any]) -> Any:
    from rotary.model import MaskedLM

    return MaskedLM(cfg)


def _electra(cfg: Any, head: Mapping[str, Any]) -> Any:
    from rotary.model.electra import ElectraPretrainer

    return ElectraPretrainer(cfg, float(head.get("generator_fraction", 0.25)), float(head.get("disc_weight", 50.0)))


def _electra_metrics(totals: Any, data: Any) -> dict[str, float]:
    """The generator's masked-token loss and accuracy (comparable with a masked LM's), and the
    discriminator's loss and accuracy over every real token, with the share that was replaced."""
    out = _accuracy_metrics(totals, data)
    if len(totals) >= 7 and totals[4] > 0:
        out.update({"disc_loss": float(totals[3] / totals[4]), "disc_accuracy": float(totals[5] / totals[4]),
                    "replaced": float(totals[6] / totals[4])})
    return out


def _classifier(cfg: Any, head: Mapping[str, Any]) -> Any:
    from rotary.model import SequenceClassifier

    if "num_labels" not in head:
        raise RotaryError("a classification checkpoint needs num_labels in its config.json")
    model = SequenceClassifier(cfg, int(head["num_labels"]), head.get("pooling"))
    model.label_names = list(head.get("label_names") or [str(i) for i in range(model.num_labels)])
    return model


def _lm_data(cfg: Any, info: Any) -> Any:
    from rotary.data.lm import prepare_training_data

    return prepare_training_data(cfg, info)


def _seq2seq(cfg: Any, head: Mapping[str, Any]) -> Any:
    from rotary.model import Seq2SeqLM

    return Seq2SeqLM(cfg)


def _seq2seq_data(cfg: Any, info: Any) -> Any:
    from rotary.data.seq2seq_run import prepare_seq2seq_data

    return prepare_seq2seq_data(cfg, info)


def _sft_data(cfg: Any, info: Any) -> Any:
    from rotary.data.sft import prepare_sft_data

    return prepare_sft_data(cfg, info)


def _scored_targets(batch: Any) -> Any:
    """The positions of ``batch[1]`` (targets or labels) that are not IGNORE_INDEX."""
    from rotary.labels import IGNORE_INDEX

    return (batch[1] != IGNORE_INDEX).sum()


def _scored_seq2seq(batch: Any) -> Any:
    from rotary.labels import IGNORE_INDEX

    return (batch[2] != IGNORE_INDEX).sum()


def _sft_inputs(batch: Any) -> dict[str, Any]:
    _, targets, positions, documents = batch
    return {"targets": targets, "position_ids": positions, "document_ids": documents}


def _seq2seq_inputs(batch: Any) -> dict[str, Any]:
    _, attention_mask, labels = batch
    return {"attention_mask": attention_mask, "labels": labels}


def perplexity(loss: float) -> float:
    """exp(loss), clamped where exp overflows a float (an untrained model's loss can be huge)."""
    return math.exp(min(loss, 700.0))


def _causal_metrics(totals: Any, data: Any) -> dict[str, float]:
    loss = float(totals[0] / totals[1])
    # per byte of text, not per token: tokenizers of different sizes compare
    return {"perplexity": perplexity(loss), "bits_per_byte": loss / math.log(2) / data.val_bytes_per_token}


def _accuracy_metrics(totals: Any, data: Any) -> dict[str, float]:
    loss = float(totals[0] / totals[1])
    return {"perplexity": perplexity(loss), "accuracy": float(totals[2] / totals[1])}


def _classification_metrics(totals: Any, data: Any) -> dict[str, float]:
    out = {"accuracy": float(totals[2] / totals[1])}
    if len(totals) > 3:
        out["macro_f1"] = macro_f1(confusion_matrix(totals))
    return out


def confusion_matrix(totals: Any) -> list[list[int]]:
    """The (true x predicted) counts a classifier's statistics end with."""
    flat = [int(v) for v in totals[3:]]
    n = int(round(len(flat) ** 0.5))
    return [flat[i * n:(i + 1) * n] for i in range(n)]


def per_class(confusion: list[list[int]]) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class (0 where a class was never predicted/seen)."""
    out = []
    for k, row in enumerate(confusion):
        tp = row[k]
        predicted = sum(r[k] for r in confusion)
        support = sum(row)
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        out.append({"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": support})
    return out


def macro_f1(confusion: list[list[int]]) -> float:
    """The mean F1 over the classes that occur in the truth or the predictions: scikit-learn's
    ``f1_score(average="macro")`` (a class predicted but never true counts with F1 0; a class of
    the label set that is neither is left out). The baselines score with this function too."""
    scores = [c["f1"] for k, c in enumerate(per_class(confusion))
              if c["support"] > 0 or any(row[k] for row in confusion)]
    return sum(scores) / len(scores) if scores else 0.0


def _classification_inputs(batch: Any) -> dict[str, Any]:
    _, attention_mask, token_type_ids, labels = batch
    return {"attention_mask": attention_mask, "token_type_ids": token_type_ids, "labels": labels}


def _scorer(name: str) -> Callable[..., dict[str, Any]]:
    """``rotary.evaluation.runs.<name>``, imported when a run is scored (this module imports no torch)."""

    def score(*args: Any, **kwargs: Any) -> dict[str, Any]:
        from rotary.evaluation import runs

        return getattr(runs, name)(*args, **kwargs)

    score.__name__ = name
    return score


# Class names per row, so that exporting a model finds its row without importing torch here.
_MODEL_CLASS = {"causal_lm": "CausalLM", "masked_lm": "MaskedLM", "classification": "SequenceClassifier",
                "seq2seq": "Seq2SeqLM", "electra": "ElectraPretrainer"}
# Tasks whose models are decoders that generate (a causal LM, and one fine-tuned on conversations).
CAUSAL_TASKS = ("causal_lm", "sft")
# Tasks whose batches are a masked LM's (masked windows, labels at the masked positions).
MASKED_TASKS = ("masked_lm", "electra")

register_task(Task("causal_lm", _causal_lm, causal=True, metrics=_causal_metrics, make_data=_lm_data,
                   fixed_windows=True, score=_scorer("score_causal_lm"), eval_options=("stride", "seq_len"),
                   metric_names=("loss", "perplexity", "bits_per_byte"), help="next-token prediction (decoder)"))
register_task(Task("masked_lm", _masked_lm, causal=False, metrics=_accuracy_metrics, make_data=_lm_data,
                   fixed_windows=True, scored=_scored_targets, score=_scorer("score_masked_lm"),
                   eval_options=("seq_len", "seed"),
                   metric_names=("loss", "perplexity", "accuracy"), help="masked-token prediction (encoder, RoFormer)"))
register_task(Task("electra", _electra, causal=False, metrics=_electra_metrics, make_data=_lm_data,
                   fixed_windows=True, head_keys=("generator_fraction", "disc_weight"),
                   metric_names=("loss", "perplexity", "accuracy", "disc_loss", "disc_accuracy"),
                   help="ELECTRA replaced-token detection: a small generator MLM and the discriminator "
                        "encoder that fine-tunes (Clark et al. 2020)"))
register_task(Task("seq2seq", _seq2seq, causal=False, metrics=_accuracy_metrics, make_data=_seq2seq_data,
                   inputs=_seq2seq_inputs, scored=_scored_seq2seq, metric_names=("loss", "perplexity", "accuracy"),
                   score=_scorer("score_seq2seq"), eval_options=("num_beams",),
                   help="translation: an encoder-decoder trained on sentence pairs"))
register_task(Task("sft", _causal_lm, causal=True, metrics=_accuracy_metrics, make_data=_sft_data,
                   inputs=_sft_inputs, scored=_scored_targets, metric_names=("loss", "perplexity", "accuracy"),
                   score=_scorer("score_sft"),
                   help="supervised fine-tuning of a decoder on conversations: the loss on the assistant's "
                        "tokens only (init_from a causal_lm run)"))
# Trained by fine-tuning (rotary.train.finetune builds its data and model), not from a corpus by `train`.
register_task(Task("classification", _classifier, causal=False, metrics=_classification_metrics,
                   inputs=_classification_inputs, head_keys=("num_labels", "pooling", "label_names"),
                   metric_names=("loss", "accuracy", "macro_f1"), count_name="examples",
                   score=_scorer("score_classification"), eval_options=("baseline",),
                   help="sequence (pair) classification (trained by `rotary finetune`)"))


# The verb that uses a run of each task: what a wrong-kind error tells the user to run instead.
USED_BY = {"causal_lm": "`rotary generate` or `rotary serve`", "sft": "`rotary chat` or `rotary serve`",
           "masked_lm": "`rotary fill-mask`",
           "electra": "`rotary finetune --from RUN` (its discriminator)", "seq2seq": "`rotary translate`",
           "classification": "`rotary classify`"}


def use_instead(task: str | None) -> str:
    """': use `rotary fill-mask` on it' for a run of ``task``, '' for an unknown task."""
    verb = USED_BY.get(task or "")
    return f": use {verb} on it" if verb else ""


def head_settings(task: Task, config: Mapping[str, Any]) -> dict[str, Any]:
    """The head keys of ``task`` found in a checkpoint's config.json."""
    return {k: config[k] for k in task.head_keys if k in config}


def model_head_settings(model: Any) -> dict[str, Any]:
    """The head keys a checkpoint of ``model`` must record."""
    return {k: getattr(model, k) for k in task_of_model(model).head_keys if hasattr(model, k)}


__all__ = ["TASKS", "Task", "get_task", "register_task", "task_of_model", "trainable_tasks"]
