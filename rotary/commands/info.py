"""``rotary info``: model presets and their sizes, and how this machine will run them."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from rotary.commands import add_verb

    p = add_verb(
        subparsers, "info",
        help="list model presets with parameter counts, and this machine's compute setup")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.model.presets import PRESETS

    machine = machine_summary()  # first: a bad ROTARY_CPU_GEMM is an error before any output
    width = max(len(n) for n in PRESETS) + 2
    print(f"{'preset':<{width}} {'layers':>6} {'d_model':>7} {'heads':>5} {'kv':>3} {'params':>10}  position")
    for name, cfg in PRESETS.items():
        n = cfg.estimate_num_parameters()
        # an encoder-decoder shows encoder+decoder layers
        layers = f"{cfg.n_layer}+{cfg.decoder_layers}" if cfg.n_decoder_layer is not None else str(cfg.n_layer)
        print(f"{name:<{width}} {layers:>6} {cfg.d_model:>7} {cfg.n_head:>5} {cfg.kv_heads:>3} {n / 1e6:>9.1f}M  "
              f"{cfg.position}")
    print()
    print(machine)
    return 0


def machine_summary() -> str:
    import torch

    from rotary.ops import gemm

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (f"torch {torch.__version__} | {torch.get_num_threads()} CPU threads | CUDA GPUs: {gpus} | "
            f"CPU fp32 GEMM: {gemm.cpu_gemm()} (set ROTARY_CPU_GEMM=auto|blas|onednn to override)")
