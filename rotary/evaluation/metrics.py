"""The metrics of a finished model on a split: the numbers a paper table needs.

- causal LM: loss, perplexity and bits per byte over the whole split; ``stride`` < window gives a
  sliding-window evaluation in which every token is scored once, with up to ``seq_len`` tokens of
  context (the transformers perplexity guide's pitfall -- overlapping tokens scored twice -- is
  avoided by scoring only each window's new tokens);
- masked LM: masked-token accuracy top-1 and top-5, with masks fixed by a seed;
- classifier: accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix, and a
  bootstrap 95% interval of the accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX
from rotary.tasks import perplexity


def bootstrap_interval(correct: np.ndarray, *, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the accuracy over resamples of the examples."""
    if len(correct) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(rounds, len(correct)))  # (rounds, n)
    accs = correct[idx].mean(axis=1)
    return float(np.quantile(accs, 0.025)), float(np.quantile(accs, 0.975))


@torch.no_grad()
def classifier_predictions(pre: Any, examples: Sequence[Any], *, pair: bool, batch_size: int = 32) -> np.ndarray:
    """The predicted label of each example (texts truncated to the model's max_seq_len)."""
    from rotary.data.classification import ClassificationDataset, classification_batches

    rows = [(e.text, e.text_pair, e.label) if pair else (e.text, e.label) for e in examples]
    # the fine-tune's own max_len: test texts are cut as the validation texts were
    max_len = int(pre.config.get("max_len") or pre.model.config.max_seq_len)
    dataset = ClassificationDataset(rows, pre.tokenizer, max_len, pair=pair)
    preds = []
    device = pre.model.device
    for batch in classification_batches(dataset, batch_size, shuffle=False):
        logits = pre.model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           token_type_ids=batch["token_type_ids"].to(device))
        preds.append(logits.argmax(-1).cpu().numpy())
    return np.concatenate(preds)


