"""``rotary eval``: score a finished run on a split of a corpus.

Each task's row in ``rotary.tasks`` names its scorer here (``Task.score``) and the options that
apply to its runs (``Task.eval_options``); ``run_eval`` loads the run, checks the options against
the row, calls the scorer and writes ``eval.json``. The metrics themselves are in
``rotary.evaluation.metrics``, shared with the demo's table and the experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.evaluation.metrics import causal_documents_metrics, evaluate_classifier, masked_lm_metrics, seq2seq_metrics


@dataclass(frozen=True)
class EvalOptions:
    """What ``rotary eval`` was given, defaults filled in; each scorer reads the fields it needs."""

    run: str | Path
    batch_size: int = 8
    device: str = "auto"
    corpus_options: dict[str, Any] = field(default_factory=dict)
    stride: int | None = None
    seq_len: int | None = None
    seed: int = 0
    num_beams: int = 5
    baseline: bool = True


def run_recipe(pre: Any) -> dict[str, Any]:
    """The recipe of the run that made ``pre`` (its recipe.yaml beside the checkpoint), or {}."""
    import yaml

    for d in (pre.path, pre.path.parent, pre.path.parent.parent):
        recipe = Path(d) / "recipe.yaml"
        if recipe.is_file():
            return yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    return {}


def run_data_options(pre: Any, corpus: str) -> dict[str, Any]:
    """The corpus options of the run that made ``pre`` when it was trained on ``corpus``: scoring
    a run uses its own direction and split."""
    data = run_recipe(pre).get("data") or {}
    if data.get("corpus") != corpus:
        return {}
    opts = dict(data.get("corpus_options") or {})
    if data.get("val_fraction") is not None:
        opts["val_fraction"] = data["val_fraction"]
    return opts


def eval_window(pre: Any, seq_len: int | None = None) -> int:
    """Tokens per evaluation window: ``seq_len`` when given, else the ``seq_len`` the run trained
    at (a model trained on 64-token windows is scored on 64-token windows), else max_seq_len."""
    limit = int(pre.model.config.max_seq_len)
    if seq_len is not None:
        if not 0 < seq_len:
            raise RotaryError(f"--seq-len must be positive, got {seq_len}")
        return seq_len  # beyond max_seq_len only for a length-extrapolation study (RoPE has no table)
    trained = run_recipe(pre).get("seq_len")
    return min(int(trained), limit) if isinstance(trained, int) and trained > 0 else limit


# -- the scorers named by the task table ---------------------------------------------------------


def _split_documents(corpus: str, split: str, opts: EvalOptions) -> list[str]:
    from rotary.data.sources import load_corpus

    docs = list(load_corpus(corpus, **opts.corpus_options).documents(split))
    if not docs:
        raise RotaryError(f"the {split} split of {corpus} is empty")
    return docs


def score_causal_lm(pre: Any, corpus: str, split: str, opts: EvalOptions) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of every token of the split (sliding windows with ``stride``)."""
    docs = _split_documents(corpus, split, opts)
    return causal_documents_metrics(pre, docs, stride=opts.stride, batch_size=opts.batch_size,
                                    seq_len=eval_window(pre, opts.seq_len))


def score_masked_lm(pre: Any, corpus: str, split: str, opts: EvalOptions) -> dict[str, Any]:
    """Masked-token top-1 / top-5 accuracy with masks fixed by ``seed``."""
    from rotary.data.encode import encode_documents

    tokens, _ = encode_documents(pre.tokenizer, _split_documents(corpus, split, opts), "int64", False)
    return masked_lm_metrics(pre.model, pre.tokenizer, tokens, seq_len=eval_window(pre, opts.seq_len),
                             seed=opts.seed, batch_size=opts.batch_size)


def score_seq2seq(pre: Any, corpus: str, split: str, opts: EvalOptions) -> dict[str, Any]:
    """BLEU / chrF of beam-search translations and the teacher-forced loss, in the run's own direction."""
    from rotary.data.parallel import check_parallel_options, load_parallel

    given = {**run_data_options(pre, corpus), **opts.corpus_options}  # the run's direction unless overridden
    if "max_documents" in given:
        given["max_pairs"] = given.pop("max_documents")
    for key in ("text_field", "split_by"):  # text-corpus options with no meaning for pairs
        if given.pop(key, None) is not None:
            raise RotaryError(f"--{key.replace('_', '-')} does not apply to parallel data")
    parallel = load_parallel(corpus, **check_parallel_options(given, "--corpus-opt"))
    return seq2seq_metrics(pre, parallel, split, num_beams=opts.num_beams, batch_size=opts.batch_size)


SFT_ANSWERS = 100  # held-out conversations answered greedily (the loss covers the whole split)
SFT_MAX_NEW_TOKENS = 64


