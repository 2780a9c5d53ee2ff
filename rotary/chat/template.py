"""Chat templates: Jinja text that turns a conversation into the string a model reads.

The environment is transformers' (a sandbox, ``trim_blocks`` and ``lstrip_blocks``, the
``{% generation %}`` tag, ``raise_exception``, a ``tojson`` that does not escape HTML), so a
template renders here exactly as ``AutoTokenizer.apply_chat_template`` renders it. The
``{% generation %}`` blocks mark what the assistant says: their character spans are where the
SFT loss is taken (by position in the rendered text, never by token value).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rotary.errors import RotaryError

TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
CHAT_SPECIALS = (TURN_START, TURN_END)
ROLES = ("system", "user", "assistant")

# ChatML (the format of Qwen and of OpenAI's own chat models), led by the BOS token so that a
# conversation starts where a pretraining document starts. The assistant's words and its
# end-of-turn token sit in the generation block: the loss covers both, so the model learns to stop.
DEFAULT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ': a message is from system, user or assistant') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] ~ '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Rendered:
    text: str
    assistant_spans: list[tuple[int, int]]
    """Character spans [start, end) of the generation blocks, in order."""


def check_messages(messages: Any, *, where: str = "conversation") -> list[dict[str, str]]:
    """``messages`` as a list of {"role", "content"} dicts, or a RotaryError saying what is wrong."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise RotaryError(f"{where}: messages must be a non-empty list of {{\"role\": ..., \"content\": ...}}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RotaryError(f"{where}: message {i} is not {{\"role\": str, \"content\": str}} ({str(m)[:60]})")
        if m["role"] not in ROLES:
            raise RotaryError(f"{where}: message {i} has unknown role {m['role']!r} (valid: {', '.join(ROLES)})")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationSpans(Extension):
        """``{% generation %}...{% endgeneration %}``: renders its body and records where it lies."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_span", [jinja2.nodes.ContextReference()]), [], [],
                                          body).set_lineno(lineno)

        def _span(self, context: Any, caller: Any) -> str:
            body = caller()
            tracker = context.get("_rotary_tracker")
            if tracker is not None:  # (pieces yielded so far, spans): the body starts after them
                pieces, spans = tracker
                start = sum(len(p) for p in pieces)
                spans.append((start, start + len(body)))
            return body

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationSpans, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise RotaryError(f"chat template does not parse: {err.message} (line {err.lineno})") from None


def render(template: str, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False,
           special_tokens: Mapping[str, str] | None = None) -> Rendered:
    """The text of ``messages`` under ``template``, with the generation blocks' spans."""
    import jinja2

    compiled = _compile(template)
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        # Rendered lazily piece by piece: when a generation block runs, ``pieces`` holds all the
        # text before it, which is where its body starts (transformers tracks spans the same way).
        for piece in compiled.generate(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                       _rotary_tracker=(pieces, spans), **dict(special_tokens or {})):
            pieces.append(piece)
    except jinja2.exceptions.TemplateError as err:
        raise RotaryError(f"chat template failed to render: {err}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise RotaryError(f"chat template failed to render: {type(err).__name__}: {err}") from None
    return Rendered("".join(pieces), spans)