def classification_report(labels: np.ndarray, preds: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    from rotary.tasks import macro_f1, per_class

    n = len(label_names)
    confusion = np.zeros((n, n), dtype=np.int64)  # (true, predicted)
    np.add.at(confusion, (labels, preds), 1)
    table = confusion.tolist()
    correct = (labels == preds).astype(np.float64)
    lo, hi = bootstrap_interval(correct)
    classes = per_class(table)
    return {"examples": int(len(labels)), "accuracy": float(correct.mean()) if len(correct) else math.nan,
            "accuracy_95ci": [lo, hi], "macro_f1": macro_f1(table),
            "per_class": {name: c for name, c in zip(label_names, classes)},
            "label_names": list(label_names), "confusion": table}


def evaluate_classifier(run: str | Path, examples: Sequence[Any], label_names: Sequence[str], *, pair: bool = False,
                        batch_size: int = 32, device: str = "auto") -> dict[str, Any]:
    """Score a classifier run on labelled ``examples``."""
    from rotary.infer.pretrained import load

    pre = load(run, device=device)
    if pre.task != "classification":
        raise RotaryError(f"{run} is a {pre.task} run, not a classifier: evaluate it without labels")
    if pre.model.num_labels != len(label_names):
        raise RotaryError(f"{run} predicts {pre.model.num_labels} labels, the data has {len(label_names)}")
    names = pre.config.get("label_names") or list(label_names)
    if list(names) != list(label_names):
        raise RotaryError(f"the run was trained on labels {names}, the data has {list(label_names)}")
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    return classification_report(labels, classifier_predictions(pre, examples, pair=pair, batch_size=batch_size),
                                  label_names)


@torch.no_grad()
def causal_lm_metrics(model: Any, tokens: np.ndarray, *, seq_len: int, stride: int | None, bytes_total: int,
                      batch_size: int = 8) -> dict[str, float]:
    """Loss, perplexity, bits per byte over ``tokens``: windows of ``seq_len`` + 1 tokens that
    start every ``stride`` tokens; each window scores only the tokens no earlier window scored,
    so every token after the first is scored exactly once."""
    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise RotaryError(f"--stride must be in 1..{seq_len} (the window), got {stride}")
    n = len(tokens)
    if n < 2:
        raise RotaryError("the split has fewer than 2 tokens: nothing to score")
    # Targets are tokens 1..n-1. A window starting at b reads tokens b..hi-1 and can score targets
    # b+1..hi (hi <= b + seq_len); it scores only those after the previous window's last one.
    windows = []  # (start, last target, first target)
    b, done = 0, 0
    while done < n - 1:
        hi = min(b + seq_len, n - 1)
        windows.append((b, hi, done + 1))
        done, b = hi, b + stride
    loss_sum, count = 0.0, 0
    device = model.device
    spans = np.asarray(windows, dtype=np.int64)  # (windows, 3): start, last target, first target
    tokens = np.asarray(tokens, dtype=np.int64)
    for i in range(0, len(spans), batch_size):
        b, hi, first = spans[i:i + batch_size].T  # (rows,) each
        width = int((hi - b).max())
        pos = b[:, None] + np.arange(width)  # (rows, width): the token each position reads
        real = pos < hi[:, None]  # short rows are padded at the end
        safe = np.minimum(pos, len(tokens) - 2)
        x = np.where(real, tokens[safe], 0)
        # the target of a position is the next token; scored once: only after the previous window's last
        y = np.where(real & (pos + 1 >= first[:, None]), tokens[safe + 1], IGNORE_INDEX)
        stats = model(torch.from_numpy(x).to(device), targets=torch.from_numpy(y).to(device),
                      return_stats=True).cpu()
        loss_sum += float(stats[0])
        count += int(stats[1])
    loss = loss_sum / count
    return {"loss": loss, "perplexity": perplexity(loss), "tokens_scored": count,
            "bits_per_byte": loss_sum / math.log(2) / bytes_total, "stride": stride, "seq_len": seq_len,
            "windows": len(windows)}


def causal_documents_metrics(pre: Any, docs: Sequence[str], *, stride: int | None = None,
                             batch_size: int = 8, seq_len: int | None = None) -> dict[str, float]:
    """:func:`causal_lm_metrics` of a loaded causal LM (``rotary.load``) over documents, each
    followed by the separator; the bytes counted are the documents' UTF-8 bytes and separators.
    Windows are ``seq_len`` tokens (default: the model's max_seq_len; longer ones test length
    extrapolation)."""
    from rotary.data.encode import encode_documents

    tokens, _ = encode_documents(pre.tokenizer, list(docs), "int64", False)
    # a separator first, so the split's first token is scored too: every byte counted is predicted
    tokens = np.concatenate([np.asarray([pre.tokenizer.eos_id], dtype=tokens.dtype), tokens])
    n_bytes = sum(len(d.encode("utf-8")) for d in docs) + len(docs)  # the separators count as bytes
    return causal_lm_metrics(pre.model, tokens, seq_len=seq_len or pre.model.config.max_seq_len, stride=stride,
                             bytes_total=n_bytes, batch_size=batch_size)


@torch.no_grad()
def masked_lm_metrics(model: Any, tokenizer: Any, tokens: np.ndarray, *, seq_len: int, seed: int = 0,
                      mlm_probability: float = 0.15, batch_size: int = 8) -> dict[str, float]:
    """Masked-token accuracy top-1 and top-5 over non-overlapping windows of ``tokens``, with the
    masks drawn from ``seed`` (the same masks every time, for every model with this tokenizer)."""
    from rotary.data.masking import mask_tokens

    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise RotaryError(f"the split has {len(tokens)} tokens, fewer than one window of {seq_len}")
    windows = torch.from_numpy(tokens[: n_windows * seq_len].astype(np.int64)).view(n_windows, seq_len)
    g = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(windows, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                                 special_ids=tokenizer.special_ids, generator=g, mlm_probability=mlm_probability)
    top1 = top5 = count = 0
    loss_sum = 0.0
    for i in range(0, n_windows, batch_size):
        x, y = inputs[i:i + batch_size].to(model.device), labels[i:i + batch_size].to(model.device)
        logits = model(x)  # (B, T, vocab)
        keep = y != IGNORE_INDEX
        scored, target = logits[keep].float(), y[keep]
        loss_sum += float(torch.nn.functional.cross_entropy(scored, target, reduction="sum"))
        best5 = scored.topk(min(5, scored.shape[-1]), dim=-1).indices  # (masked, 5)
        top1 += int((best5[:, 0] == target).sum())
        top5 += int((best5 == target[:, None]).any(-1).sum())
        count += int(keep.sum())
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "masked_tokens": count,
            "top1_accuracy": top1 / max(count, 1), "top5_accuracy": top5 / max(count, 1), "seed": seed}


