"""The one exception type for user mistakes.

A ``RotaryError`` carries a one-line message saying what is wrong and how to fix it. The CLI
prints it and exits with code 2; anything else is a bug and keeps its traceback.
"""


class RotaryError(Exception):
    """A user mistake: bad input, bad configuration, a missing file."""


class RotaryWarning(UserWarning):
    """Something rotary did on the user's behalf that they should know about (the CLI prints
    it as one ``rotary: warning:`` line)."""
