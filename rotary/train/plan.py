"""A plan before the bill: what a recipe's run costs at a scale, before any GPU is paid for.

From the recipe alone (the model is built on the ``meta`` device: no weights are allocated):
parameters, the batch arithmetic at a world size (global batch = per device x accumulation x
world; ``global_batch_tokens`` fixes the tokens and the accumulation follows), FLOPs per step
(the model's own ``flops_per_token``, as the trainer's MFU uses), memory per device and the wall
time at a stated MFU of an accelerator's dense peak.

Memory per device, in bytes: fp32 master weights (4 per parameter; bf16 autocast keeps them),
gradients (4), AdamW's two moments (8; Muon keeps one for the block matrices), DDP's gradient
buckets (4, with more than one process), and activations. FSDP (``fully_shard`` per block)
divides weights, gradients and optimizer state by the world size and holds two blocks unsharded
(the one computing and the one prefetched). Activations are *measured*, not guessed: the model
runs forward with 1 and 2 layers at 1 and 2 sequences of the recipe's length, in its precision,
and the bytes autograd saves are summed (``saved_tensors_hooks``, each storage once), which
separates the per-layer, per-sequence part from the fixed ones; with attention dropout the CPU's
math attention would save its T x T probabilities, which a GPU's flash kernel does not, so the
probe runs without it. The peak is weights + optimizer + activations, + gradients when steps
accumulate (they persist across micro-batches), and at least weights + gradients + optimizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from rotary.errors import RotaryError
from rotary.train.accelerators import ACCELERATORS, Accelerator
from rotary.train.batching import Batching, grad_accum_steps
from rotary.train.config import TrainConfig

PLANNED_TASKS = ("causal_lm", "sft", "masked_lm")


def batching(cfg: TrainConfig, world_size: int) -> Batching:
    seq_len = cfg.seq_len or int(model_config(cfg).max_seq_len)
    return Batching(world_size, cfg.batch_size, grad_accum_steps(cfg, seq_len, world_size), seq_len)


def model_config(cfg: TrainConfig) -> Any:
    from rotary.train.setup import resolve_model_config

    if cfg.task not in PLANNED_TASKS:
        raise RotaryError(f"rotary plan covers the pretraining tasks ({', '.join(PLANNED_TASKS)}); this recipe's "
                          f"task is {cfg.task}")
    vocab = int(cfg.model.get("vocab_size") or cfg.data.tokenizer.vocab_size or 0)
    if vocab <= 0:
        raise RotaryError("the recipe sets no vocabulary size (data.tokenizer.vocab_size or model.vocab_size): "
                          "the plan needs one")
    return resolve_model_config(cfg, vocab_size=vocab, pad_id=None)


def build(cfg: TrainConfig, device: str | torch.device = "meta", **changes: Any) -> torch.nn.Module:
    """The recipe's model (on ``meta``: shapes only), with ``changes`` to its config."""
    from rotary.tasks import get_task

    mcfg = dataclasses.replace(model_config(cfg), **changes)
    with torch.device(device):
        return get_task(cfg.task).build_model(mcfg, {})


@dataclass
class Activations:
    """Bytes autograd saves in one forward: fixed + per_layer * L (weight casts) + rows *
    (per_row + per_layer_row * L)."""

    fixed: float
    per_layer: float
    per_row: float
    per_layer_row: float

    def bytes(self, n_layer: int, rows: int) -> float:
        return self.fixed + self.per_layer * n_layer + rows * (self.per_row + self.per_layer_row * n_layer)


def _saved_bytes(model: torch.nn.Module, cfg: TrainConfig, rows: int, seq_len: int, autocast: bool) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (rows, seq_len + 1), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        if cfg.task == "masked_lm":
            labels = torch.full((rows, seq_len), -100)
            every = max(1, round(1 / max(cfg.data.mlm_probability, 1e-3)))
            labels[:, ::every] = ids[:, :seq_len:every]
            model(ids[:, :seq_len], labels=labels)
        else:
            model(ids[:, :-1], targets=ids[:, 1:])
    return sum(seen.values())


