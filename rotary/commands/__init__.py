"""The ``rotary`` verbs: each module registers one subcommand over a Python function."""

from __future__ import annotations

import argparse
from typing import Any


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--key value`` recipe overrides of a verb, with ``--output-dir`` folded in."""
    from rotary.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    return overrides
