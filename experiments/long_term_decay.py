"""Study 6: RoPE's long-term decay (RoFormer section 3.4.3).

The paper bounds the relative attention score of RoPE by Abel summation:

    |sum_j Re[h_j e^{i r theta_j}]| <= (max_j |h_{j+1} - h_j|) * sum_{j=1}^{d/2} |S_j|,
    S_j = sum_{k<j} e^{i r theta_k},   theta_k = base^(-2k/d)

and plots the relative upper bound (1/(d/2)) sum_j |S_j| against the relative distance r
(its Figure 2): it decays as r grows. This script computes that curve for the study models'
head dim and several ``rope_theta`` values, and sets beside it what a trained model does: the
average attention probability at each distance, measured on held-out text with the study-1 models
(RoPE, and ALiBi / sinusoidal / none for contrast), within the trained context and at 8x it.

    python experiments/long_term_decay.py             # needs study 1's runs (trains them if missing)
    python experiments/long_term_decay.py --quick --runs-dir DIR --out DIR
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import position_ablation as study1
import studylib as lib
import torch

import rotary
from rotary import apply_rope

THETAS = [100.0, 10000.0, 500000.0]  # a small base, the RoFormer/Llama 2 one, Llama 3's
CONTRAST = ["rope", "alibi", "sinusoidal", "none"]


def relative_upper_bound(head_dim: int, theta: float, distances: np.ndarray) -> np.ndarray:
    """(1/(d/2)) sum_{j=1}^{d/2} |S_j(r)| for each distance r (the paper's Figure 2 curve)."""
    half = head_dim // 2
    freqs = theta ** (-2.0 * np.arange(half) / head_dim)  # (d/2,)
    phases = np.exp(1j * distances[:, None] * freqs[None, :])  # (R, d/2)
    partial = np.cumsum(phases, axis=1)  # S_1..S_{d/2}: S_j sums the first j terms
    return np.abs(partial).mean(axis=1)


@torch.no_grad()
def attention_by_distance(run: Path, tokens: np.ndarray, window: int, max_windows: int) -> np.ndarray:
    """Mean attention probability at each distance 0..window-1, over layers, heads and the queries
    of the last quarter of each window (they all see a full window, so rows are comparable)."""
    pre = rotary.load(run, which="latest", device="cpu")
    model = pre.model
    cfg = model.config
    starts = range(0, len(tokens) - window, window)
    ids = torch.from_numpy(np.stack([tokens[s:s + window] for s in list(starts)[:max_windows]]).astype(np.int64))
    captured: list[torch.Tensor] = []
    hooks = [layer.attn.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
             for layer in model.backbone.layers]
    model(ids)
    for h in hooks:
        h.remove()
    B, T = ids.shape
    hd, H, KV = cfg.head_dim, cfg.n_head, cfg.kv_heads
    q_from = T - T // 4
    totals = torch.zeros(T, dtype=torch.float64)
    positions = torch.arange(T)
    distance = positions[q_from:, None] - positions[None, :]  # (Tq, T)
    for layer, x in zip(model.backbone.layers, captured):
        q, k, _ = layer.attn.qkv_proj(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)[:, :, q_from:]  # (B, H, Tq, hd)
        k = k.view(B, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, dim=1)  # (B, H, T, hd)
        if cfg.position == "rope":
            cos, sin = model.backbone.rope(T)
            q = apply_rope(q, cos[q_from:], sin[q_from:])
            k = apply_rope(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # (B, H, Tq, T)
        if cfg.position == "alibi":
            scores = scores - model.backbone.alibi_slopes[None, :, None, None] * distance.clamp(min=0)
        scores = scores.masked_fill(distance < 0, float("-inf"))
        probs = scores.softmax(-1).double()  # (B, H, Tq, T)
        # sum the probability at each distance over queries, then divide by how many queries have it
        d = distance.clamp(min=0).expand_as(probs)
        totals += torch.zeros(T, dtype=torch.float64).scatter_add_(0, d.reshape(-1), probs.reshape(-1))
    counts = torch.zeros(T, dtype=torch.float64).scatter_add_(
        0, distance.clamp(min=0).reshape(-1), (distance >= 0).double().reshape(-1))
    counts *= B * H * len(captured)
    return (totals / counts.clamp(min=1)).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=study1.SEEDS)
    parser.add_argument("--schemes", nargs="+", default=CONTRAST, choices=CONTRAST,
                        help="the models whose attention is measured (rope is always one)")
    parser.add_argument("--runs-dir", type=Path, default=lib.ROOT / "runs" / "studies" / "positions")
    parser.add_argument("--out", type=Path, default=lib.RESULTS)
    parser.add_argument("--quick", action="store_true", help="the same code on a tiny budget (the test)")
    args = parser.parse_args(argv)
    from rotary import cpu_model
    context = study1.budget(args.quick).get("context", study1.CONTEXT)
    schemes = list(dict.fromkeys(["rope", *args.schemes]))
    study1.ensure_runs(schemes, args.seeds, args.runs_dir, args.quick)
    head_dim = rotary.load(study1.run_dir(args.runs_dir, "rope", args.seeds[0]), which="latest",
                           device="cpu").model.config.head_dim
    far = 8 * context
    distances = np.arange(far)
    bounds = {theta: relative_upper_bound(head_dim, theta, distances) for theta in THETAS}

    pre = rotary.load(study1.run_dir(args.runs_dir, "rope", args.seeds[0]), which="latest", device="cpu")
    docs = study1.validation_docs(args.quick)
    tokens = np.concatenate([np.asarray(pre.tokenizer.encode(d), dtype=np.int64) for d in docs])
    measured: dict[str, dict[int, Any]] = {}
    for scheme in schemes:
        measured[scheme] = {}
        for window, n_windows in ((context, 64), (far, 4 if not args.quick else 2)):
            curves = [attention_by_distance(study1.run_dir(args.runs_dir, scheme, s), tokens, window, n_windows)
                      for s in args.seeds]
            measured[scheme][window] = np.mean(curves, axis=0)

    plt = lib.pyplot()
    fig, (ax_b, ax_near, ax_far) = plt.subplots(1, 3, figsize=(16, 4.5))
    for theta, curve in bounds.items():
        ax_b.plot(distances, curve, label=f"rope_theta = {theta:g}")
    ax_b.set(title=f"RoFormer's relative upper bound (head dim {head_dim})", xlabel="relative distance",
             ylabel="(1/(d/2)) Σ|S_j|", xscale="symlog")
    for ax, window in ((ax_near, context), (ax_far, far)):
        for scheme in schemes:
            curve = measured[scheme][window]
            ax.plot(np.arange(1, len(curve)), curve[1:], label=scheme, lw=1.0)
        ax.set(title=f"measured: mean attention by distance, window {window}", xlabel="distance",
               ylabel="attention probability", xscale="log", yscale="log")
        ax.axvline(context, color="grey", lw=0.8)
    for ax in (ax_b, ax_near, ax_far):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lib.save_figure(fig, args.out / "long_term_decay.png")

    marks = [d for d in (1, 4, 16, 64, 127, 256, 512, 1023) if d < far]
    rows = ["| curve | " + " | ".join(f"r={d}" for d in marks) + " |", "|---|" + "---|" * len(marks)]
    for theta, curve in bounds.items():
        rows.append(f"| bound, theta {theta:g} | " + " | ".join(f"{curve[d]:.2f}" for d in marks) + " |")
    for scheme in schemes:
        curve = measured[scheme][far]
        rows.append(f"| attention ({scheme}, window {far}) | " + " | ".join(f"{curve[d]:.2e}" for d in marks) + " |")
    lines = ["# Study 6: RoPE's long-term decay", "",
             f"`python experiments/long_term_decay.py` on {cpu_model()}. The bound is RoFormer section 3.4.3's "
             f"relative upper bound (1/(d/2)) Σ_j |S_j| for head dim {head_dim}; the measured curves are the mean "
             f"attention probability at each distance of the study-1 models (seeds {', '.join(map(str, args.seeds))},"
             f" trained at {context} tokens), over every layer and head and the queries of the last quarter of "
             f"each window, on the held-out works, at the trained window ({context}) and at {far}.",
             *(["", "**--quick budget (a test of the code, not a result).**"] if args.quick else []),
             "", *rows, "", "![long_term_decay.png](long_term_decay.png)"]
    data = {"head_dim": head_dim, "context": context,
            "bound": {str(t): [float(bounds[t][d]) for d in marks] for t in THETAS}, "marks": marks,
            "measured": {s: {str(w): [float(c[d]) for d in marks if d < w] for w, c in measured[s].items()}
                         for s in schemes}}
    lib.write_results(args.out, "long_term_decay", data, lines)
    print(f"wrote {args.out / 'long_term_decay.md'}")


if __name__ == "__main__":
    main()
