"""``rotary info``: model presets and their sizes."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="list model presets with parameter counts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rotary.config import PRESETS

    print(f"{'preset':<16} {'layers':>6} {'d_model':>7} {'heads':>5} {'kv':>3} {'params':>10}")
    for name, cfg in PRESETS.items():
        n = cfg.estimate_num_parameters()
        print(f"{name:<16} {cfg.n_layer:>6} {cfg.d_model:>7} {cfg.n_head:>5} {cfg.kv_heads:>3} {n / 1e6:>9.1f}M")
    return 0
