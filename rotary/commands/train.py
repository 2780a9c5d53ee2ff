"""``rotary train [RECIPE] [--key value ...]``: the training engine behind a thin CLI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

USAGE = "rotary train [RECIPE] [--resume | --overwrite] [--output-dir DIR] [--KEY VALUE | --KEY=VALUE ...]"


class _RecipeKeysHelp(argparse.RawDescriptionHelpFormatter):
    """Keeps the generated recipe-key table in the epilog as written."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb
    from rotary.train.config import builtin_recipes
    from rotary.train.recipe_keys import recipe_keys_help

    # RECIPE is not an argparse positional: with unknown override options around it argparse
    # would take the value of `--name mlm` for the recipe. train.run finds it among the extras.
    p = add_verb(
        subparsers, "train",
        help="train a model from a YAML recipe",
        usage=USAGE,
        formatter_class=_RecipeKeysHelp,
        description=(
            "Train from a YAML recipe. RECIPE is the path of a YAML file or the name of a built-in "
            f"recipe ({', '.join(builtin_recipes())}); without one the defaults below apply, and "
            "with --resume the run's own recipe.yaml. Any recipe key can be overridden: "
            "--max-steps 200, --model.n_layer=4, --data.corpus shakespeare. Runs alone, under "
            "torchrun (python -m rotary train ...) and under accelerate launch."
        ),
        epilog=recipe_keys_help(),
    )
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output directory (its recipe.yaml when no RECIPE is given)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    p.add_argument("--output-dir", help="run directory (default runs/<recipe name>)")
    p.add_argument("--no-verify", action="store_true",
                   help="on --resume, skip the sha256 check of the checkpoint's files (sizes are still checked)")
    p.set_defaults(func=run, accepts_overrides=True)


def split_recipe(extra: list[str]) -> tuple[str | None, list[str]]:
    """The recipe argument and the ``--key value`` overrides among the arguments argparse left.

    A word is a key's value when it follows ``--key`` (without ``=``), except after a key that
    may be a bare boolean flag (``--compile recipe.yaml``) unless it spells a boolean or another
    of that key's choices (``--compile blocks``); any other word is the recipe.
    """
    from rotary.errors import RotaryError
    from rotary.train.recipe_keys import recipe_keys

    bool_words = {"true", "false", "yes", "no", "on", "off", "1", "0"}
    # key -> the words that are its value: booleans, and the choices of a bool | Literal key
    booleans = {key: bool_words | (set(type_name.split("|")) - {"bool"})
                for key, type_name, _, _ in recipe_keys() if "bool" in type_name.split("|")}
    recipe, overrides, i = None, [], 0
    while i < len(extra):
        item = extra[i]
        if item.startswith("--"):
            overrides.append(item)
            key = item[2:].replace("-", "_")
            takes_value = "=" not in item and i + 1 < len(extra) and not extra[i + 1].startswith("--")
            if takes_value and key in booleans and extra[i + 1].lower() not in booleans[key]:
                takes_value = not _names_a_recipe(extra[i + 1])
                if takes_value:  # neither a recipe nor a value of this key: say so, not "two recipes"
                    allowed = ", ".join([*sorted(booleans[key] - bool_words), "true", "false"])
                    raise RotaryError(f"{item}: '{extra[i + 1]}' is not one of {allowed} (a recipe after it is a "
                                      ".yaml file or a built-in recipe's name)")
            if key.startswith("no_") and key[3:] in booleans:
                takes_value = False  # --no-progress is a flag: the word after it is the recipe
            if takes_value:
                overrides.append(extra[i + 1])
                i += 1
        elif recipe is None:
            recipe = item
        else:
            raise RotaryError(f"two recipes given ('{recipe}' and '{item}'): name one, and write "
                              "overrides as --key value")
        i += 1
    return recipe, overrides


def _names_a_recipe(word: str) -> bool:
    """Whether ``word`` may be the recipe argument: a YAML path or a built-in recipe's name."""
    from pathlib import Path

    from rotary.train.config import builtin_recipes

    return word in builtin_recipes() or word.endswith((".yaml", ".yml")) or Path(word).is_file()


def recipe_from_args(args: argparse.Namespace, extra: dict | None = None, verb: str = "train",
                     defaults: Callable[[str | None, dict], dict] | None = None):
    """The TrainConfig a training verb's arguments name: RECIPE (or, on --resume, the run's own
    recipe.yaml) with the overrides and ``extra`` (a verb's own options) applied, and the verb's
    ``defaults(recipe, overrides)`` beneath both; warnings on rank 0."""
    from pathlib import Path

    from rotary.commands import recipe_overrides
    from rotary.errors import RotaryError
    from rotary.train.config import load_recipe

    if args.resume and args.overwrite:
        raise RotaryError("--resume continues the run in the output directory and --overwrite deletes it: "
                          "pass one of them")
    recipe, args.overrides = split_recipe(args.overrides)
    overrides = {**recipe_overrides(args), **(extra or {})}
    if recipe is None and args.resume:
        # the run records its resolved recipe: --resume --output-dir runs/x needs nothing else
        run_dir = overrides.get("output_dir") or (f"runs/{overrides['name']}" if "name" in overrides else None)
        if run_dir is None:
            raise RotaryError("--resume without a recipe needs the run: --output-dir runs/NAME (or --name NAME)")
        recorded = Path(run_dir) / "recipe.yaml"
        if Path(run_dir).is_file():
            raise RotaryError(f"--resume: {run_dir} is a file: point --output-dir at the run directory")
        if not Path(run_dir).is_dir():
            raise RotaryError(f"--resume: {run_dir} does not exist: point --output-dir at the run to continue, "
                              "or drop --resume to start one")
        if not recorded.is_file():
            raise RotaryError(f"--resume: {run_dir} holds no run ({recorded} does not exist): point --output-dir "
                              f"at the run to continue, or drop --resume to start one")
        recipe = str(recorded)
    cfg = load_recipe(recipe, overrides, defaults(recipe, overrides) if defaults else None)
    if is_main_rank():
        for warning in cfg.warnings():
            print(f"rotary: warning: {warning}", file=sys.stderr)
    return cfg


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run(args: argparse.Namespace) -> int:
    cfg = recipe_from_args(args)
    from rotary.train.loop import train  # torch: only once the arguments are good

    result = train(cfg, resume=args.resume, overwrite=args.overwrite, verify=not args.no_verify)
    if result.last_eval and is_main_rank():  # one summary per run, not one per process
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.last_eval.items() if isinstance(v, float))
        print(f"{result.run_dir}: step {result.step} ({result.stopped}); validation {summary}")
    return interrupted_exit_code(result)


def interrupted_exit_code(result) -> int:
    """0, or 128 + the signal for a run that a signal stopped after saving (the shell's code for
    that signal): 130 for Ctrl-C, 143 for SIGTERM (a scheduler's preemption). A rank that stopped
    because another rank was signalled reports SIGTERM."""
    import signal

    if result.stopped != "interrupted":
        return 0
    return 128 + int(result.signal or signal.SIGTERM)
