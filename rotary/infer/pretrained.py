"""Loading a run or checkpoint directory: ``rotary.load("runs/x").generate("To be")``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.infer.sampling import SamplingParams, check_sampling, sampling_params
from rotary.model import RotaryModel
from rotary.ops.int8_linear import MODES as QUANTIZE_MODES

DEFAULT_SAMPLING = SamplingParams(temperature=0.8)  # the Python API's and the CLI's


@dataclass
class Completion:
    """One continuation: its text, the new token ids (EOS excluded), their log-probabilities
    under the model (when asked), and why it ended: "stop" (EOS or a stop string) or "length"."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    prompt_tokens: int
    truncated_tokens: int = 0  # prompt tokens dropped from the left (truncate="left")


class Pretrained:
    """A trained model with its tokenizer, ready to use."""

    def __init__(self, model: RotaryModel, tokenizer: Any, path: Path, config: dict[str, Any]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.config = config

    @property
    def task(self) -> str:
        return self.config.get("task", "")

    @property
    def target_tokenizer(self) -> Any:
        """A seq2seq run's target-side tokenizer: its own (``tokenizer/target/``) or the joint one."""
        if not hasattr(self, "_target_tokenizer"):
            from rotary.data.seq2seq import load_target_tokenizer

            self._target_tokenizer = load_target_tokenizer(self.path / "tokenizer", self.tokenizer)
        return self._target_tokenizer

    def translate(self, texts: str | Sequence[str], *, num_beams: int = 5, length_penalty: float = 1.0,
                  max_new_tokens: int | None = None, max_length_ratio: float | None = None,
                  batch_size: int = 32) -> list[str]:
        """Translations of ``texts`` by a seq2seq run (beam search; ``num_beams=1`` is greedy)."""
        from rotary.infer.translate import translate_texts

        return translate_texts(self, [texts] if isinstance(texts, str) else list(texts), num_beams=num_beams,
                               length_penalty=length_penalty, max_new_tokens=max_new_tokens,
                               max_length_ratio=max_length_ratio, batch_size=batch_size).texts

    @property
    def context(self) -> int:
        """Positions a prompt and its continuation may use: the model's max_seq_len (after any
        RoPE scaling at inference)."""
        return int(self.model.config.max_seq_len)

    def sampling(self, sampling: SamplingParams | None = None, **options: Any) -> SamplingParams:
        """The settings a call samples with: ``sampling`` (default: temperature 0.8, as the CLI)
        with ``options`` (``SamplingParams`` field names: temperature, top_k, top_p, min_p,
        repetition_penalty, seed, stop, logprobs) replaced."""
        return sampling_params(sampling if sampling is not None else DEFAULT_SAMPLING, **options)

    def check_generate(self, prompt: str | Sequence[str], max_new_tokens: int = 100, *,
                       sampling: SamplingParams | None = None, num_samples: int = 1, truncate: str | None = None,
                       **options: Any) -> list[list[int]]:
        """RotaryError for anything :meth:`generate` would refuse, before any output; returns the
        encoded prompts (cut from the left when ``truncate="left"`` and they would not fit)."""
        from rotary.infer.generate import check_generation

        params = self.sampling(sampling, **options)
        check_generation(self.model, max_new_tokens)
        if max_new_tokens < 1:  # the decode engine's bound
            raise RotaryError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_samples < 1:
            raise RotaryError(f"num_samples must be >= 1, got {num_samples}")
        check_sampling(seed=params.seed, samples=num_samples)  # sample j uses seed + j
        if truncate not in (None, "left"):
            raise RotaryError(f"truncate must be left (keep the prompt's end) or unset, got '{truncate}'")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [self.tokenizer.encode(p) for p in prompts]
        context = self.context
        for i, (p, ids) in enumerate(zip(prompts, encoded)):
            if not ids:
                raise RotaryError(f"prompt {p!r} encodes to no tokens: give at least one character of text")
            if len(ids) + max_new_tokens <= context:
                continue
            if truncate == "left" and max_new_tokens < context:
                encoded[i] = ids[len(ids) + max_new_tokens - context:]
                continue
            if max_new_tokens >= context:
                raise RotaryError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                                  f"context of {context} tokens: lower --max-new-tokens")
            config = self.model.config
            extend = (f"--rope-scaling {config.rope_scaling} with a --factor above {config.rope_scaling_factor:g}"
                      if config.rope_scaling != "none" else "--rope-scaling yarn --factor 4")
            raise RotaryError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) = "
                              f"{len(ids) + max_new_tokens}, beyond the model's context of {context} tokens: lower "
                              f"--max-new-tokens, keep the prompt's end with --truncate left, or extend the context "
                              f"with {extend}")
        return encoded

    def complete(self, prompt: str | Sequence[str], max_new_tokens: int = 100, *,
                 sampling: SamplingParams | None = None, num_samples: int = 1, truncate: str | None = None,
                 stop_at_eos: bool = True, compile: bool = False, **options: Any) -> list[Completion]:
        """Continue each prompt ``num_samples`` times (prompt-major order): text, token ids,
        log-probabilities of the chosen tokens (with ``logprobs=True``) and why each ended.
        Sample j of a prompt uses seed ``seed + j``, whatever else shares the batch."""
        from rotary.infer.engine import Request

        params = self.sampling(sampling, **options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = self.check_generate(prompts, max_new_tokens, sampling=params, num_samples=num_samples,
                                      truncate=truncate)
        eos = self.tokenizer.eos_id if stop_at_eos else None
        full = [len(self.tokenizer.encode(p)) for p in prompts]
        requests = [Request(ids, max_new_tokens, replace(params, seed=None if params.seed is None else params.seed + j),
                            eos_id=eos, tag=i * num_samples + j)
                    for i, ids in enumerate(encoded) for j in range(num_samples)]
        out = [Completion("", [], [] if params.logprobs else None, "length", len(r.prompt),
                          full[i // num_samples] - len(r.prompt)) for i, r in enumerate(requests)]
        return self._collect(requests, out, {eos}, compile)

    def _collect(self, requests: list[Any], out: list[Completion], stops: set[int | None],
                 compile: bool) -> list[Completion]:
        """Decode ``requests`` into ``out`` (indexed by each request's tag): text, the token ids
        other than ``stops`` with their log-probabilities, and why each ended."""
        from rotary.infer.engine import decode

        for events in decode(self.model, requests, tokenizer=self.tokenizer, compile=compile):
            for e in events:
                c = out[e.tag]
                c.text += e.text
                if e.token not in stops:
                    c.token_ids.append(e.token)
                    if c.logprobs is not None:
                        c.logprobs.append(e.logprob)
                if e.finish_reason is not None:
                    c.finish_reason = e.finish_reason
        return out

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 100, *,
                 sampling: SamplingParams | None = None, truncate: str | None = None, stop_at_eos: bool = True,
                 compile: bool = False, **options: Any) -> str | list[str]:
        """Continue ``prompt`` (or each of a list of prompts); returns the continuation text (a
        stop string, when one is met, and what follows it are not returned). ``options`` are
        sampling settings (``temperature=0``, ``top_p=0.9``, ``stop=["\\n"]``, ``seed=1``, ...)."""
        done = self.complete(prompt, max_new_tokens, sampling=sampling, truncate=truncate, stop_at_eos=stop_at_eos,
                             compile=compile, **options)
        texts = [c.text for c in done]
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, max_new_tokens: int = 100, *, sampling: SamplingParams | None = None,
               truncate: str | None = None, stop_at_eos: bool = True, compile: bool = False,
               **options: Any) -> Iterator[str]:
        """Continue ``prompt``, yielding the text as it is generated (``for piece in
        pre.stream("ROMEO:"): print(piece, end="")``). The pieces join to :meth:`generate`'s text
        with the same arguments; a multi-byte character is held back until it is complete, and
        text that may begin a stop string until it is ruled out."""
        from rotary.infer.engine import Request, decode

        # checked before the first piece: a stream never stops half-way on a bad setting
        params = self.sampling(sampling, **options)
        (encoded,) = self.check_generate([prompt], max_new_tokens, sampling=params, truncate=truncate)
        eos = self.tokenizer.eos_id if stop_at_eos else None
        for events in decode(self.model, [Request(encoded, max_new_tokens, params, eos_id=eos)],
                             tokenizer=self.tokenizer, compile=compile):
            for e in events:
                if e.text:
                    yield e.text

    # -- chat ------------------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The ids the model continues to answer ``messages``: the run's chat template with the
        assistant's turn opened (``add_generation_prompt``), as transformers' apply_chat_template gives."""
        from rotary.chat.template import check_messages, render

        template = self.tokenizer.chat_template
        if template is None:
            raise RotaryError(f"{self.path} has no chat template (it was not trained with task sft): fine-tune it "
                              "on conversations with `rotary train` (task: sft), or continue text with "
                              "`rotary generate`")
        rendered = render(template, check_messages(messages, where="messages"), add_generation_prompt=True,
                          special_tokens=self.tokenizer.hf_special_tokens())
        return self.tokenizer.encode(rendered.text)

    def _chat_request(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None,
                      sampling: SamplingParams | None, options: dict[str, Any]) -> Any:
        from rotary.infer.engine import Request
        from rotary.infer.generate import check_generation

        params = self.sampling(sampling, **options)
        ids = self.chat_prompt(messages)
        if max_new_tokens is None:  # as long as the context allows
            max_new_tokens = max(1, self.context - len(ids))
        check_generation(self.model, max_new_tokens)
        if max_new_tokens < 1:
            raise RotaryError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if len(ids) + max_new_tokens > self.context:
            raise RotaryError(f"the conversation ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) is beyond the "
                              f"model's context of {self.context} tokens: drop old turns or lower max_new_tokens")
        end = self.tokenizer.end_of_turn_id
        return Request(ids, max_new_tokens, params, eos_id=self.tokenizer.eos_id, stop_ids=(end,))

    def chat(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None, *,
             sampling: SamplingParams | None = None, compile: bool = False, **options: Any) -> Completion:
        """The assistant's next turn after ``messages`` ([{"role": "user", "content": "..."}, ...]):
        generated until the end-of-turn token (finish_reason "stop") or ``max_new_tokens`` (None: as
        many as the context leaves)."""
        return self._chat_complete(self._chat_request(messages, max_new_tokens, sampling, options), compile)

    def chat_stream(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None, *,
                    sampling: SamplingParams | None = None, compile: bool = False, **options: Any) -> Iterator[str]:
        """:meth:`chat`'s text, piece by piece as it is generated."""
        from rotary.infer.engine import decode

        request = self._chat_request(messages, max_new_tokens, sampling, options)
        for events in decode(self.model, [request], tokenizer=self.tokenizer, compile=compile):
            for e in events:
                if e.text:
                    yield e.text

    def _chat_complete(self, request: Any, compile: bool) -> Completion:
        out = [Completion("", [], [] if request.params.logprobs else None, "length", len(request.prompt))]
        return self._collect([replace(request, tag=0)], out, {request.eos_id, *request.stop_ids}, compile)[0]

    def classify(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
                 batch_size: int = 32) -> list[dict[str, Any]]:
        """The label and the class probabilities of each text (or text pair)."""
        from rotary.infer.classify import classify

        return classify(self, texts, text_pairs, batch_size=batch_size)

    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each [MASK] in ``text``, in order, the ``top_k`` (token, probability) pairs, as
        transformers' fill-mask pipeline computes them (``rotary.infer.fill_mask``)."""
        from rotary.infer.fill_mask import fill_mask

        return fill_mask(self.model, self.tokenizer, text, top_k)


def load(path: str | Path, device: str = "auto", which: str = "best", *, verify: bool = True,
         rope_scaling: str | None = None, rope_factor: float | None = None, precision: str = "fp32",
         quantize: str | None = None) -> Pretrained:
    """Load a run directory (its best checkpoint, else the latest) or a checkpoint directory.

    The checkpoint is checked against its manifest first; ``verify=False`` skips the sha256
    sums (for very large models), sizes are still checked. ``rope_scaling`` (linear,
    dynamic_ntk or yarn) with ``rope_factor`` extends a RoPE model's context at inference.
    ``precision="bf16"`` casts the weights (half the bytes per token, and AMX / AVX512-BF16 GEMMs
    on CPUs that have them; outputs differ from fp32 by bf16 rounding). ``quantize="int8"``
    stores every linear layer's weight as int8 with per-channel scales (a quarter of fp32's
    bytes: faster decoding at small batches; ``rotary.ops.int8_linear``), for inference only.
    """
    from rotary.device import pick_device
    from rotary.run_source import open_run
    from rotary.tokenizer import load_tokenizer

    if (rope_scaling is None) != (rope_factor is None):
        raise RotaryError("rope scaling at inference needs both a method (--rope-scaling) and a factor (--factor)")
    if precision not in ("fp32", "bf16"):
        raise RotaryError(f"precision must be fp32 or bf16, got '{precision}'")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise RotaryError(f"unknown quantization '{quantize}': choose one of {', '.join(QUANTIZE_MODES)}")
    source = open_run(path, which, verify=verify)
    model = source.load(pick_device(device))
    if precision == "bf16":
        import torch

        model = model.to(torch.bfloat16)
    if rope_scaling is not None:
        from rotary.model.rope import extend_context

        extend_context(model, rope_scaling, float(rope_factor))
    if quantize is not None:
        from rotary.ops.int8_linear import quantize as quantize_weights

        quantize_weights(model, quantize)
    tokenizer = load_tokenizer(source.tokenizer_dir("using the model"))
    return Pretrained(model, tokenizer, source.path, source.config)
