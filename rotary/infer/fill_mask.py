"""Fill-mask: the most likely tokens at each ``[MASK]`` of a text, from a masked LM.

The numbers are transformers' ``FillMaskPipeline``'s: the text is encoded with the template's
special tokens ([CLS] text [SEP]), and at every mask position the logits go through a softmax
over the whole vocabulary, each position on its own (several masks are not decoded jointly).
``format_inline`` writes the candidates into the text the way PaddleNLP's RoFormer example
prints them: ``今天[天气||天||阳光||太阳||空气]很好``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rotary.errors import RotaryError

Candidates = list[tuple[str, float]]
"""The top-k (vocabulary token, probability) pairs of one mask, most likely first."""


def mask_token(tokenizer: Any) -> str:
    """The tokenizer's mask token as written in a text (``[MASK]``); RotaryError if it has none."""
    mask_id = tokenizer.mask_id
    if mask_id is None:
        raise RotaryError("this tokenizer has no [MASK] token: fill-mask needs the tokenizer of a masked LM")
    return tokenizer.id_to_token(mask_id)


def check_fill_mask(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> list[int]:
    """RotaryError for anything :func:`fill_mask` would refuse; returns the text's ids with
    the special tokens."""
    from rotary.model import MaskedLM
    from rotary.tasks import task_of_model, use_instead

    if not isinstance(model, MaskedLM):
        task = task_of_model(model).name
        raise RotaryError(f"fill-mask needs a masked LM (task masked_lm); this run is a {task}{use_instead(task)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RotaryError(f"top_k must be a positive integer, got {top_k!r}")
    mask = mask_token(tokenizer)
    (enc,) = tokenizer.encode_for_model([text])
    ids = list(enc.ids)
    if tokenizer.mask_id not in ids:
        raise RotaryError(f"text {_short(text)} has no {mask}: write {mask} where a token is to be predicted")
    limit = model.config.max_seq_len
    if len(ids) > limit:
        raise RotaryError(f"text {_short(text)} is {len(ids)} tokens with [CLS]/[SEP], more than the model's "
                          f"max_seq_len {limit}: shorten it")
    return ids


def fill_mask(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> list[Candidates]:
    """For each mask token in ``text``, in text order, its ``top_k`` (token, probability) pairs."""
    ids = check_fill_mask(model, tokenizer, text, top_k)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)  # (1, T)
    positions = (input_ids[0] == tokenizer.mask_id).nonzero().squeeze(-1)  # (M,)
    with torch.inference_mode():
        logits = model(input_ids)[0, positions].float()  # (M, vocab)
    # as FillMaskPipeline: softmax over the vocabulary, then the k largest
    probs, top = logits.softmax(dim=-1).topk(min(top_k, logits.shape[-1]))  # (M, k)
    return [[(tokenizer.id_to_token(i), p) for i, p in zip(row_ids, row_p)]
            for row_ids, row_p in zip(top.tolist(), probs.tolist())]


def token_text(token: str) -> str:
    """A vocabulary token as text: WordPiece's continuation mark ``##`` dropped."""
    return token[2:] if token.startswith("##") and len(token) > 2 else token


def format_inline(text: str, predictions: Sequence[Candidates], mask: str = "[MASK]") -> str:
    """``text`` with each ``mask`` replaced by its candidates: ``今天[天气||天||阳光]很好``."""
    parts = text.split(mask)
    if len(parts) - 1 != len(predictions):  # the tokenizer saw another number of masks
        raise RotaryError(f"text {_short(text)} has {len(parts) - 1} {mask} but the model predicted "
                          f"{len(predictions)}")
    out = [parts[0]]
    for candidates, rest in zip(predictions, parts[1:]):
        out.append("[" + "||".join(token_text(t) for t, _ in candidates) + "]" + rest)
    return "".join(out)


def predictions_json(text: str, predictions: Sequence[Candidates], tokenizer: Any) -> dict[str, Any]:
    """One text's predictions as a JSON object: per mask, tokens with ids and probabilities."""
    return {
        "text": text,
        "masks": [
            [{"token": t, "text": token_text(t), "token_id": tokenizer.token_to_id(t), "probability": p}
             for t, p in candidates]
            for candidates in predictions
        ],
    }


def _short(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


__all__ = ["check_fill_mask", "fill_mask", "format_inline", "mask_token", "predictions_json", "token_text"]
