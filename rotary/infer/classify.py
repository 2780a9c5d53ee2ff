"""Classifying texts with a fine-tuned run: labels and class probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rotary.errors import RotaryError


@torch.no_grad()
def classify(pre: Any, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
             batch_size: int = 32) -> list[dict[str, Any]]:
    """For each text (pair): ``{"label": name, "probabilities": {name: p, ...}}``, in order."""
    from rotary.data.classification import ClassificationDataset, classification_batches

    if pre.task != "classification":
        from rotary.tasks import use_instead

        use = use_instead(pre.task)
        raise RotaryError(f"{pre.path} is a {pre.task} run, not a classifier{use} (to classify, fine-tune a "
                          "backbone with `rotary finetune --from RUN`)")
    texts = [texts] if isinstance(texts, str) else list(texts)
    pairs = None if text_pairs is None else ([text_pairs] if isinstance(text_pairs, str) else list(text_pairs))
    if not texts:
        raise RotaryError("no text to classify")
    if pairs is not None:
        if len(pairs) != len(texts):
            raise RotaryError(f"{len(texts)} texts but {len(pairs)} text pairs: give one pair per text")
        if pre.model.config.type_vocab_size < 2:
            raise RotaryError("this model has no segment embeddings for a second text: classify single texts")
    names = pre.config.get("label_names") or [str(i) for i in range(pre.model.num_labels)]
    rows = [(t, p, 0) for t, p in zip(texts, pairs)] if pairs is not None else [(t, 0) for t in texts]
    max_len = int(pre.config.get("max_len") or pre.model.config.max_seq_len)  # as the fine-tune cut its texts
    dataset = ClassificationDataset(rows, pre.tokenizer, max_len, pair=pairs is not None)
    out = []
    device = pre.model.device
    for batch in classification_batches(dataset, batch_size, shuffle=False):
        logits = pre.model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           token_type_ids=batch["token_type_ids"].to(device))
        probs = logits.float().softmax(-1).cpu()
        for row in probs:
            out.append({"label": names[int(row.argmax())],
                        "probabilities": {n: float(v) for n, v in zip(names, row.tolist())}})
    return out
