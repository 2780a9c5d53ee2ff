"""The ``rotary`` command: a thin layer of argparse over rotary's Python API.

Each verb lives in its own module under ``rotary.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn, TextIO

from rotary import __version__
from rotary.errors import RotaryError

# Verb modules, in the order `rotary --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "rotary.commands.demo",
    "rotary.commands.train",
    "rotary.commands.plan",
    "rotary.commands.generate",
    "rotary.commands.chat",
    "rotary.commands.serve",
    "rotary.commands.fill_mask",
    "rotary.commands.translate",
    "rotary.commands.finetune",
    "rotary.commands.classify",
    "rotary.commands.eval",
    "rotary.commands.convert",
    "rotary.commands.info",
    "rotary.commands.tokenizer",
    "rotary.commands.prepare",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's usage errors as one ``rotary: error:`` line, like every other user mistake
    (argparse prints the whole usage block first); the verbs' parsers inherit the class."""

    argv: Sequence[str] = ()  # what main() parses: a missing option may be a misspelt one

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):
            message = self._misspelt_option() or message
        self.exit(2, f"rotary: error: {message} (see `{self.prog} --help`)\n")

    def _misspelt_option(self) -> str | None:
        """'unrecognized argument --promt (did you mean --prompt?)' where a typo explains a
        missing required option (argparse reports the missing one and never the typo)."""
        import difflib

        known = [flag for action in self._actions for flag in action.option_strings]
        for word in OneLineErrorParser.argv:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and not any(k.startswith(flag) for k in known):  # prefixes are abbreviations
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
                if close:
                    return f"unrecognized argument {flag} (did you mean {close[0]}?)"
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="rotary",
        description="Train and use Transformers with Rotary Position Embeddings (RoPE).",
    )
    parser.add_argument("--version", action="version", version=f"rotary {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Verbs that take recipe overrides (`--max-steps 10`) receive the arguments argparse
    # does not know; every other verb refuses them.
    OneLineErrorParser.argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        verb = _verb_parser(parser, args.command)
        verb.error(verb._misspelt_option() or f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if getattr(args, "func", None) is None:  # `rotary` alone is a usage error, as argparse's are
        parser.print_help(sys.stderr)
        return 2
    shown = _previous_showwarning[0] = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        code = args.func(args)
    except RotaryError as err:
        print(f"rotary: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rotary: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return int(code or 0)


def _verb_parser(parser: argparse.ArgumentParser, verb: str | None) -> OneLineErrorParser:
    """The parser of ``verb`` (its errors point at `rotary VERB --help`), else the top one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and verb in action.choices:
            sub = action.choices[verb]
            # `rotary tokenizer train`: the innermost verb given
            return _verb_parser(sub, next((w for w in OneLineErrorParser.argv if w in _choices(sub)), None))
    return parser  # type: ignore[return-value]


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_previous_showwarning = [warnings.showwarning]  # what main() replaced, for everyone else's warnings


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
    """rotary's own warnings are messages to the user: one line, not Python's file, line
    number and source line of the code that warned."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR):
        print(f"rotary: warning: {message}", file=file or sys.stderr)
    else:
        _previous_showwarning[0](message, category, filename, lineno, file, line)


if __name__ == "__main__":
    sys.exit(main())
