"""``rotary convert``: weights to and from HF transformers checkpoints."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb

    p = add_verb(
        subparsers, "convert",
        help="convert a run to an HF transformers checkpoint, or an HF checkpoint to a rotary one",
        description="rotary convert runs/x --to hf out/  (config.json + model.safetensors that "
        "AutoModelForCausalLM / AutoModelForMaskedLM load)\n"
        "rotary convert HF_DIR --from-hf out/  (a rotary checkpoint directory). "
        "OUT must be new or empty; an existing checkpoint of the same kind is replaced only with "
        "--overwrite (a training run never is), and the source is never touched.")
    p.add_argument("source", help="run/checkpoint directory, or an HF checkpoint directory with --from-hf")
    p.add_argument("out", help="output directory (new or empty, or a checkpoint to replace with --overwrite)")
    p.add_argument("--to", choices=("hf",), help="convert a rotary run to transformers' layout")
    p.add_argument("--from-hf", action="store_true", help="convert a transformers checkpoint to rotary")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it already holds a checkpoint of the kind written")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the source checkpoint's files (sizes are still checked)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rotary.errors import RotaryError
    from rotary.hf.output_dir import check_output_dir

    if bool(args.to) == bool(args.from_hf):
        raise RotaryError("say which way: --to hf (rotary -> transformers) or --from-hf (transformers -> rotary)")
    source, out = Path(args.source), Path(args.out)
    if source.is_file():
        raise RotaryError(f"{source} is a file: give the run or checkpoint directory to convert")
    if not source.is_dir():
        raise RotaryError(f"no such directory: {source}")
    kind = "hf" if args.to else "checkpoint"
    # Checked before anything is loaded or written: a mistake costs nothing.
    check_output_dir(out, kind=kind, overwrite=args.overwrite, sources=(source,))
    if args.to:
        return _to_hf(source, out, verify=not args.no_verify)
    return _from_hf(source, out)


def _to_hf(source, out, *, verify: bool) -> int:
    from rotary.hf import save_hf
    from rotary.io import apply_umask, replace_dir
    from rotary.run_source import load_model
    from rotary.tokenizer import load_tokenizer

    model, ckpt_dir = load_model(source, verify=verify)
    tok = ckpt_dir / "tokenizer"
    if tok.is_dir():
        load_tokenizer(tok)  # a damaged tokenizer is a one-line error before anything is written
    tmp = _fresh_tmp(out)
    try:
        save_hf(model, tmp, tokenizer_dir=tok if tok.is_dir() else None)
        apply_umask(tmp)
        replace_dir(tmp, out)
    finally:
        _remove(tmp)
    print(f"wrote transformers checkpoint {out} from {ckpt_dir}")
    return 0


def _from_hf(source, out) -> int:
    import json

    from rotary import checkpoint as ckpt
    from rotary.errors import RotaryError
    from rotary.hf import copy_hf_tokenizer, from_hf
    from rotary.tasks import model_head_settings, task_of_model
    from rotary.tokenizer import load_tokenizer

    config = source / "config.json"
    if not config.is_file():
        raise RotaryError(f"{source} is not an HF checkpoint directory (no config.json)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError):
        raise RotaryError(f"{config} is not a valid JSON config") from None
    if model_type == "rotary":
        raise RotaryError(f"{source} is already a rotary checkpoint: use `rotary convert {source} --to hf OUT` "
                          "to export it to transformers")
    try:
        model = from_hf(source)
    except RotaryError:
        raise
    except Exception as err:  # transformers/safetensors on a damaged or foreign checkpoint
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RotaryError(f"{source}: transformers cannot load it ({type(err).__name__}: {first})") from None
    task = task_of_model(model).name
    extra = model_head_settings(model)
    # the tokenizer travels with the weights, so generate works on the result
    tok_tmp = copy_hf_tokenizer(source, _fresh_tmp(out, "tokenizer"))
    if tok_tmp is not None:
        load_tokenizer(tok_tmp)  # one line if rotary cannot use it, before anything is written
    try:
        content = ckpt.CheckpointContent(
            config=ckpt.checkpoint_config(task, model.config, extra),
            model_state=ckpt.model_state_for_saving(model),
            trainer_state={"step": 0, "converted_from": str(source)},
            tokenizer_dir=tok_tmp,
        )
        ckpt.write_checkpoint_dir(out, content)
    finally:
        if tok_tmp is not None:
            _remove(tok_tmp)
    note = "" if tok_tmp is not None else " (no tokenizer files beside the weights: add one as tokenizer/ to generate)"
    print(f"wrote rotary checkpoint {out} ({task}) from {source}{note}")
    return 0


def _fresh_tmp(out, what: str = "convert"):
    import os

    return out.parent / f".tmp-{out.name}-{what}-{os.getpid()}"


def _remove(path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
