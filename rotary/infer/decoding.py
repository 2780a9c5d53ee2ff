"""Decoding for the encoder-decoder: greedy and beam search, batched, with the decoder's KV cache
and the cross-attention keys/values computed once per source.

Beam search keeps transformers' semantics, so that converted Marian weights translate the same
under both (tested against ``MarianMTModel.generate(num_beams=..., length_penalty=...)``):

* every step takes the 2K best (beam, token) continuations over all K beams;
* a continuation ending in EOS among the K best becomes a finished hypothesis scored
  ``sum log p / length ** length_penalty`` (length = generated tokens, EOS included); the best
  K that did not end continue;
* a source is done when no running beam can beat its worst finished hypothesis (the best running
  score divided by the current length: transformers' default heuristic, ``early_stopping=False``),
  or, with ``early_stopping=True``, as soon as it has K finished hypotheses, or, with
  ``early_stopping="never"``, when no running beam could win even at the longest length (the
  bound is exact for a positive length penalty; transformers' semantics, also for <= 0);
* the last allowed token is forced to be EOS (``force_eos``, as Marian's ``forced_eos_token_id``).

``num_beams=1`` is greedy decoding, as in transformers. The step loop is the only Python loop:
everything inside a step is batched over sources and beams.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rotary.errors import RotaryError

MAX_BEAMS = 128
NEG = -1.0e9  # "impossible", as transformers uses it (finite, so sums stay ordered)

# (decoder input ids (N, 1), rows to keep from the previous step or None) -> next-token logits (N, vocab)
StepFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class Hypotheses:
    """The best hypothesis per source: token ids after the start token (EOS kept if reached) and
    its score (beam search: length-normalised log-probability; greedy: summed log-probability)."""

    tokens: list[list[int]]
    scores: list[float]


def max_new_tokens_for(src_lengths: torch.Tensor, *, max_new_tokens: int | None, max_length_ratio: float | None,
                       limit: int) -> int:
    """How many tokens to generate: ``max_new_tokens``, or ``ceil(ratio * longest source) + 10``
    (fairseq's max_len_a/b idea), never more than the decoder's ``limit``."""
    if max_new_tokens is None and max_length_ratio is None:
        max_length_ratio = 2.0
    if max_new_tokens is None:
        if max_length_ratio <= 0:
            raise RotaryError(f"max_length_ratio must be positive, got {max_length_ratio}")
        max_new_tokens = math.ceil(max_length_ratio * int(src_lengths.max())) + 10
    if max_new_tokens < 1:
        raise RotaryError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return min(max_new_tokens, limit)


def greedy_core(step: StepFn, batch: int, start_id: int, eos_id: int | None, max_new_tokens: int, *,
                force_eos: bool = True, device: torch.device | str = "cpu") -> Hypotheses:
    tokens = torch.full((batch, 1), start_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    score = torch.zeros(batch, dtype=torch.float64, device=device)
    out = []
    for t in range(max_new_tokens):
        logp = F.log_softmax(step(tokens, None).float(), dim=-1)  # (B, V)
        if force_eos and eos_id is not None and t == max_new_tokens - 1:
            logp = _only_eos(logp, eos_id)
        nxt = logp.argmax(-1)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        score += torch.where(done, 0.0, logp.gather(1, nxt[:, None])[:, 0].double())
        out.append(nxt)
        if eos_id is not None:
            done |= nxt == eos_id
            if bool(done.all()):
                break
        tokens = nxt[:, None]
    rows = torch.stack(out, 1).tolist()  # (B, steps)
    if eos_id is not None:
        rows = [r[: r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return Hypotheses(rows, score.tolist())


def _only_eos(logp: torch.Tensor, eos_id: int) -> torch.Tensor:
    forced = torch.full_like(logp, -math.inf)
    forced[:, eos_id] = 0.0
    return forced


def beam_core(step: StepFn, batch: int, num_beams: int, start_id: int, eos_id: int, max_new_tokens: int, *,
              length_penalty: float = 1.0, early_stopping: bool | str = False, force_eos: bool = True,
              pad_id: int = 0, device: torch.device | str = "cpu") -> Hypotheses:
    """Beam search over ``step`` for ``batch`` sources x ``num_beams`` rows (source-major: row
    b * K + k is beam k of source b); ``step`` receives the rows to keep after each reordering."""
    B, K, L = batch, num_beams, max_new_tokens
    if early_stopping not in (True, False, "never"):
        raise RotaryError(f"early_stopping must be true, false or \"never\", got {early_stopping!r}")
    never = early_stopping == "never"
    early_stopping = early_stopping is True
    keep = 2 * K
    running = torch.full((B, K, L + 1), pad_id, dtype=torch.long, device=device)
    running[:, :, 0] = start_id
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # all beams start identical: only the first may spread at step one
    finished = running.clone()
    finished_scores = torch.full((B, K), NEG, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_top_k = torch.arange(keep, device=device) < K  # (2K,) only the K best may finish
    offsets = torch.arange(B, device=device)[:, None] * K  # (B, 1)
    reorder = None
    for t in range(L):
        logits = step(running[:, :, t].reshape(B * K, 1), reorder).float()  # (B*K, V)
        logp = F.log_softmax(logits, dim=-1)
        if force_eos and t == L - 1:
            logp = _only_eos(logp, eos_id)
        V = logp.shape[-1]
        total = (logp.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
        top_scores, top_index = total.topk(keep, dim=-1)  # (B, 2K), best first
        parent = top_index // V  # the beam each continuation extends
        token = top_index % V
        candidates = running.gather(1, parent[:, :, None].expand(-1, -1, L + 1)).clone()  # (B, 2K, L + 1)
        candidates[:, :, t + 1] = token
        ends = (token == eos_id) | (t == L - 1)  # (B, 2K): EOS, or the length limit

        # the K best continuations that did not end run on
        alive = top_scores + ends.float() * NEG
        chosen = alive.topk(K, dim=-1).indices  # (B, K)
        running = candidates.gather(1, chosen[:, :, None].expand(-1, -1, L + 1))
        running_scores = alive.gather(1, chosen)
        reorder = (offsets + parent.gather(1, chosen)).view(-1)  # (B*K,) rows of the cache to keep

        # finished hypotheses: the K best so far among the old and the ones that just ended
        new_scores = top_scores / ((t + 1) ** length_penalty)
        if early_stopping:
            new_scores = new_scores + is_finished.all(-1, keepdim=True).float() * NEG
        new_scores = new_scores + (~improvable).float() * NEG + (~(ends & in_top_k)).float() * NEG
        merged_scores = torch.cat([finished_scores, new_scores], dim=1)  # (B, 3K)
        best = merged_scores.topk(K, dim=-1).indices
        merged = torch.cat([finished, candidates], dim=1)
        finished = merged.gather(1, best[:, :, None].expand(-1, -1, L + 1))
        finished_scores = merged_scores.gather(1, best)
        is_finished = torch.cat([is_finished, ends & in_top_k], dim=1).gather(1, best)

        # can a running beam still beat the worst finished one? (transformers' heuristic)
        # "never": the best score a running beam could reach, at the longest length if that helps it
        length = L if never and length_penalty > 0 else t + 1
        best_possible = running_scores[:, :1] / (length ** length_penalty)
        worst = torch.where(is_finished, finished_scores.min(-1, keepdim=True).values, NEG)
        improvable = improvable & (best_possible > worst).any(-1, keepdim=True)
        if not bool(improvable.any()) or (early_stopping and bool(is_finished.all())) or bool(ends.all()):
            break
    rows = finished[:, 0, 1:].tolist()
    rows = [r[: r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return Hypotheses(rows, finished_scores[:, 0].tolist())


@torch.no_grad()
def translate_ids(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                  num_beams: int = 1, length_penalty: float = 1.0, max_new_tokens: int | None = None,
                  max_length_ratio: float | None = None, eos_id: int | None = None,
                  early_stopping: bool | str = False,
                  force_eos: bool = True) -> Hypotheses:
    """Decode every source row of ``input_ids`` (B, S) with a ``Seq2SeqLM``: the encoder runs
    once, each beam's decoder reads the cache. ``eos_id`` ends a hypothesis (required for beams)."""
    from rotary.model.seq2seq import Seq2SeqLM

    if not isinstance(model, Seq2SeqLM):
        raise RotaryError(f"translation needs an encoder-decoder (Seq2SeqLM), got a {type(model).__name__}")
    if not 1 <= num_beams <= MAX_BEAMS:
        raise RotaryError(f"num_beams must be between 1 and {MAX_BEAMS}, got {num_beams} (each beam is a "
                          "decoder pass per step; more than a few dozen do not improve translations)")
    if not math.isfinite(length_penalty):
        raise RotaryError(f"length_penalty must be a finite number, got {length_penalty}")
    if num_beams > 1 and eos_id is None:
        raise RotaryError("beam search needs an eos_id to know when a hypothesis ends")
    was_training = model.training
    model.eval()
    try:
        device = model.device
        input_ids = input_ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        lengths = attention_mask.sum(-1) if attention_mask is not None else torch.full(
            (input_ids.shape[0],), input_ids.shape[1])
        cfg = model.config
        limit = cfg.max_seq_len  # the longest the decoder was built (and trained) for, as for sources
        if max_new_tokens is not None and max_new_tokens > limit:
            raise RotaryError(f"max_new_tokens must be at most {limit} (the decoder's max_seq_len), "
                              f"got {max_new_tokens}")
        steps = max_new_tokens_for(lengths, max_new_tokens=max_new_tokens, max_length_ratio=max_length_ratio,
                                   limit=limit)
        B, K = input_ids.shape[0], num_beams
        memory = model.encode(input_ids, attention_mask)  # (B, S, d), once per source
        if K > 1:  # every beam of a source reads the same encoder output
            memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, d)
            attention_mask = attention_mask.repeat_interleave(K, dim=0) if attention_mask is not None else None
        cache = model.new_cache(attention_mask, B * K, steps + 1)

        def step(tokens: torch.Tensor, keep_rows: torch.Tensor | None) -> torch.Tensor:
            if keep_rows is not None:
                cache.reorder(keep_rows)
            return model.decode(tokens, memory, cache=cache, last_only=True)[:, -1]

        start = model.decoder_start_token_id
        if K == 1:
            return greedy_core(step, B, start, eos_id, steps, force_eos=force_eos, device=device)
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else eos_id
        return beam_core(step, B, K, start, eos_id, steps, length_penalty=length_penalty,
                         early_stopping=early_stopping, force_eos=force_eos, pad_id=pad, device=device)
    finally:
        model.train(was_training)
