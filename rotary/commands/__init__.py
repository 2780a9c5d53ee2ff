"""The ``rotary`` verbs: each module registers one subcommand over a Python function."""

from __future__ import annotations

import argparse
from typing import Any


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default or there
    is nothing to say (no value, a flag that is off): never "(default: refuse it) (default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


RUN_HELP = "run directory (uses best/, else the latest checkpoint) or a checkpoint directory"


def add_verb(subparsers: argparse._SubParsersAction, name: str, help: str, run: str | None = None,
             **options: Any) -> argparse.ArgumentParser:
    """A verb's parser, its options' defaults shown in --help (``formatter_class`` in ``options``
    replaces that); ``run``: the help of the RUN positional of a verb that loads a run."""
    options.setdefault("formatter_class", DefaultsHelp)
    p = subparsers.add_parser(name, help=help, **options)
    if run is not None:
        p.add_argument("run", help=run)
    return p


def add_loading_options(p: argparse.ArgumentParser) -> None:
    """The options of every verb that loads a run: which device, which checkpoint, and whether
    to check its sha256 sums."""
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of a run directory: best/ (lowest validation loss) or the latest step")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the checkpoint's files (sizes are still checked)")


def add_weight_options(p: argparse.ArgumentParser) -> None:
    """How a decoding verb holds the weights: their precision and weight-only quantization."""
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="weights in bf16: half the bytes per token (AMX / AVX512-BF16 CPUs, GPUs)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 weights with per-channel scales: a quarter of fp32's bytes, faster decoding at "
                        "small batches (inference only; rotary.ops.int8_linear)")


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--key value`` recipe overrides of a verb, with ``--output-dir`` folded in."""
    from rotary.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    return overrides
