"""``rotary finetune RECIPE --from RUN``: a classifier on labelled data, through the training loop."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb

    p = add_verb(
        subparsers, "finetune",
        help="fine-tune a pretrained encoder as a classifier (sentiment, topics, sentence pairs)",
        usage="rotary finetune [RECIPE] --from RUN|none [--resume | --overwrite] [--output-dir DIR] [--KEY VALUE ...]",
        description="Fine-tune task: classification from RECIPE (e.g. chinese-sentiment, thucnews) on the "
                    "backbone and tokenizer of --from (a masked_lm or causal_lm run, or a RoFormer or Llama "
                    "converted with convert --from-hf); --from none trains the same classifier from scratch. "
                    "Without a recipe, --data.corpus FILE (.jsonl/.csv/.parquet with text and label) is enough: "
                    "task classification, 3 epochs (--epochs, or --max-steps), evaluation every epoch, "
                    "best_metric accuracy. Validation picks best/ (best_metric) and drives early stopping; the "
                    "test split is scored once, at the end (test_results.json). Recipe keys are those of "
                    "`rotary train --help`.")
    p.add_argument("--from", dest="init_from", metavar="RUN",
                   help="run or checkpoint to start from (a masked_lm or causal_lm run, a converted RoFormer or "
                        "Llama), or none (default: the recipe's init_from)")
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in the output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    p.add_argument("--output-dir", help="run directory (default runs/<recipe name>)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the checkpoint's files (sizes are still checked)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from rotary.commands.train import interrupted_exit_code, is_main_rank, recipe_from_args

    extra = {"init_from": args.init_from} if args.init_from is not None else {}
    from rotary.train.finetune import finetune, finetune_defaults

    cfg = recipe_from_args(args, extra, verb="finetune", defaults=finetune_defaults)

    result = finetune(cfg, resume=args.resume, overwrite=args.overwrite, verify=not args.no_verify)
    if is_main_rank():
        if result.best_eval:
            best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_eval.items() if isinstance(v, float))
            print(f"{result.run_dir}: step {result.step} ({result.stopped}); best validation {best}")
        if result.test:
            lo, hi = result.test["accuracy_95ci"]
            print(f"test ({result.test['examples']} examples): accuracy {result.test['accuracy']:.4f} "
                  f"(95% CI {lo:.4f}-{hi:.4f}), macro-F1 {result.test['macro_f1']:.4f}")
            from rotary.baselines import compare_line

            print(f"test, {compare_line(result.test['accuracy'], result.test.get('baseline'))}")
    return interrupted_exit_code(result)