@torch.no_grad()
def seq2seq_metrics(pre: Any, data: Any, split: str, *, num_beams: int = 5, length_penalty: float = 1.0,
                    batch_size: int = 32, samples: int = 5) -> dict[str, Any]:
    """BLEU and chrF (sacrebleu; every reference of a source counts) of beam-search translations of
    ``split``'s distinct sources, the per-token loss of its pairs, and a few sample translations."""
    from rotary.infer.translate import bleu_chrf, encode_sources, translate_texts

    sources, refs = data.references(split)
    if not sources:
        raise RotaryError(f"the {split} split of {data.name} is empty")
    result = translate_texts(pre, sources, num_beams=num_beams, length_penalty=length_penalty,
                             batch_size=batch_size)
    scores = bleu_chrf(result.texts, refs, data.target_lang)
    # teacher-forced loss per target token (EOS included), every pair of the split
    from rotary.data.seq2seq import special_ids

    pad, _ = special_ids(pre.tokenizer)
    pairs = data.pairs(split)
    limit = int(pre.model.config.max_seq_len)
    src_rows, _ = encode_sources(pre.tokenizer, [p.source for p in pairs], limit)
    tgt_rows, _ = encode_sources(pre.target_tokenizer, [p.target for p in pairs], limit)
    loss_sum, count, correct = 0.0, 0, 0
    device = pre.model.device
    for lo in range(0, len(pairs), batch_size):
        s, t = src_rows[lo:lo + batch_size], tgt_rows[lo:lo + batch_size]
        src = torch.full((len(s), max(map(len, s))), pad, dtype=torch.long)
        mask = torch.zeros_like(src)
        labels = torch.full((len(t), max(map(len, t))), IGNORE_INDEX, dtype=torch.long)
        for j, (a, b) in enumerate(zip(s, t)):
            src[j, : len(a)], mask[j, : len(a)], labels[j, : len(b)] = torch.tensor(a), 1, torch.tensor(b)
        stats = pre.model(src.to(device), mask.to(device), labels=labels.to(device), return_stats=True).cpu()
        loss_sum, count, correct = loss_sum + float(stats[0]), count + int(stats[1]), correct + int(stats[2])
    loss = loss_sum / max(count, 1)
    return {**scores, "loss": loss, "perplexity": perplexity(loss), "token_accuracy": correct / max(count, 1),
            "target_tokens": count, "pairs": len(pairs), "num_beams": num_beams, "length_penalty": length_penalty,
            "truncated_sources": result.truncated_sources,
            "samples": [{"source": s, "translation": h, "references": r}
                        for s, h, r in list(zip(sources, result.texts, refs))[:samples]]}


@torch.no_grad()
def assistant_token_metrics(model: torch.nn.Module, tokenizer: Any, conversations: Sequence[Any], *,
                            template: str | None = None, batch_size: int = 32) -> dict[str, float]:
    """Loss, perplexity and next-token accuracy over the assistant's tokens of ``conversations``
    (end-of-turn included), rendered with ``template`` (default: the tokenizer's): what SFT
    optimises, on held-out conversations. A model whose vocabulary lacks the template's tokens
    (a base model) is scored after :meth:`CausalLM.grow_vocab` by the caller. Conversations longer
    than the model's context are skipped and counted."""
    from rotary.data.sft import collate, encode_conversations

    template = template or tokenizer.chat_template
    if template is None:
        raise RotaryError("assistant_token_metrics needs a chat template (the tokenizer has none)")
    examples = encode_conversations(tokenizer, template, conversations, where="eval")
    context = int(model.config.max_seq_len)
    longer = sum(len(e.inputs) > context for e in examples)  # the model cannot read them whole
    examples = [e for e in examples if len(e.inputs) <= context]
    if not examples:
        raise RotaryError(f"every conversation is longer than the model's context of {context} tokens")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    device = next(model.parameters()).device
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    capacity = max(len(e.inputs) for e in examples)
    for lo in range(0, len(examples), batch_size):
        ids, targets, positions, documents = collate(examples[lo:lo + batch_size], pad, packing=False,
                                                     capacity=capacity)
        stats = model(ids.to(device), targets=targets.to(device), position_ids=positions.to(device),
                      document_ids=documents.to(device), return_stats=True)
        totals += stats.cpu().double()[:3]
    loss = float(totals[0] / totals[1])
    return {"loss": loss, "perplexity": perplexity(loss), "accuracy": float(totals[2] / totals[1]),
            "tokens": int(totals[1]), "conversations": len(examples), "skipped_longer_than_context": longer}
