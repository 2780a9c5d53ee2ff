"""The training loop: plain code, read top to bottom (nanoGPT's shape, torchtitan's separation).

``train(cfg)`` is ``rotary train``: it checks the run directory, builds the task's data and
model from the task table, then hands them to ``fit``, the loop itself. ``fit`` knows no task:
it takes a model, a task row (how a batch becomes the model's arguments, which metrics its
evaluation reports) and the task's batches, so fine-tuning reuses it unchanged.

Runs alone, under ``torchrun`` (one or many nodes) and under ``accelerate launch``; rank 0 alone
logs and writes. Exact resume rests on three facts: batch k is a pure function of (seed, k), the
learning rate is a pure function of the step, and the optimiser and RNG states are saved with
the weights.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rotary import __version__
from rotary import checkpoint as ckpt
from rotary.device import keep_freed_cpu_memory
from rotary.errors import RotaryError
from rotary.evaluation.batches import evaluate
from rotary.model.transformer import compile_blocks
from rotary.ops import gemm, inductor
from rotary.precision import resolve as resolve_precision
from rotary.tasks import Task, get_task
from rotary.train.batching import grad_accum_steps
from rotary.train.compilation import resolve as resolve_compile
from rotary.train.config import TrainConfig
from rotary.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    init_distributed,
    launcher_asked_for,
    shutdown,
    wrap_model,
)
from rotary.train.logging import RunLogger, format_eta, plot_losses
from rotary.train.metrics import CountedBatches, measure_matmul_peak
from rotary.train.run_directory import Progress, RunDirectory, Training, checkpoint_due, torch_dtype
from rotary.train.schedule import lr_at, make_optimizer
from rotary.train.setting_up import setting_up
from rotary.train.setup import (
    apply_init_from,
    prepare_run,
    resolve_model_config,
    start_output_bias,
)
from rotary.train.signals import StopRequest
from rotary.train.state import set_rng_state
from rotary.train.step import train_step


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "max_steps", "early_stopping", "interrupted", "resumed_finished"
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM), when one did
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_second: float = 0.0
    test: dict[str, Any] = field(default_factory=dict)  # a fine-tune's one scoring of its test split


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          verify: bool = True) -> TrainResult:
    """Train as the recipe says; returns where it stopped and its last evaluation.

    ``resume`` continues the run in ``cfg.run_dir`` from its newest checkpoint (checked against
    its manifest; ``verify=False`` skips the sha256 sums); ``overwrite`` replaces that run.
    """
    task = get_task(cfg.task)
    if task.make_data is None:
        raise RotaryError(f"task {task.name} is not trained from a corpus by `rotary train`: fine-tune it with "
                          f"`rotary finetune RECIPE --from RUN`")
    start_weights = apply_init_from(cfg)
    info = init_distributed(cfg.device, cfg.dist_timeout_s)
    try:
        # a failure before the first step leaves the directory as it was (tokenizer, shards, the run replaced)
        with setting_up(cfg.run_dir, enabled=info.is_main, overwrite=overwrite) as setup:
            latest, notes = prepare_run(cfg, info, resume=resume, overwrite=overwrite, verify=verify, setup=setup)
            model, data, seq_len = _build(cfg, info, task, start_weights, latest, notes)
        return fit(cfg, info, task, model, data, seq_len=seq_len, latest=latest, notes=notes)
    finally:
        if info.enabled:
            # Free the wrapped model, optimizer and their pending collective handles (reference
            # cycles) while the process group is alive: left to interpreter exit, gloo's threads
            # were found destroyed mid-flight (std::terminate, SIGABRT) in ~1 of 6 FSDP resumes.
            gc.collect()
        shutdown(info)


def _build(cfg: TrainConfig, info: DistInfo, task: Task, start_weights: Path | None, latest: Path | None,
           notes: list[str]) -> tuple[nn.Module, Any, int]:
    """The data (tokenizer and shards made when missing) and the model it sizes; adds to ``notes``."""
    data = task.make_data(cfg, info)
    stored_vocab = cfg.model.get("vocab_size") if start_weights is not None else None
    grow_to = None
    if stored_vocab is not None and data.vocab_size > stored_vocab:
        # init_from's tokenizer gained tokens (SFT's chat tokens): the model grows after loading;
        # a resumed run's checkpoint has the grown size already
        grow_to = data.vocab_size
        if latest is not None:
            cfg.model["vocab_size"], grow_to = data.vocab_size, None
    model_cfg = resolve_model_config(cfg, data.vocab_size if grow_to is None else stored_vocab, data.pad_id,
                                     getattr(data, "model_settings", None))
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    sizes = {"model_vocab": model_cfg.vocab_size}
    if task.name == "seq2seq":
        sizes["model_target_vocab"] = model_cfg.target_vocab_size
    if grow_to is not None:
        sizes["model_vocab"] = grow_to
    data.configure(seq_len=seq_len, batch_size=cfg.batch_size, seed=cfg.seed, **sizes)
    torch.manual_seed(cfg.seed)
    model = task.build_model(model_cfg, {}).to(info.device)
    notes.extend(getattr(data, "notes", []))
    if cfg.label_smoothing:
        model.label_smoothing = cfg.label_smoothing
    if start_weights is not None and latest is None:
        ckpt.load_weights(model, start_weights)
        notes.append(f"weights from {start_weights.parent} (init_from)")
        if grow_to is not None:
            model.grow_vocab(grow_to)
            cfg.model["vocab_size"] = grow_to
            notes.append(f"vocabulary grown {stored_vocab} -> {grow_to} for the tokenizer's new tokens (new rows "
                         "start at the mean of the old ones; old ids unchanged)")
    # a fresh run or an init_from one starts the bias at this data's unigram (a resume keeps its
    # own); data without a token stream (SFT's conversations) keeps the pretrained bias
    if latest is None and hasattr(data, "train_tokens") and (note := start_output_bias(model, data.train_tokens)):
        notes.append(note)
    return model, data, seq_len


def fit(cfg: TrainConfig, info: DistInfo, task: Task, raw_model: nn.Module, data: Any, *, seq_len: int,
        latest: Path | None = None, notes: list[str] | tuple[str, ...] = ()) -> TrainResult:
    """Train ``raw_model`` on ``data``'s batches as ``task`` says, from ``latest`` if given.

    ``data`` provides ``train_batches(start_step, accum, info)``, ``eval_batches(max_batches,
    info)`` and ``tokenizer_dir``; the run directory (``RunDirectory``: resume, checkpoints,
    keep-N, best/), logging, evaluation, early stopping, signals and exact resume are the loop's.
    """
    accum = grad_accum_steps(cfg, seq_len, info.world_size)
    tokens_per_step = cfg.batch_size * seq_len * accum * info.world_size  # at most: padded batches are shorter
    head = {k: getattr(raw_model, k) for k in task.head_keys if hasattr(raw_model, k)} | getattr(data, "head_settings",
                                                                                                 {})
    run = RunDirectory(cfg, info, task.name, raw_model, head=head, tokenizer_dir=data.tokenizer_dir, accum=accum,
                       tokens_per_step=tokens_per_step)
    progress = run.load_weights(latest)
    start_step = progress.step
    training, how = build_training(cfg, info, task, raw_model)
    resume_rng = run.load_training_state(training, latest)
    run.begin(start_step)
    logger = RunLogger(run.path, enabled=info.is_main, tensorboard=cfg.tensorboard, progress=cfg.progress,
                       total_steps=cfg.max_steps, start_step=start_step)
    result = TrainResult(run_dir=run.path, step=start_step, stopped="max_steps")
    peak = measure_matmul_peak(info.device, torch_dtype(training.precision))  # MFU's denominator
    _log_start(logger, cfg, info, run, latest, progress, notes,
               f"rotary {__version__} | {task.name} | {raw_model.num_parameters() / 1e6:.2f}M parameters | device "
               f"{info.device} x{info.world_size} | {tokens_per_step} tokens/step (batch {cfg.batch_size} x seq "
               f"{seq_len} x accum {accum} x {info.world_size} proc) | {how}")
    if start_step >= cfg.max_steps:
        result.stopped = "resumed_finished"
        logger.line(f"{latest} already reached max_steps={cfg.max_steps}: nothing to train")
        logger.close()
        return _finish(result, progress)
    if resume_rng is not None:  # last, so that nothing in the setup consumes the dropout stream
        set_rng_state(resume_rng)
    batches = CountedBatches(data.train_batches(start_step, accum, info), raw_model.flops_per_token)
    training.model.train()
    if training.compiled != "none":  # else the bar sits silent at step 0 while Inductor works
        logger.line(f"compiling the {'model' if training.compiled == 'model' else 'Transformer blocks'} "
                    "(torch.compile): the first step takes a while, the next ones are fast")
    run_t0 = time.perf_counter()
    with StopRequest() as stop:
        while progress.step < cfg.max_steps:
            lr = set_lr(training.optimizer, cfg, progress.step)
            loss_sum, grad_norm = train_step(training.model, training.forward, task, batches,
                                             optimizer=training.optimizer, scaler=training.scaler, accum=accum,
                                             precision=training.precision, grad_clip=cfg.grad_clip, device=info.device,
                                             world=info)
            progress.step += 1
            step = progress.step
            loss_value, signalled = _agree(loss_sum, stop, info, logger, run.path, step)
            result.train_losses.append((step, loss_value))
            positions, flops = batches.take()  # this rank's; the other ranks' batches are alike
            progress.window.add(loss_value, positions * info.world_size, flops * info.world_size)
            _log_train(logger, result, progress, cfg, lr, grad_norm, peak * info.world_size, tokens_per_step,
                       loss_value)
            best = stopping = False
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                best, stopping = _evaluate_and_record(training, data, cfg, info, logger, progress, result)
            interrupted = signalled or stop.signal is not None  # a signal during this step's logging too
            if checkpoint_due(cfg, step) or stopping or interrupted or best:
                run.save(training, progress, best=best)
            if interrupted:
                result.stopped, result.signal = "interrupted", stop.signal
                logger.line(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                break
            if stopping:
                break
    trained = progress.step - start_step
    logger.line(f"trained {trained} step{'' if trained == 1 else 's'} in {time.perf_counter() - run_t0:.1f}s; "
                f"run directory: {run.path}")
    logger.close()
    if info.is_main:
        plot_losses(run.path)
    return _finish(result, progress)


def _evaluate_and_record(training: Training, data: Any, cfg: TrainConfig, info: DistInfo, logger: RunLogger,
                         progress: Progress, result: TrainResult) -> tuple[bool, bool]:
    """Evaluate at progress.step, log it, and say (a new best, time to stop early)."""
    metrics = evaluate(training.forward, data, cfg, info, cfg.eval_batches)
    logger.metrics("eval", progress.step, metrics)
    logger.line("eval   " + " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in metrics.items()))
    best, stopping = progress.record_eval(metrics, cfg)
    if stopping:
        result.stopped = "early_stopping"
        logger.line(f"early stopping: no improvement in {progress.bad_evals} evaluations")
    return best, stopping


def build_training(cfg: TrainConfig, info: DistInfo, task: Task, raw_model: nn.Module) -> tuple[Training, str]:
    """The wrapped model, its precision and compilation, the optimiser and scaler; and how the
    run trains, for its first log line."""
    if info.device.type == "cpu":
        keep_freed_cpu_memory()  # no page faults on every step's fresh activations
    model = wrap_model(raw_model, info, cfg.distributed)
    precision, why = resolve_precision(cfg.precision, info.device)
    compiled, compile_why = resolve_compile(cfg.compile, info.device, precision, cfg.distributed,
                                            info.world_size, task.fixed_windows)
    forward = torch.compile(model) if compiled == "model" else model
    if compiled == "blocks":
        compile_blocks(raw_model)
    optimizer = make_optimizer(raw_model if cfg.distributed != "fsdp" else model, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                               eps=cfg.eps, device=info.device, kind=cfg.optimizer,
                               muon_momentum=cfg.muon_momentum, layer_decay=cfg.layer_lr_decay)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    cpu = info.device.type == "cpu"
    how = (precision + (f" (CPU GEMM: {gemm.cpu_gemm()})" if cpu and precision == "fp32" else "")
           + (f" (CPU kernels: {inductor.describe()})" if cpu and precision == "bf16" else "")
           + (f" ({why})" if cfg.precision == "auto" else "")
           + f" | compile: {compiled}" + (f" ({compile_why})" if cfg.compile == "auto" else ""))
    return Training(model, forward, optimizer, scaler, precision, compiled), how


def set_lr(optimizer: Any, cfg: TrainConfig, step: int) -> float:
    """The schedule's learning rate for ``step`` on every group (times layer_lr_decay's factor)."""
    lr = lr_at(step, peak=cfg.lr, final=cfg.final_lr(), warmup=cfg.warmup(), total=cfg.max_steps,
               kind=cfg.lr_schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def _log_start(logger: RunLogger, cfg: TrainConfig, info: DistInfo, run: RunDirectory, latest: Path | None,
               progress: Progress, notes: Sequence[str], header: str) -> None:
    if info.is_main and (asked := launcher_asked_for()) is not None:
        logger.line(f"warning: accelerate launch was asked for {asked or 'several'} processes; this run has 1")
    if latest is not None:
        logger.line(f"resumed from {latest} at step {progress.step}")
        if run.repair_best(latest, progress):
            logger.line(f"best/ updated to step {progress.step}, the best evaluation so far")
    for note in notes:
        logger.line(note)
    logger.line(header)


def _agree(loss_sum: torch.Tensor, stop: StopRequest, info: DistInfo, logger: RunLogger, run_dir: Path,
           step: int) -> tuple[float, bool]:
    """The loss averaged over ranks, and whether any rank has been signalled so far; all ranks
    agree on stopping: a NaN anywhere stops everyone (an error), a signal anywhere saves and stops."""
    loss_value = loss_sum.item()
    if info.enabled:
        t = torch.tensor([loss_value], dtype=torch.float64)
        all_reduce_sum(t, info)
        loss_value = float(t.item()) / info.world_size
    flags = all_reduce_max(float(not math.isfinite(loss_value)) * 2 + float(stop.signal is not None), info)
    if flags >= 2:
        logger.line(f"loss is {loss_value} at step {step}: training diverged and was stopped; the last good "
                    f"checkpoint is kept in {run_dir / ckpt.CHECKPOINTS}. Lower lr or enable grad_clip.")
        logger.close()
        raise RotaryError(f"non-finite loss ({loss_value}) at step {step}: lower lr or set grad_clip")
    return loss_value, flags >= 1


def _log_train(logger: RunLogger, result: TrainResult, progress: Progress, cfg: TrainConfig, lr: float,
               grad_norm: Any, peak: float, tokens_per_step: int, loss_value: float) -> None:
    """The log line every log_interval steps (the window's means), and the bar every step."""
    step, window = progress.step, progress.window
    if step % cfg.log_interval == 0 or step == cfg.max_steps:
        tok_s = window.rate()
        mfu = window.flops_rate() / peak
        values = {"loss": window.mean_loss(), "lr": lr, "tokens_per_s": tok_s, "mfu": mfu,
                  "tokens": step * tokens_per_step}
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        logger.metrics("train", step, values)
        eta = (cfg.max_steps - step) * window.seconds_per_step()
        logger.line(f"step {step:>6}/{cfg.max_steps} | loss {values['loss']:.4f} | lr {lr:.2e} | "
                    f"{tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {format_eta(eta)}")
        result.tokens_per_second = tok_s
        window.reset()
    # the bar's rate: the current log window so far (the last full window right after a log)
    live = window.rate() if window.tokens else result.tokens_per_second
    logger.progress(step, {"loss": f"{loss_value:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{live:,.0f}"})


def _finish(result: TrainResult, progress: Progress) -> TrainResult:
    result.step, result.best_eval, result.last_eval = progress.step, progress.best_eval, progress.last_eval
    return result