def measure_activations(cfg: TrainConfig, seq_len: int, precision: str) -> Activations:
    """Four forwards on this CPU (1 and 2 layers x 1 and 2 sequences) of the recipe's model."""
    from rotary.ops import inductor
    from rotary.precision import resolved

    autocast = resolved(precision, torch.device("cpu")) in ("bf16", "fp16")
    s = {}
    was, inductor.enabled = inductor.enabled, False  # eager kernels: the same tensors saved, no compile wait
    try:
        for layers in (1, 2):
            torch.manual_seed(0)
            model = build(cfg, "cpu", n_layer=layers, attention_dropout=0.0).train()
            for rows in (1, 2):
                s[layers, rows] = _saved_bytes(model, cfg, rows, seq_len, autocast)
            del model
    finally:
        inductor.enabled = was
    per_layer_row = s[2, 2] - s[2, 1] - s[1, 2] + s[1, 1]
    per_layer = s[2, 1] - s[1, 1] - per_layer_row
    per_row = s[1, 2] - s[1, 1] - per_layer_row
    fixed = s[1, 1] - per_row - per_layer - per_layer_row
    return Activations(fixed, per_layer, per_row, per_layer_row)


@dataclass
class Memory:
    weights: float
    gradients: float
    optimizer: float
    buckets: float
    gathered: float  # FSDP: the unsharded blocks in flight
    activations: float
    accumulating: bool

    @property
    def peak(self) -> float:
        held = self.weights + self.optimizer + self.buckets + self.gathered
        return max(held + self.activations + (self.gradients if self.accumulating else 0.0),
                   held + self.gradients)


def optimizer_bytes(model: torch.nn.Module, kind: str) -> float:
    total = model.num_parameters()  # tied weights once
    if kind != "muon":
        return 8.0 * total
    from rotary.train.schedule import hidden_matrices

    matrices = sum(p.numel() for p in hidden_matrices(model))
    return 4.0 * matrices + 8.0 * (total - matrices)


def memory(model: torch.nn.Module, cfg: TrainConfig, b: Batching, activations: Activations, strategy: str) -> Memory:
    n = model.num_parameters()
    cfgm = model.config
    shard = b.world_size if strategy == "fsdp" else 1
    block = 0
    if strategy == "fsdp":
        layers = getattr(model.backbone, "layers", None)
        if layers is not None and len(layers):
            block = sum(p.numel() for p in layers[0].parameters())
    return Memory(
        weights=4.0 * n / shard, gradients=4.0 * n / shard, optimizer=optimizer_bytes(model, cfg.optimizer) / shard,
        buckets=4.0 * n if strategy == "ddp" and b.world_size > 1 else 0.0,
        gathered=2 * 4.0 * block, activations=activations.bytes(cfgm.n_layer, b.batch_size),
        accumulating=b.accum > 1)


@dataclass
class Plan:
    recipe: str
    task: str
    accelerator: Accelerator
    mfu: float
    batching: Batching
    parameters: int
    flops_per_token: float
    max_steps: int
    memory: dict[str, Memory] = field(default_factory=dict)
    train_tokens: int | None = None
    precision: str = "bf16"
    activations: Activations | None = None
    asked_tokens: int | None = None  # the recipe's global_batch_tokens

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.batching.tokens_per_step

    @property
    def step_seconds(self) -> float:
        peak = self.accelerator.bf16_tflops if self.precision in ("bf16", "fp16") else self.accelerator.tf32_tflops
        return self.flops_per_step / (self.batching.world_size * peak * 1e12 * self.mfu)

    @property
    def total_hours(self) -> float:
        return self.step_seconds * self.max_steps / 3600


