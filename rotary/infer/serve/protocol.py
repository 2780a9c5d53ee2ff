"""The OpenAI API's shapes: request bodies (checked), engine rows built from them, response objects.

Bodies are validated strictly (``"5"`` is not an integer, ``1`` is not a boolean), as OpenAI's
API does; unknown fields are ignored so newer clients keep working, but known features this
server cannot honour (tools, presence penalties, streamed ``echo``...) are refused rather than ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rotary.errors import RotaryError
from rotary.infer.engine import Request
from rotary.infer.sampling import SamplingParams, check_sampling

ROLE_STOPS = ("\nuser:", "\nsystem:", "\nassistant:")  # a plain model writes the next turn itself


class APIError(Exception):
    """An error answered as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- request bodies ------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Body(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(_Strict):
    type: str
    text: str | None = None


CHAT_ROLES = ("system", "developer", "user", "assistant")


class Message(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None


class TokenizeBody(_Strict):
    """vLLM's ``POST /tokenize`` (what lm-evaluation-harness's remote tokenizer sends)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeBody(_Strict):
    model: str | None = None
    tokens: list[int]


def parse(model: type[_Strict], data: Any) -> Any:
    """``data`` (parsed JSON) as a ``model`` body, or a 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None


def _unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"{param} is not supported by this server: {why}", param=param, code="unsupported_parameter")


def check_common(body: _Body) -> None:
    """400 for settings no row could run with, before anything is queued."""
    if body.n < 1:
        raise APIError(400, f"n must be >= 1, got {body.n}", param="n")
    if body.presence_penalty or body.frequency_penalty:
        raise _unsupported("presence_penalty" if body.presence_penalty else "frequency_penalty",
                           "use repetition_penalty (1 = none)")
    if body.logit_bias:
        raise _unsupported("logit_bias", "it is not implemented")
    try:
        body_sampling(body, stops(body))
        check_sampling(seed=body.seed, samples=body.n)  # sample j uses seed + j
    except RotaryError as err:
        param = str(err).split(" ", 1)[0]
        raise APIError(400, str(err), param=param if param in _Body.model_fields else None) from None


def check_completion(body: CompletionBody) -> None:
    check_common(body)
    if body.echo and body.stream:
        raise _unsupported("echo", "not with stream: ask without stream for the prompt's logprobs")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 generates nothing: it scores the prompt only with echo", param="max_tokens")
    if body.suffix is not None:
        raise _unsupported("suffix", "the models here only continue text")
    if body.best_of not in (None, body.n):
        raise _unsupported("best_of", "every sample is returned: use n")
    if body.logprobs is not None and not 0 <= body.logprobs <= 5:
        raise APIError(400, f"logprobs must be between 0 and 5, got {body.logprobs}", param="logprobs")


def check_chat(body: ChatBody) -> None:
    check_common(body)
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if getattr(body, name):
            raise _unsupported(name, "the models here have no tool calling")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise _unsupported("response_format", "only text")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be between 0 and 20, got {body.top_logprobs}", param="top_logprobs")
    for i, m in enumerate(body.messages):
        if m.role not in CHAT_ROLES:
            why = ("the models here have no tool calling" if m.role in ("tool", "function")
                   else f"a role is one of {', '.join(CHAT_ROLES)}")
            raise APIError(400, f"messages.{i}.role {m.role!r} is not supported: {why}", param=f"messages.{i}.role")
        if m.content is None:  # OpenAI allows it only beside tool calls, which no model here makes
            raise APIError(400, f"messages.{i}.content is required: a string or a list of text parts",
                           param=f"messages.{i}.content")
        if isinstance(m.content, list) and any(p.type != "text" or p.text is None for p in m.content):
            raise APIError(400, "only text content parts are supported", param=f"messages.{i}.content")


def stops(body: _Body) -> tuple[str, ...]:
    if body.stop is None:
        return ()
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)


def message_text(m: Message) -> str:
    """A message's content as one string (a list of text parts joined)."""
    return m.content if isinstance(m.content, str) else "".join(p.text or "" for p in m.content or [])


def chat_prompt(messages: Sequence[Message]) -> str:
    """The plain role-prefixed prompt of a run without a chat template:
    ``system: ...\\nuser: ...\\nassistant:``."""
    return "\n".join(f"{m.role}: {message_text(m)}" for m in messages) + "\nassistant:"


def build_rows(prompts: Sequence[list[int]], body: _Body, *, max_tokens: int | None, max_len: int,
               eos_id: int | None, logprobs: bool, extra_stop: Sequence[str] = (),
               prompt_param: str = "prompt", stop_ids: tuple[int, ...] = ()) -> list[Request]:
    """One engine row per (prompt, sample): row ``p * n + j`` is sample ``j`` of prompt ``p``,
    seeded ``seed + j`` when a seed is given (so sample j does not depend on n)."""
    params = body_sampling(body, tuple(dict.fromkeys(stops(body) + tuple(extra_stop))), logprobs)
    rows = []
    for ids in prompts:
        if len(ids) >= max_len:
            raise APIError(400, f"this model's maximum context length is {max_len} tokens, and the prompt has "
                                f"{len(ids)}: no room for a completion", param=prompt_param,
                           code="context_length_exceeded")
        room = max_len - len(ids)
        new = room if max_tokens is None else max_tokens
        if new < 1:
            raise APIError(400, f"max_tokens must be >= 1, got {new}", param="max_tokens")
        if new > room:
            raise APIError(400, f"this model's maximum context length is {max_len} tokens, and you asked for "
                                f"{len(ids) + new} ({len(ids)} in the prompt, {new} for the completion)",
                           param="max_tokens", code="context_length_exceeded")
        for j in range(body.n):
            seed = None if body.seed is None else body.seed + j
            rows.append(Request(list(ids), new, replace(params, seed=seed), eos_id, stop_ids=stop_ids))
    return rows


