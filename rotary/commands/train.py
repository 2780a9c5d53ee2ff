"""``rotary train RECIPE.yaml [--key value ...]``: the training engine behind a thin CLI."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe",
        description=(
            "Train from a YAML recipe. Any recipe key can be overridden: --max-steps 200, "
            "--model.n_layer 4, --data.corpus shakespeare. Runs alone, under torchrun "
            "(python -m rotary train ...) and under accelerate launch."
        ),
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML (see recipes/)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    p.add_argument("--output-dir", help="run directory (default runs/<recipe name>)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from rotary.commands import recipe_overrides
    from rotary.train.config import load_recipe
    from rotary.train.trainer import train

    overrides = recipe_overrides(args)
    cfg = load_recipe(args.recipe, overrides)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if result.last_eval:
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.last_eval.items() if isinstance(v, float))
        print(f"{result.run_dir}: step {result.step} ({result.stopped}); validation {summary}")
    return 130 if result.stopped == "interrupted" else 0
