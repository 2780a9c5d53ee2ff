"""Token ids -> text pieces as they are generated: whole UTF-8 characters only, stop strings cut.

``TextStream`` decodes incrementally the way text-generation servers do: it keeps a short window
of recent tokens (``prefix`` .. ``read``) and decodes only that, so each step costs a few tokens'
decode rather than the whole output's. A piece is released only when it does not end in an
incomplete character (U+FFFD) and cannot be the start of a stop string; a stop string ends the
stream, and its text (and everything after it) is never returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.prefix = 0  # tokens[prefix:read] were decoded already, as context for the next piece
        self.read = 0
        self.text = ""  # everything decoded so far (stop string excluded once found)
        self.sent = 0  # characters of text released
        self.stopped = False

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def push(self, token: int) -> str:
        """Add one token; returns the text that may be shown now ("" if none)."""
        if self.stopped:
            return ""
        self.tokens.append(int(token))
        before = self._decode(self.tokens[self.prefix:self.read])
        after = self._decode(self.tokens[self.prefix:])
        if after.endswith(REPLACEMENT) or len(after) <= len(before):
            return ""  # an incomplete character: wait for the rest of its bytes
        self.text += after[len(before):]
        self.prefix, self.read = self.read, len(self.tokens)
        return self._release()

    def _release(self, final: bool = False) -> str:
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s) + 1))
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
        hold = 0 if final or self.stopped else self._held_back()
        end = max(self.sent, len(self.text) - hold)
        piece = self.text[self.sent:end]
        self.sent = end
        return piece

    def _held_back(self) -> int:
        """How many trailing characters could begin a stop string (shown only once ruled out)."""
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return hold

    def finish(self) -> str:
        """The rest of the text once generation ends (a last incomplete character included)."""
        if not self.stopped and self.read < len(self.tokens):
            before = self._decode(self.tokens[self.prefix:self.read])
            self.text += self._decode(self.tokens[self.prefix:])[len(before):]
            self.read = len(self.tokens)
        return self._release(final=True)