def score_sft(pre: Any, corpus: str, split: str, opts: EvalOptions) -> dict[str, Any]:
    """The assistant-token loss, perplexity and accuracy over the split's conversations (what SFT
    optimises), then greedy answers to the last user turn of up to ``SFT_ANSWERS`` of them (those
    whose prompt and answer budget fit the context, evenly spread): chrF against the reference
    reply (sacrebleu, characters: any language), exact match, and the share that end their turn."""
    import sacrebleu

    from rotary.data.sources.conversations import load_conversations
    from rotary.evaluation.metrics import assistant_token_metrics

    conversations = load_conversations(corpus, **opts.corpus_options).split(split)
    if not conversations:
        raise RotaryError(f"the {split} split of {corpus} holds no conversations")
    metrics = assistant_token_metrics(pre.model, pre.tokenizer, conversations, batch_size=opts.batch_size)
    answerable = [m for m in conversations if m[-1]["role"] == "assistant"
                  and len(pre.chat_prompt(m[:-1])) + SFT_MAX_NEW_TOKENS <= pre.context]
    chosen = answerable[::max(1, len(answerable) // SFT_ANSWERS)][:SFT_ANSWERS]
    rows = []
    for messages in chosen:
        done = pre.chat(messages[:-1], SFT_MAX_NEW_TOKENS, temperature=0)
        rows.append((messages[-2]["content"], done.text.strip(), messages[-1]["content"].strip(),
                     done.finish_reason == "stop"))
    if rows:
        hyps, refs = [r[1] for r in rows], [r[2] for r in rows]
        metrics.update({"answered": len(rows), "chrF": sacrebleu.corpus_chrf(hyps, [refs]).score,
                        "exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(rows),
                        "ends_turn": sum(r[3] for r in rows) / len(rows),
                        "samples": [{"source": p, "translation": h, "references": [r]} for p, h, r, _ in rows[:3]]})
    return metrics


def score_classification(pre: Any, corpus: str, split: str, opts: EvalOptions) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class scores, the confusion matrix, and the char TF-IDF + LR bar."""
    from rotary.data.sources import load_labelled

    labelled = load_labelled(corpus, **opts.corpus_options)
    metrics = evaluate_classifier(opts.run, labelled.split(split), labelled.label_names, pair=labelled.pair,
                                  batch_size=opts.batch_size, device=opts.device)
    if opts.baseline:
        from rotary.baselines import baseline as classical

        metrics["baseline"] = classical(labelled.split("train"), labelled.split("val"), labelled.split(split),
                                        len(labelled.label_names))
    return metrics


# -- rotary eval ---------------------------------------------------------------------------------

_EVAL_FLAGS = {"stride": "--stride", "seq_len": "--seq-len", "seed": "--seed", "num_beams": "--beam",
               "baseline": "--no-baseline"}


def check_eval_options(task: str, **given: Any) -> None:
    """A one-line error for an option (not None) that does not apply to a ``task`` run."""
    from rotary.tasks import TASKS, get_task

    applies = get_task(task).eval_options
    for name, value in given.items():
        if value is not None and name not in applies:
            runs = " or ".join(t.name for t in TASKS.values() if name in t.eval_options)
            raise RotaryError(f"{_EVAL_FLAGS[name]} ({name}=) applies to a {runs} run; this run is a {task}")


def run_eval(run: str | Path, corpus: str, split: str = "val", *, stride: int | None = None,
             seed: int | None = None, batch_size: int = 8, device: str = "auto", out: str | Path | None = None,
             corpus_options: dict[str, Any] | None = None, num_beams: int | None = None,
             seq_len: int | None = None, baseline: bool | None = None,
             quantize: str | None = None) -> dict[str, Any]:
    """Score ``run`` on ``corpus``'s ``split``; writes ``eval.json`` (and for a classifier
    ``confusion.png``) into ``out`` (default: the run directory). Returns the metrics. Language
    models are scored in windows of ``seq_len`` tokens (default: the run's training seq_len); a
    masked LM on masks fixed by ``seed`` (default 0); a translation model with beams of
    ``num_beams`` (default 5). A classifier's record holds the char TF-IDF + LR bar on the same
    splits unless ``baseline=False``. ``quantize="int8"`` scores the model with int8 weights, as
    ``rotary generate/serve --quantize int8`` decode with. An option given for another kind of
    run is an error."""
    import json

    from rotary.infer.pretrained import load
    from rotary.io import atomic_write_text
    from rotary.tasks import USED_BY, get_task

    pre = load(run, device=device, quantize=quantize)
    task = get_task(pre.task)
    if task.score is None:
        raise RotaryError(f"rotary eval does not score an {pre.task} run: use {USED_BY.get(pre.task, 'its own verb')}")
    check_eval_options(pre.task, stride=stride, seq_len=seq_len, seed=seed, num_beams=num_beams, baseline=baseline)
    opts = EvalOptions(run=run, batch_size=max(batch_size, 1), device=device, corpus_options=dict(corpus_options or {}),
                       stride=stride, seq_len=seq_len, seed=0 if seed is None else seed,
                       num_beams=5 if num_beams is None else num_beams, baseline=baseline is not False)
    metrics = task.score(pre, corpus, split, opts)
    record = {"run": str(run), "checkpoint": str(pre.path), "task": pre.task, "corpus": corpus, "split": split,
              **({"quantize": quantize} if quantize else {}), **metrics}
    out_dir = Path(out) if out is not None else Path(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "eval.json", json.dumps(record, indent=2, ensure_ascii=False))
    if "confusion" in metrics:
        from rotary.train.logging import plot_confusion

        record["confusion_png"] = str(plot_confusion(metrics["confusion"], metrics["label_names"],
                                                     out_dir / "confusion.png"))
    return record
