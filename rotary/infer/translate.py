"""Text in, text out for an encoder-decoder run: ``rotary.load(run).translate(["..."])``, and
BLEU / chrF with sacrebleu (its standard 13a tokenisation; ``zh`` for Chinese targets).

Sources are encoded as in training (the run's source tokenizer, EOS at the end; translations
are decoded with its target tokenizer, the same one for a joint vocabulary) and cut to the encoder's
``max_seq_len`` tokens, the count of cut sources reported by :func:`translate_texts`' caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rotary.errors import RotaryError


@dataclass
class Translations:
    texts: list[str]
    scores: list[float]
    truncated_sources: int  # sources longer than the encoder's max_seq_len, cut to it


def encode_sources(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[list[list[int]], int]:
    from rotary.data.seq2seq import special_ids

    _, eos = special_ids(tokenizer)
    rows, cut = [], 0
    for ids in tokenizer.encode_batch(list(texts)):
        ids = ids + [eos]
        if len(ids) > max_len:
            ids, cut = ids[: max_len - 1] + [eos], cut + 1
        rows.append(ids)
    return rows, cut


def translate_texts(pre: Any, texts: Sequence[str], *, num_beams: int = 5, length_penalty: float = 1.0,
                    max_new_tokens: int | None = None, max_length_ratio: float | None = None,
                    batch_size: int = 32) -> Translations:
    """Translate ``texts`` with a loaded seq2seq run (``rotary.load``), batch by batch, longest
    sources together (so little padding), in the order given."""
    from rotary.data.seq2seq import special_ids
    from rotary.infer.decoding import translate_ids

    if pre.task != "seq2seq":
        from rotary.tasks import use_instead

        use = use_instead(pre.task) or ": translate needs an encoder-decoder"
        raise RotaryError(f"{pre.path} is a {pre.task or 'unknown'} run, not a translation (seq2seq) run{use}")
    if isinstance(texts, str):
        texts = [texts]
    if not texts or any(not t.strip() for t in texts):
        raise RotaryError("nothing to translate: every text must be non-empty")
    if batch_size < 1:
        raise RotaryError(f"batch_size must be at least 1, got {batch_size}")
    pad, _ = special_ids(pre.tokenizer)
    _, eos = special_ids(pre.target_tokenizer)  # hypotheses end with the target side's EOS
    rows, cut = encode_sources(pre.tokenizer, texts, int(pre.model.config.max_seq_len))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out_text: list[str] = [""] * len(rows)
    out_score: list[float] = [0.0] * len(rows)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(rows[i])] = torch.tensor(rows[i])
            mask[j, : len(rows[i])] = 1
        hyps = translate_ids(pre.model, ids, mask, num_beams=num_beams, length_penalty=length_penalty,
                             max_new_tokens=max_new_tokens, max_length_ratio=max_length_ratio, eos_id=eos)
        for j, i in enumerate(idx):
            tokens = [t for t in hyps.tokens[j] if t != eos]
            out_text[i], out_score[i] = pre.target_tokenizer.decode(tokens).strip(), hyps.scores[j]
    return Translations(out_text, out_score, cut)


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
              target_lang: str | None) -> dict[str, Any]:
    """Corpus BLEU and chrF of ``hypotheses`` against every reference of each (any number)."""
    try:
        import sacrebleu
    except ImportError:  # pragma: no cover - a dependency of rotary
        raise RotaryError("BLEU needs sacrebleu: pip install sacrebleu==2.5.1") from None
    width = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    tokenize = "zh" if target_lang == "zh" else "13a"
    bleu, chrf = sacrebleu.metrics.BLEU(tokenize=tokenize), sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(list(hypotheses), streams), chrf.corpus_score(list(hypotheses), streams)
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()), "bleu_detail": str(b), "references_per_source": width,
            "sentences": len(hypotheses)}