def body_sampling(body: _Body, stop: tuple[str, ...], logprobs: bool = False) -> SamplingParams:
    """A request's sampling settings (OpenAI's default temperature is 1)."""
    return SamplingParams(temperature=1.0 if body.temperature is None else body.temperature, top_k=body.top_k,
                          top_p=body.top_p, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                          seed=body.seed, stop=stop, logprobs=logprobs)


# -- responses -----------------------------------------------------------------------------------
class Echo:
    """A prompt as ``echo`` returns it: its text, and per token its text, log-probability (the
    first None) and top alternatives (``{token: logprob}``, the first None)."""

    def __init__(self, text: str, tokens: list[str], logprobs: list[float | None],
                 top: list[dict[str, float] | None], offsets: list[int] | None = None) -> None:
        self.text, self.tokens, self.logprobs, self.top = text, tokens, logprobs, top
        self.offsets = offsets  # where each token starts in ``text``, when their texts do not join up to it


class Choice:
    """What one row has produced so far (after its echoed prompt, if any)."""

    def __init__(self, index: int, prompt_tokens: int, echo: Echo | None = None) -> None:
        self.index = index
        self.prompt_tokens = prompt_tokens
        self.echo = echo
        self.text: list[str] = []
        self.tokens: list[str] = []  # the chosen tokens' text, with their logprobs (EOS excluded)
        self.logprobs: list[float] = []
        self.offsets: list[int] = []
        self.generated = 0
        self.finish_reason: str | None = None
        self._offset = 0

    def add(self, text: str, token: str | None, logprob: float | None, generated: int,
            finish_reason: str | None) -> bool:
        """Record one event; True if it carried a token's logprob."""
        self.text.append(text)
        self.generated = generated
        self.finish_reason = finish_reason
        if token is None or logprob is None:
            return False
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.offsets.append(self._offset)
        self._offset += len(token)
        return True


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(choices: Sequence[Choice], prompt_tokens: int) -> dict[str, int]:
    completion = sum(c.generated for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def completion_logprobs(tokens: Sequence[str], logprobs: Sequence[float], offsets: Sequence[int],
                        echo: Echo | None = None) -> dict[str, Any]:
    """OpenAI's completions ``logprobs`` object; the engine reports only the chosen token's
    log-probability, so each generated ``top_logprobs`` entry holds that one token (OpenAI's
    always does too). With ``echo`` the prompt's tokens come first, with their top alternatives."""
    out = {"tokens": list(tokens), "token_logprobs": list(logprobs),
           "top_logprobs": [{t: lp} for t, lp in zip(tokens, logprobs)], "text_offset": list(offsets)}
    if echo is None:
        return out
    prompt_offsets, at = [], 0
    for t in echo.tokens:
        prompt_offsets.append(at)
        at += len(t)
    if echo.offsets is not None:  # the prompt's tokens, decoded one by one, do not spell its text
        prompt_offsets = list(echo.offsets)
    shift = len(echo.text)
    return {"tokens": [*echo.tokens, *out["tokens"]], "token_logprobs": [*echo.logprobs, *out["token_logprobs"]],
            "top_logprobs": [*echo.top, *out["top_logprobs"]],
            "text_offset": [*prompt_offsets, *(o + shift for o in out["text_offset"])]}


def chat_logprobs(tokens: Sequence[str], logprobs: Sequence[float]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object (chosen tokens only, as :func:`completion_logprobs`)."""
    content = []
    for t, lp in zip(tokens, logprobs):
        entry = {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
        content.append({**entry, "top_logprobs": [entry]})
    return {"content": content, "refusal": None}


def completion_response(rid: str, model: str, choices: Sequence[Choice], prompt_tokens: int,
                        logprobs: bool) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": now(), "model": model, "system_fingerprint": None,
        "choices": [{"index": c.index, "text": (c.echo.text if c.echo else "") + "".join(c.text),
                     "finish_reason": c.finish_reason,
                     "logprobs": completion_logprobs(c.tokens, c.logprobs, c.offsets, c.echo) if logprobs else None}
                    for c in choices],
        "usage": usage(choices, prompt_tokens),
    }


def chat_response(rid: str, model: str, choices: Sequence[Choice], prompt_tokens: int,
                  logprobs: bool) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": now(), "model": model, "system_fingerprint": None,
        "choices": [{"index": c.index, "message": {"role": "assistant", "content": "".join(c.text), "refusal": None},
                     "finish_reason": c.finish_reason,
                     "logprobs": chat_logprobs(c.tokens, c.logprobs) if logprobs else None}
                    for c in choices],
        "usage": usage(choices, prompt_tokens),
    }


def chunk(kind: Literal["completion", "chat"], rid: str, model: str, created: int, choice: dict[str, Any] | None,
          usage_: dict[str, int] | None = None, with_usage: bool = False) -> dict[str, Any]:
    """One streamed chunk: ``choice`` is the per-choice delta; none with the final usage chunk
    (``stream_options.include_usage``, where every other chunk carries ``usage: null``)."""
    out: dict[str, Any] = {"id": rid, "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
                           "created": created, "model": model, "system_fingerprint": None,
                           "choices": [choice] if choice is not None else []}
    if with_usage:
        out["usage"] = usage_
    return out
