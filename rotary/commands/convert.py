"""``rotary convert``: weights to and from HF transformers checkpoints."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a run to an HF transformers checkpoint, or an HF checkpoint to a rotary one",
        description="rotary convert runs/x --to hf out/  (config.json + model.safetensors that "
        "AutoModelForCausalLM / AutoModelForMaskedLM load)\n"
        "rotary convert HF_DIR --from-hf out/  (a rotary checkpoint directory)",
    )
    p.add_argument("source", help="run/checkpoint directory, or an HF checkpoint directory with --from-hf")
    p.add_argument("out", help="output directory")
    p.add_argument("--to", choices=("hf",), help="convert a rotary run to transformers' layout")
    p.add_argument("--from-hf", action="store_true", help="convert a transformers checkpoint to rotary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rotary.errors import RotaryError

    if bool(args.to) == bool(args.from_hf):
        raise RotaryError("say which way: --to hf (rotary -> transformers) or --from-hf (transformers -> rotary)")
    if args.to:
        from rotary.hf import save_hf
        from rotary.pretrained import load_model

        model, ckpt_dir = load_model(args.source)
        tok = ckpt_dir / "tokenizer"
        save_hf(model, args.out, tokenizer_dir=tok if tok.is_dir() else None)
        print(f"wrote transformers checkpoint {args.out} from {ckpt_dir}")
        return 0
    from rotary.hf import from_hf
    from rotary.train import checkpoint as ckpt
    from rotary.train.trainer import checkpoint_config

    model = from_hf(args.source)
    extra = {}
    task = {"CausalLM": "causal_lm", "MaskedLM": "masked_lm"}.get(type(model).__name__, "classification")
    if task == "classification":
        extra = {"num_labels": model.num_labels, "pooling": model.pooling}
    content = ckpt.CheckpointContent(
        config=checkpoint_config(task, model.config, extra),
        model_state=ckpt.model_state_for_saving(model),
        trainer_state={"step": 0, "converted_from": str(Path(args.source))},
    )
    ckpt.write_checkpoint_dir(Path(args.out), content)
    print(f"wrote rotary checkpoint {args.out} ({task}) from {args.source}")
    return 0
