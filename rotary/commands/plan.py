"""``rotary plan RECIPE [--gpus N] [--nodes M] [--gpu NAME]``: the cost of a run before it starts."""

from __future__ import annotations

import argparse

USAGE = ("rotary plan RECIPE [--gpus N] [--nodes M] [--gpu NAME] [--mfu F] [--train-tokens N] "
         "[--no-trial] [--output-dir DIR] [--KEY VALUE ...]")


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb
    from rotary.train.accelerators import ACCELERATORS

    p = add_verb(
        subparsers, "plan", help="what a recipe's run costs at a scale, then 2 trial steps here",
        usage=USAGE,
        description="Print a recipe's parameters, batch arithmetic, FLOPs, memory per device (DDP and FSDP) "
                    "and wall time on N accelerators at a stated MFU; then run its model and data path for 2 "
                    "steps on this machine (scaled down where it cannot hold them), saving a checkpoint after "
                    "the first and resuming from it. Recipe keys can be overridden as in `rotary train`.")
    p.add_argument("--gpus", type=int, default=8, help="accelerators per node")
    p.add_argument("--nodes", type=int, default=1, help="nodes")
    p.add_argument("--gpu", choices=sorted(ACCELERATORS), default="h100", help="accelerator (datasheet peak, memory)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the wall time")
    p.add_argument("--train-tokens", type=float, default=None,
                   help="tokens in the training split (e.g. 9e9 for OpenWebText): adds steps per epoch")
    p.add_argument("--no-trial", action="store_true", help="print the plan only; skip the 2-step trial")
    p.add_argument("--output-dir", default=None, help="directory of the trial run (default: a temporary one)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from rotary.commands.train import split_recipe
    from rotary.config import parse_overrides
    from rotary.errors import RotaryError
    from rotary.train.config import load_recipe
    from rotary.train.plan import format_plan, make_plan

    recipe, words = split_recipe(args.overrides)
    if recipe is None:
        raise RotaryError("rotary plan needs a recipe: a built-in name (e.g. openwebtext-gqa) or a .yaml file")
    if args.gpus < 1 or args.nodes < 1:
        raise RotaryError(f"--gpus and --nodes must be at least 1 (got {args.gpus}, {args.nodes})")
    if args.train_tokens is not None and args.train_tokens < 1:
        raise RotaryError(f"--train-tokens must be positive, got {args.train_tokens:g}")
    overrides = parse_overrides(words)
    cfg = load_recipe(recipe, overrides)
    plan = make_plan(cfg, world_size=args.gpus * args.nodes, accelerator=args.gpu, mfu=args.mfu,
                     train_tokens=int(args.train_tokens) if args.train_tokens else None)
    print(format_plan(plan), flush=True)
    if args.no_trial:
        return 0
    from rotary.train.plan_trial import run_trial

    with tempfile.TemporaryDirectory(prefix="rotary-plan-") as tmp:
        out = Path(args.output_dir) if args.output_dir else Path(tmp) / "trial"
        print(f"trial: 2 steps here, a checkpoint after the first, then a resume ({out})", flush=True)
        trial = run_trial(recipe, overrides, out)
    scaled = "; ".join(trial.scaled) or "nothing: the recipe's shapes as they are"
    print(f"trial passed: step {trial.resumed_from} checkpointed and resumed to step {trial.final_step}, "
          f"validation loss {trial.final_loss:.4f}\n  scaled to fit this machine: {scaled}\n"
          f"  memory: estimate {trial.estimate_bytes / 2**30:.2f} GiB for the step, peak RSS of this process "
          f"{trial.peak_rss_bytes / 2**30:.2f} GiB (Python, libraries and the data path included)")
    return 0
