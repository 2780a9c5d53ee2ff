"""The decode engine: continuous batching over a slot KV cache, shared by offline generation and
``rotary serve``.

A sequence occupies one slot (row) of a :class:`~rotary.model.cache.SlotCache` from its
prefill to its last token. :meth:`Engine.start` prefills new sequences (right-padded together)
into free slots while others are mid-generation; :meth:`Engine.step` runs one forward pass of a
single token for every slot (a fixed shape: free slots compute too and are ignored), samples each
active row with its own settings, and returns one :class:`Event` per active row. A sequence that
finishes frees its slot at once, so a waiting one can join the running batch at the next step.

Levers (measured in ``bench/generate.py``): a step computes only the rows and positions in use
(views of the cache: nothing is copied), without a mask when every row has the same length; the
decode step can be ``torch.compile``d, once per power-of-two row count, with the cache length as
a dynamic dimension so it does not recompile as the cache fills; the cache holds one buffer per
layer, which the compiled step updates in place; and a step syncs with the host once (the
sampled ids).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rotary.errors import RotaryError
from rotary.infer.sampling import SamplingParams, apply_repetition_penalty, draw, filter_logits, row_generator
from rotary.infer.text_stream import TextStream
from rotary.model import CausalLM
from rotary.model.cache import SlotCache


@dataclass
class Request:
    """One sequence to continue: its prompt ids and how to continue it."""

    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    eos_id: int | None = None
    tag: Any = None  # the caller's handle (a request id)
    stop_ids: tuple[int, ...] = ()  # more ids that end it as EOS does (a chat's end-of-turn token)


@dataclass
class Event:
    """One new token of one sequence."""

    slot: int
    tag: Any
    token: int
    text: str  # the text this token released ("" while a character or a possible stop string is incomplete)
    logprob: float | None  # log-probability under the model (before temperature and filtering)
    finish_reason: str | None  # None while running; "stop" (EOS or a stop string) or "length"
    index: int  # how many tokens this sequence has generated, this one included


def decode_step(model: CausalLM, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
    """One token per row through the model against a slot cache: (n, 1) ids -> (n, vocab) logits."""
    h = model.backbone.forward_slots(tokens, cache)
    return model.output_logits(h[:, -1])


def compiled_decode_step(model: CausalLM) -> Any:
    """``decode_step`` compiled once per model and kept on it, over plain tensors (the cache's
    buffers), so every engine of the same shapes reuses the graph instead of recompiling."""
    fn = getattr(model, "_rotary_compiled_decode", None)
    if fn is None:
        flags = SlotCache.kind(model.config)

        def step(tokens: torch.Tensor, k: list[torch.Tensor], v: list[torch.Tensor],
                 lengths: torch.Tensor) -> torch.Tensor:
            return decode_step(model, tokens, SlotCache.of(k, v, lengths, **flags))

        fn = torch.compile(step, dynamic=False)
        object.__setattr__(model, "_rotary_compiled_decode", fn)  # not a submodule: no state_dict entry
    return fn


def decode(model: CausalLM, requests: Sequence[Request], *, tokenizer: Any = None,
           compile: bool = False) -> Iterator[list[Event]]:
    """Decode ``requests`` together in an engine of their size: yields each step's events until
    every sequence has ended, then restores the model's training mode."""
    was_training = model.training
    engine = Engine(model, slots=len(requests), max_len=max(len(r.prompt) + r.max_new_tokens for r in requests),
                    tokenizer=tokenizer, compile=compile)
    try:
        events = engine.start(requests)
        while events:
            yield events
            events = engine.step()
    finally:
        model.train(was_training)


class _Row:
    __slots__ = ("seq", "generated", "stream", "generator", "last", "text")

    def __init__(self, seq: Request, stream: TextStream | None, generator: torch.Generator | None) -> None:
        self.seq = seq
        self.generated = 0
        self.stream = stream
        self.generator = generator
        self.last = 0
        self.text = ""


