"""``rotary demo``: the main job on the built-in Shakespeare corpus."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb

    p = add_verb(
        subparsers, "demo",
        help="train a RoPE LM on Shakespeare end to end, evaluate against xz/gzip, sample",
        description="Runs recipes/demo.yaml: tokenizer, shards, 4-8 minutes of training on 2 CPU "
        "cores, a results table, a sample and loss.png. Re-running resumes. Recipe keys can be "
        "overridden: rotary demo --max-steps 50.")
    p.add_argument("--recipe", help="recipe YAML (default: the built-in demo recipe)")
    p.add_argument("--prompt", default="ROMEO:", help="prompt for the sample")
    p.add_argument("--fresh", action="store_true", help="start the demo run from scratch")
    p.add_argument("--output-dir", help="run directory (default runs/demo)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from rotary.commands import recipe_overrides
    from rotary.demo import main_demo

    overrides = recipe_overrides(args)
    return main_demo(args.recipe, overrides, args.prompt, args.fresh)
