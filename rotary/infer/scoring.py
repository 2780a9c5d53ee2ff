"""Log-probabilities of a given text under a causal LM, from one full forward pass: what a
harness needs to score multiple-choice answers (``echo`` with ``logprobs`` in ``rotary serve``).

Position 0 has no score (nothing precedes it); position t > 0 gets log p(ids[t] | ids[:t]) under
the model's own distribution (the log-softmax of its logits, no temperature or filter), and its
``top`` most likely tokens with theirs.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def prompt_logprobs(model: Any, ids: list[int],
                    top: int = 1) -> tuple[list[float | None], list[list[tuple[int, float]]]]:
    """(per-token log-probabilities, first None; per position the ``top`` (id, logprob) pairs,
    best first, the first empty)."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, T)
    logp = model(x)[0, :-1].float().log_softmax(-1)  # (T - 1, vocab): position t predicts ids[t + 1]
    chosen = logp.gather(1, x[0, 1:, None]).squeeze(1)  # (T - 1,)
    tops: list[list[tuple[int, float]]] = [[]]
    if top > 0 and len(ids) > 1:
        values, indices = logp.topk(min(top, logp.shape[-1]), dim=-1)  # (T - 1, top)
        tops += [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops += [[] for _ in ids[1:]]
    return [None, *chosen.tolist()], tops
