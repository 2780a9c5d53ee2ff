"""A conversation kept within the model's context: what ``rotary chat`` holds between turns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ChatSession:
    """The messages so far (an optional system message first) and the room they leave.

    Before each answer the oldest user/assistant turns are dropped until the rendered
    conversation plus ``max_new_tokens`` fits the context; the system message always stays.
    """

    def __init__(self, pre: Any, *, system: str | None = None, max_new_tokens: int = 256) -> None:
        self.pre = pre
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.turns: list[dict[str, str]] = []

    def reset(self) -> None:
        self.turns = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def fit(self) -> int:
        """Drop the oldest turns (a user message and the answer after it) until the conversation
        fits; returns how many messages were dropped. The newest user message is never dropped."""
        dropped = 0
        def too_long() -> bool:
            return len(self.pre.chat_prompt(self.messages())) + self.max_new_tokens > self.pre.context

        while too_long() and len(self.turns) > 1:
            self.turns.pop(0)
            dropped += 1
            while self.turns and self.turns[0]["role"] != "user":
                self.turns.pop(0)
                dropped += 1
        return dropped

    def ask(self, text: str, on_piece: Callable[[str], None] | None = None,
            on_dropped: Callable[[int], None] | None = None, **sampling: Any) -> tuple[str, int]:
        """The assistant's answer to ``text`` (streamed to ``on_piece``), and the number of old
        messages dropped to make room for it (told to ``on_dropped`` before the answer starts)."""
        self.turns.append({"role": "user", "content": text})
        try:
            dropped = self.fit()
            if dropped and on_dropped is not None:
                on_dropped(dropped)
            pieces = []
            for piece in self.pre.chat_stream(self.messages(), self.max_new_tokens, **sampling):
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        except Exception:
            self.turns.pop()  # a refused turn leaves the conversation as it was
            raise
        answer = "".join(pieces)
        self.turns.append({"role": "assistant", "content": answer})
        return answer, dropped