class Engine:
    """Continuous-batching decoder for a causal LM.

    ``slots`` bounds the sequences decoded together; ``max_len`` the positions of each (prompt +
    new tokens). With a ``tokenizer`` each event carries text and stop strings work.
    ``compile=True`` compiles the decode step (``torch.compile``; once, as shapes never change).
    """

    def __init__(self, model: CausalLM, *, slots: int, max_len: int, tokenizer: Any = None,
                 compile: bool = False, dtype: torch.dtype | None = None) -> None:
        if not isinstance(model, CausalLM):
            raise RotaryError(f"the decode engine needs a causal LM, got a {type(model).__name__}")
        if slots < 1 or max_len < 2:
            raise RotaryError(f"the engine needs at least 1 slot and 2 positions (got {slots}, {max_len})")
        cfg = model.config
        if cfg.position == "learned" and max_len > cfg.max_seq_len:
            max_len = cfg.max_seq_len
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.device
        self.slots = slots
        self.max_len = max_len
        self.dtype = dtype or model.backbone.embed_tokens.weight.dtype
        # Compiled, one spare position: every window (rows x positions <= max_len) is then a strided
        # view of the buffers, so one graph per row count serves every length; a window spanning
        # the whole buffer would be contiguous and compile a second graph (2 per row count hit
        # Dynamo's limit of 8 at 16 slots, and the 16-row step ran eager).
        self.cache = SlotCache(cfg, slots, max_len + (1 if compile else 0), device=self.device, dtype=self.dtype)
        if model.backbone.rope is not None:
            model.backbone.rope.ensure(max_len)
        pos = model.backbone.embed_positions
        if pos is not None and hasattr(pos, "table") and pos.table.shape[0] < max_len:
            pos(torch.arange(1, device=self.device), max_len)  # grow the sinusoidal table now
        self.rows: list[_Row | None] = [None] * slots
        self.lengths = [0] * slots  # host copy of cache.lengths
        self.seen = torch.zeros(slots, cfg.vocab_size, dtype=torch.bool, device=self.device)
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self._compiled = compiled_decode_step(model) if compile else None
        self.compiled = compile
        # active rows per recent decode step (for logs and /metrics), and how many steps ran
        self.batch_sizes: deque[int] = deque(maxlen=4096)
        self.steps = 0

    # -- the two passes -----------------------------------------------------------------------
    def _decode(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """(n, 1) ids -> (n, vocab) logits; writes each row's key/value at its length."""
        if self._compiled is not None:
            if not cache.linear:  # one graph for every window length, not one per length
                for t in (*cache.k, *cache.v):
                    torch._dynamo.mark_dynamic(t, 2)
            return self._compiled(tokens, cache.k, cache.v, cache.lengths)
        return decode_step(self.model, tokens, cache)

    def _window(self, active: list[int]) -> tuple[int, SlotCache]:
        """The rows and positions a decode step computes: rows up to the last active one (a
        power-of-two count when compiled, to bound the graphs), positions up to the longest row
        (the rest is neither read nor masked), and no mask in eager mode when every row in the
        window has the same length."""
        n = active[-1] + 1
        longest = max(self.lengths[i] for i in active) + 1
        if self.compiled:
            n = min(self.slots, 1 << (n - 1).bit_length())
            return n, self.cache.window(n, max(longest, 2))  # the length is a dynamic dimension
        full = len(active) == n and all(self.lengths[i] + 1 == longest for i in active)
        return n, self.cache.window(n, longest, full_rows=full)



    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts, right-padded together, through a temporary slot cache; returns the last
        real token's logits (n, vocab) and that cache."""
        n, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(n, T, dtype=torch.long)
        mask = torch.zeros(n, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.as_tensor(p, dtype=torch.long)
            mask[i, :len(p)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        tmp = SlotCache(self.model.config, n, T, device=self.device, dtype=self.dtype)
        h = self.model.backbone.forward_slots(ids, tmp, new_mask=mask if not bool(mask.all()) else None, empty=True)
        last = (mask.sum(-1) - 1)  # (n,) each row's last real position
        h_last = h[torch.arange(n, device=self.device), last]  # (n, d)
        return self.model.output_logits(h_last), tmp

    # -- public -------------------------------------------------------------------------------
    @property
    def free_slots(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is None]

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    def check(self, seq: Request) -> None:
        """RotaryError if ``seq`` cannot run in this engine (empty prompt, no room for its tokens)."""
        if not seq.prompt:
            raise RotaryError("every prompt needs at least one token")
        if seq.max_new_tokens < 1:
            raise RotaryError(f"max_new_tokens must be >= 1, got {seq.max_new_tokens}")
        need = len(seq.prompt) + seq.max_new_tokens
        if need > self.max_len:
            raise RotaryError(f"prompt ({len(seq.prompt)} tokens) + max_new_tokens ({seq.max_new_tokens}) = {need} "
                              f"positions, more than the engine's {self.max_len}")
        if seq.params.stop and self.tokenizer is None:
            raise RotaryError("stop strings need the engine's tokenizer")

    def start(self, seqs: Sequence[Request]) -> list[Event]:
        """Prefill ``seqs`` into free slots (together) and sample their first tokens."""
        seqs = list(seqs)
        if not seqs:
            return []
        for seq in seqs:
            self.check(seq)
        free = self.free_slots
        if len(seqs) > len(free):
            raise RotaryError(f"{len(seqs)} sequences but {len(free)} free slots")
        slots = free[:len(seqs)]
        with torch.no_grad():
            logits, tmp = self._prefill([s.prompt for s in seqs])
            index = torch.tensor(slots, device=self.device)
            self.cache.put_rows(index, tmp)
            self.seen[index] = False
            for slot, seq in zip(slots, seqs):
                self.lengths[slot] = len(seq.prompt)
                if seq.params.repetition_penalty not in (None, 1.0):
                    self.seen[slot, torch.as_tensor(seq.prompt, device=self.device)] = True
                stream = TextStream(self.tokenizer, seq.params.stop) if self.tokenizer is not None else None
                self.rows[slot] = _Row(seq, stream, row_generator(seq.params.seed, self.device))
            self.cache.lengths[index] = torch.tensor([len(s.prompt) for s in seqs], device=self.device)
            return self._sample(slots, logits)

    def step(self) -> list[Event]:
        """One decode pass for every slot; an event per active row."""
        active = [i for i, r in enumerate(self.rows) if r is not None]
        if not active:
            return []
        self.batch_sizes.append(len(active))
        self.steps += 1
        n, window = self._window(active)
        with torch.no_grad():
            logits = self._decode(self.tokens[:n], window)
            for i in active:
                self.lengths[i] += 1
            self.cache.lengths += torch.tensor([r is not None for r in self.rows], device=self.device)
            return self._sample(active, logits[active] if len(active) < n else logits)

    def warm_up(self) -> None:
        """Run the decode step once at every size it will run at (compiled: each power-of-two
        row count), so no request waits for a compilation. Only while no sequence is active: the
        passes write into free slots."""
        if self.active:
            raise RotaryError("warm_up needs an idle engine")
        sizes = {min(self.slots, 1 << k) for k in range(self.slots.bit_length() + 1)} if self.compiled else {1}
        with torch.no_grad():
            for n in sorted(sizes):
                self._decode(self.tokens[:n], self.cache.window(n, self.max_len))
                self._decode(self.tokens[:n], self.cache.window(n, max(2, self.max_len // 2)))

    def cancel(self, slot: int) -> None:
        """Free a slot (a client went away)."""
        self._free(slot)

    def _free(self, slot: int) -> None:
        self.rows[slot] = None
        self.lengths[slot] = 0
        self.cache.lengths[slot] = 0

    def _sample(self, slots: list[int], logits: torch.Tensor) -> list[Event]:
        """Sample the next token of rows ``slots`` from their logits (n, vocab); events out."""
        rows = [self.rows[s] for s in slots]
        params = [r.seq.params for r in rows]
        logits = logits.float()
        want_logprobs = any(p.logprobs for p in params)
        logprobs = logits.log_softmax(-1) if want_logprobs else None
        index = torch.tensor(slots, device=self.device)
        if any(p.repetition_penalty not in (None, 1.0) for p in params):
            penalty = torch.tensor([p.repetition_penalty or 1.0 for p in params], device=self.device)[:, None]
            logits = apply_repetition_penalty(logits, self.seen[index], penalty)
        nxt = draw(filter_logits(logits, params), params, [r.generator for r in rows])
        self.tokens[index, 0] = nxt
        self.seen[index, nxt] = True
        chosen = logprobs.gather(-1, nxt[:, None])[:, 0].tolist() if logprobs is not None else None
        events = []
        for k, (slot, row, token) in enumerate(zip(slots, rows, nxt.tolist())):
            row.generated += 1
            seq = row.seq
            finish = None
            text = ""
            if (seq.eos_id is not None and token == seq.eos_id) or token in seq.stop_ids:
                finish = "stop"
                if row.stream is not None:
                    text = row.stream.finish()
            else:
                if row.stream is not None:
                    text = row.stream.push(token)
                    if row.stream.stopped:
                        finish = "stop"
                if finish is None and row.generated >= seq.max_new_tokens:
                    finish = "length"
                    if row.stream is not None:
                        text += row.stream.finish()
            events.append(Event(slot, seq.tag, token, text, chosen[k] if chosen and seq.params.logprobs else None,
                                finish, row.generated))
            if finish is not None:
                self._free(slot)
        return events