def make_plan(cfg: TrainConfig, *, world_size: int = 1, accelerator: str = "h100", mfu: float = 0.4,
              train_tokens: int | None = None) -> Plan:
    if accelerator not in ACCELERATORS:
        raise RotaryError(f"unknown accelerator '{accelerator}': choose one of {', '.join(ACCELERATORS)}")
    if not 0 < mfu <= 1:
        raise RotaryError(f"--mfu must be in (0, 1], got {mfu}")
    if world_size < 1:
        raise RotaryError(f"the world size must be at least 1, got {world_size}")
    model = build(cfg)
    b = batching(cfg, world_size)
    share = cfg.data.mlm_probability if cfg.task == "masked_lm" else 1.0
    precision = cfg.precision if cfg.precision != "auto" else "bf16"  # auto is bf16 on every listed GPU
    acts = measure_activations(cfg, b.seq_len, precision)
    plan = Plan(cfg.name, cfg.task, ACCELERATORS[accelerator], mfu, b,
                model.num_parameters(),
                model.flops_per_token(b.seq_len, training=True, predicted_share=share), cfg.max_steps,
                train_tokens=train_tokens, precision=precision, activations=acts,
                asked_tokens=cfg.global_batch_tokens)
    plan.memory = {s: memory(model, cfg, b, acts, s) for s in ("ddp", "fsdp")}
    return plan


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def format_plan(plan: Plan) -> str:
    b, acc = plan.batching, plan.accelerator
    lines = [
        f"plan for {plan.recipe} ({plan.task}) on {b.world_size} x {acc.name}, {plan.precision}, "
        f"at {plan.mfu:.0%} MFU",
        f"  parameters        {plan.parameters:,} ({plan.parameters / 1e6:.1f}M)",
        f"  batch             {b.batch_size} sequences/device x accumulation {b.accum} x {b.world_size} devices = "
        f"{b.global_rows:,} sequences of {b.seq_len} = {b.tokens_per_step:,} tokens/step",
        f"  steps             {plan.max_steps:,}: {b.tokens_per_step * plan.max_steps / 1e9:,.2f}B tokens in all",
    ]
    if plan.asked_tokens and plan.asked_tokens != b.tokens_per_step:
        lines.append(f"  note              global_batch_tokens asks {plan.asked_tokens:,}: at {b.world_size} devices x "
                     f"{b.batch_size} x {b.seq_len} the nearest whole accumulation ({b.accum}) gives "
                     f"{b.tokens_per_step:,}; pick a batch_size or world size that divides it")
    if plan.train_tokens:
        epoch = b.steps_per_epoch(plan.train_tokens)
        lines.append(f"  epoch             {epoch:,} steps over {plan.train_tokens / 1e9:,.2f}B training tokens "
                     f"({plan.max_steps / epoch:.2f} epochs)")
    lines += [
        f"  FLOPs             {plan.flops_per_token:.3g} per token, {plan.flops_per_step:.3g} per step, "
        f"{plan.flops_per_step * plan.max_steps:.3g} in all",
        f"  time              {plan.step_seconds:.3f} s/step -> {plan.total_hours:,.1f} h "
        f"({plan.total_hours * b.world_size:,.0f} device-hours), evaluation not counted",
        "  memory per device        ddp        fsdp",
    ]
    rows = [("weights (fp32)", "weights"), ("gradients", "gradients"), ("optimizer state", "optimizer"),
            ("DDP buckets", "buckets"), ("FSDP gathered", "gathered"), ("activations", "activations"),
            ("peak", "peak")]
    for label, key in rows:
        d, f = (getattr(plan.memory[s], key) for s in ("ddp", "fsdp"))
        lines.append(f"    {label:<18} {_gib(d):>12} {_gib(f):>12}")
    cap = acc.memory_gib * 2**30
    for s in ("ddp", "fsdp"):
        peak = plan.memory[s].peak
        verdict = "fits" if peak <= 0.9 * cap else "does NOT fit"
        lines.append(f"  {s}: peak {_gib(peak)} of {acc.memory_gib:g} GiB: {verdict}"
                     + ("" if peak <= 0.9 * cap else " (lower batch_size, raise grad_accum_steps, or use fsdp)"))
    return "\n".join(lines)
