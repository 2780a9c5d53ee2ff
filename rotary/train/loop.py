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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rotary import __version__
from rotary import checkpoint as ckpt
from rotary.config import save_yaml, to_dict
from rotary.device import keep_freed_cpu_memory
from rotary.errors import RotaryError
from rotary.model.transformer import compile_blocks
from rotary.ops import gemm, inductor
from rotary.precision import resolve as resolve_precision
from rotary.tasks import Task, get_task
from rotary.train.compilation import resolve as resolve_compile
from rotary.train.config import TrainConfig
from rotary.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    launcher_asked_for,
    shutdown,
    wrap_model,
)
from rotary.train.evaluate import evaluate
from rotary.train.logging import RunLogger, format_eta, plot_losses, truncate_metrics
from rotary.train.metrics import CountedBatches, LogWindow, measure_matmul_peak
from rotary.train.schedule import lr_at, make_optimizer
from rotary.train.setup import (
    apply_init_from,
    check_run_dir,
    resolve_model_config,
    resume_checkpoint,
    start_output_bias,
)
from rotary.train.signals import StopRequest
from rotary.train.state import full_state_dicts, gather_rng, load_optimizer_state, set_rng_state
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
        latest, notes = prepare_run(cfg, info, resume=resume, overwrite=overwrite, verify=verify)
        data = task.make_data(cfg, info)
        model_cfg = resolve_model_config(cfg, data.vocab_size, data.pad_id, getattr(data, "model_settings", None))
        seq_len = cfg.seq_len or model_cfg.max_seq_len
        sizes = {"model_vocab": model_cfg.vocab_size}
        if task.name == "seq2seq":
            sizes["model_target_vocab"] = model_cfg.target_vocab_size
        data.configure(seq_len=seq_len, batch_size=cfg.batch_size, seed=cfg.seed, **sizes)
        torch.manual_seed(cfg.seed)
        model = task.build_model(model_cfg, {}).to(info.device)
        notes.extend(getattr(data, "notes", []))
        if cfg.label_smoothing:
            model.label_smoothing = cfg.label_smoothing
        if start_weights is not None and latest is None:
            ckpt.load_weights(model, start_weights)
            notes.append(f"weights from {start_weights.parent} (init_from)")
        if latest is None and (note := start_output_bias(model, getattr(data, "train_tokens", []))):
            notes.append(note)  # a fresh run or an init_from one: this data's unigram; a resume keeps its own
        return fit(cfg, info, task, model, data, seq_len=seq_len, latest=latest, notes=notes)
    finally:
        if info.enabled:
            # Free the wrapped model, optimizer and their pending collective handles (reference
            # cycles) while the process group is alive: left to interpreter exit, gloo's threads
            # were found destroyed mid-flight (std::terminate, SIGABRT) in ~1 of 6 FSDP resumes.
            gc.collect()
        shutdown(info)


def prepare_run(cfg: TrainConfig, info: DistInfo, *, resume: bool, overwrite: bool,
                verify: bool, check_model: bool = True) -> tuple[Path | None, list[str]]:
    """Every check that needs no data, before the first file is written, so a mistake never
    leaves a run directory that blocks the corrected rerun. Returns the checkpoint to resume."""
    if cfg.optimizer == "muon" and info.enabled and cfg.distributed == "fsdp":
        raise RotaryError("optimizer: muon needs whole matrices and FSDP shards them: use distributed: ddp "
                          "or optimizer: adamw")
    if cfg.tapt_steps and cfg.task != "classification":
        raise RotaryError(f"tapt_steps pretrains a fine-tune's backbone on its task's texts (rotary finetune); "
                          f"this recipe trains {cfg.task}: remove it")
    if cfg.epochs is not None and cfg.task != "classification":
        raise RotaryError(f"epochs sets the steps of a fine-tune (task classification); this recipe trains "
                          f"{cfg.task}: use max_steps")
    if cfg.label_smoothing and cfg.task != "seq2seq":
        raise RotaryError(f"label_smoothing applies to task seq2seq, this recipe trains {cfg.task}: remove it")
    if cfg.data.target_tokenizer is not None and cfg.task != "seq2seq":
        raise RotaryError(f"data.target_tokenizer is for task seq2seq, this recipe trains {cfg.task}: remove it")
    if cfg.data.target_tokenizer is not None and cfg.model.get("share_embeddings") is True:
        raise RotaryError("data.target_tokenizer gives the target its own vocabulary and embedding: "
                          "set model.share_embeddings false (or remove it)")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise RotaryError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.precision == "fp16" and info.device.type != "cuda":
        raise RotaryError("fp16 training needs CUDA (GradScaler): use --precision bf16 or fp32")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gemm.cpu_gemm()  # a bad ROTARY_CPU_GEMM is an error before any file is written
    # the model section's keys and values (the vocabulary comes from the data later)
    if check_model:
        resolve_model_config(cfg, vocab_size=int(cfg.model.get("vocab_size", 2**16)), pad_id=None)
    had_run = check_run_dir(cfg, resume=resume, overwrite=overwrite, remove=info.is_main)
    latest = resume_checkpoint(cfg.run_dir, verify=verify) if resume else None
    barrier(info)
    if info.is_main:
        ckpt.clean_partial(cfg.run_dir)
    notes = []
    if resume and had_run and latest is None:
        notes.append(f"{cfg.run_dir} has no checkpoint yet: training from step 0")
    return latest, notes


def _grad_accum_steps(cfg: TrainConfig, seq_len: int, info: DistInfo) -> int:
    if cfg.grad_accum_steps is not None:
        return cfg.grad_accum_steps
    if cfg.global_batch_tokens is not None:
        per_micro = cfg.batch_size * seq_len * info.world_size
        return max(1, round(cfg.global_batch_tokens / per_micro))
    return 1


def fit(cfg: TrainConfig, info: DistInfo, task: Task, raw_model: nn.Module, data: Any, *, seq_len: int,
        latest: Path | None = None, notes: list[str] | tuple[str, ...] = ()) -> TrainResult:
    """Train ``raw_model`` on ``data``'s batches as ``task`` says, from ``latest`` if given.

    ``data`` provides ``train_batches(start_step, accum, info)``, ``eval_batches(max_batches,
    info)`` and ``tokenizer_dir``; the run directory, logging, evaluation, early stopping,
    checkpoints (keep-N + best), signals and exact resume are the loop's.
    """
    run_dir = cfg.run_dir
    model_cfg = raw_model.config
    accum = _grad_accum_steps(cfg, seq_len, info)
    start_step, trainer_state, resume_rng = 0, {}, None
    if latest is not None:
        ckpt.load_weights(raw_model, latest / "model.safetensors")
        trainer_state = ckpt.read_trainer_state(latest / "trainer_state.json")
        start_step = trainer_state["step"]
        global_rows = cfg.batch_size * info.world_size * accum
        if trainer_state.get("global_rows", global_rows) != global_rows:
            raise RotaryError(
                f"{latest} was trained with {trainer_state['global_rows']} sequences per step, this run "
                f"has {global_rows}: keep batch_size x processes x grad_accum_steps the same to resume"
            )

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
    if latest is not None:
        state = ckpt.load_training_state(latest / "training_state.pt")
        load_optimizer_state(model, optimizer, state["optimizer"], cfg.distributed, info)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        resume_rng = state.get("rng", {}).get(str(info.rank))

    if info.is_main:
        save_yaml(to_dict(cfg), run_dir / "recipe.yaml")
        truncate_metrics(run_dir, start_step)  # steps after the checkpoint are redone: no duplicates
    logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, progress=cfg.progress,
                       total_steps=cfg.max_steps, start_step=start_step)
    result = TrainResult(run_dir=run_dir, step=start_step, stopped="max_steps")
    # the best value of best_metric so far (older checkpoints recorded only the loss)
    best_value = trainer_state.get("best_value", trainer_state.get("best_val_loss"))
    if trainer_state.get("best_metric", "loss") != cfg.best_metric:  # another metric's best: start afresh
        best_value = None
        trainer_state["evals_without_improvement"] = 0
    bad_evals = int(trainer_state.get("evals_without_improvement", 0))
    result.best_eval = trainer_state.get("best_eval", {})
    result.last_eval = trainer_state.get("last_eval", {})

    tokens_per_step = cfg.batch_size * seq_len * accum * info.world_size  # at most: padded batches are shorter
    # MFU's denominator: the peak of the dtype the GEMMs run in (bf16 on AMX is ~6x fp32)
    peak_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    peak = measure_matmul_peak(info.device, peak_dtype)
    n_params = raw_model.num_parameters()
    if info.is_main and (asked := launcher_asked_for()) is not None:
        logger.line(f"warning: accelerate launch was asked for {asked or 'several'} processes; this run has 1")
    if latest is not None:
        logger.line(f"resumed from {latest} at step {start_step}")
        if info.is_main and result.best_eval.get("step") == start_step and not _holds_step(run_dir / ckpt.BEST,
                                                                                            start_step):
            # the save of this step succeeded and publishing it as best/ failed (a full disk)
            ckpt.publish_best(run_dir, latest)
            logger.line(f"best/ updated to step {start_step}, the best evaluation so far")
    for note in notes:
        logger.line(note)
    logger.line(
        f"rotary {__version__} | {task.name} | {n_params / 1e6:.2f}M parameters | device {info.device} "
        f"x{info.world_size} | {tokens_per_step} tokens/step (batch {cfg.batch_size} x seq {seq_len} x "
        f"accum {accum} x {info.world_size} proc) | {precision}"
        + (f" (CPU GEMM: {gemm.cpu_gemm()})" if info.device.type == "cpu" and precision == "fp32" else "")
        + (f" (CPU kernels: {inductor.describe()})" if info.device.type == "cpu" and precision == "bf16" else "")
        + (f" ({why})" if cfg.precision == "auto" else "")
        + f" | compile: {compiled}" + (f" ({compile_why})" if cfg.compile == "auto" else "")
    )
    if start_step >= cfg.max_steps:
        result.stopped = "resumed_finished"
        logger.line(f"{latest} already reached max_steps={cfg.max_steps}: nothing to train")
        logger.close()
        return result
    window = LogWindow(trainer_state.get("log_window"))
    head = {k: getattr(raw_model, k) for k in task.head_keys if hasattr(raw_model, k)}
    head.update(getattr(data, "head_settings", {}))

    def save(step: int) -> Path | None:
        model_sd, optim_sd = full_state_dicts(model, optimizer, cfg.distributed, info)
        # RNG state of every rank, so each resumes its own dropout stream.
        rng_all = gather_rng(info)
        if not info.is_main:
            barrier(info)
            return None
        if cfg.distributed == "fsdp" and info.enabled:
            state_for_file = {k: v.contiguous() for k, v in ckpt.strip_wrappers(model_sd).items()}
            if model_cfg.tie_embeddings:  # stored once, as in unsharded checkpoints
                state_for_file.pop("lm_head.weight", None)
        else:
            state_for_file = ckpt.model_state_for_saving(raw_model)
        training_state = {"optimizer": optim_sd, "rng": rng_all}
        if scaler is not None:
            training_state["scaler"] = scaler.state_dict()
        content = ckpt.CheckpointContent(
            config=ckpt.checkpoint_config(task.name, model_cfg, head),
            model_state=state_for_file,
            trainer_state={
                "step": step, "tokens_seen": step * tokens_per_step, "micro_batches": step * accum,
                "grad_accum_steps": accum, "global_rows": cfg.batch_size * info.world_size * accum,
                "best_metric": cfg.best_metric, "best_value": best_value,
                "evals_without_improvement": bad_evals, "best_eval": result.best_eval,
                "last_eval": result.last_eval, "seed": cfg.seed, "rotary_version": __version__,
                # the open log window, so the first line after a resume averages the same steps
                "log_window": window.state(),
            },
            training_state=training_state,
            tokenizer_dir=data.tokenizer_dir,
        )
        path = ckpt.write_checkpoint_dir(run_dir / ckpt.CHECKPOINTS / ckpt.step_dir_name(step), content)
        ckpt.prune_checkpoints(run_dir, cfg.keep_checkpoints)
        barrier(info)
        return path

    # -- the loop ---------------------------------------------------------------------------
    if resume_rng is not None:  # last, so that nothing in the setup consumes the dropout stream
        set_rng_state(resume_rng)
    batches = CountedBatches(data.train_batches(start_step, accum, info), raw_model.flops_per_token)
    model.train()
    step = start_step
    if compiled != "none":  # else the bar sits silent at step 0 while Inductor works
        logger.line(f"compiling the {'model' if compiled == 'model' else 'Transformer blocks'} (torch.compile): "
                    "the first step takes a while, the next ones are fast")
    run_t0 = time.perf_counter()
    pending_best = False
    with StopRequest() as stop:
        while step < cfg.max_steps:
            lr = lr_at(step, peak=cfg.lr, final=cfg.final_lr(), warmup=cfg.warmup(), total=cfg.max_steps,
                       kind=cfg.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # layer_lr_decay's per-depth factor
            loss_sum, grad_norm = train_step(model, forward, task, batches, optimizer=optimizer, scaler=scaler,
                                             accum=accum, precision=precision, grad_clip=cfg.grad_clip,
                                             device=info.device)
            step += 1

            loss_value = loss_sum.item()
            if info.enabled:  # the logged loss is the mean over ranks
                t = torch.tensor([loss_value], dtype=torch.float64)
                all_reduce_sum(t, info)
                loss_value = float(t.item()) / info.world_size
            # All ranks agree on stopping: a NaN anywhere or a signal anywhere stops everyone.
            flags = all_reduce_max(float(not math.isfinite(loss_value)) * 2 + float(stop.signal is not None), info)
            if flags >= 2:
                logger.line(
                    f"loss is {loss_value} at step {step}: training diverged and was stopped; the last "
                    f"good checkpoint is kept in {run_dir / ckpt.CHECKPOINTS}. Lower lr or enable grad_clip."
                )
                logger.close()
                raise RotaryError(f"non-finite loss ({loss_value}) at step {step}: lower lr or set grad_clip")
            result.train_losses.append((step, loss_value))
            positions, flops = batches.take()  # this rank's; the other ranks' batches are alike
            window.add(loss_value, positions * info.world_size, flops * info.world_size)

            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                tok_s = window.rate()
                mfu = window.flops_rate() / (peak * info.world_size)
                eta = (cfg.max_steps - step) * window.seconds_per_step()
                values = {"loss": window.mean_loss(), "lr": lr, "tokens_per_s": tok_s, "mfu": mfu,
                          "tokens": step * tokens_per_step}
                if grad_norm is not None:
                    values["grad_norm"] = float(grad_norm)
                logger.metrics("train", step, values)
                logger.line(
                    f"step {step:>6}/{cfg.max_steps} | loss {values['loss']:.4f} | lr {lr:.2e} | "
                    f"{tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {format_eta(eta)}"
                )
                result.tokens_per_second = tok_s
                window.reset()
            # the bar's rate: the current log window so far (the last full window right after a log)
            live = window.rate() if window.tokens else result.tokens_per_second
            logger.progress(step, {"loss": f"{loss_value:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{live:,.0f}"})

            is_last = step == cfg.max_steps
            stopping = False
            if step % cfg.eval_interval == 0 or is_last:
                metrics = evaluate(forward, data, cfg, info, cfg.eval_batches)
                result.last_eval = metrics
                logger.metrics("eval", step, metrics)
                logger.line("eval   " + " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in metrics.items()))
                value = metrics[cfg.best_metric]
                if math.isfinite(value) and cfg.better(value, best_value):
                    best_value, bad_evals, pending_best = value, 0, True
                    result.best_eval = {**metrics, "step": step}
                else:
                    bad_evals += 1
                    if cfg.early_stopping_patience is not None and bad_evals >= cfg.early_stopping_patience:
                        stopping = True
                        result.stopped = "early_stopping"
                        logger.line(f"early stopping: no improvement in {bad_evals} evaluations")
            interrupted = stop.signal is not None or flags >= 1
            if step % cfg.checkpoint_interval == 0 or is_last or stopping or interrupted or pending_best:
                path = save(step)
                if pending_best and info.is_main and path is not None:
                    ckpt.publish_best(run_dir, path)
                pending_best = False
            if interrupted:
                result.stopped = "interrupted"
                result.signal = stop.signal
                logger.line(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                break
            if stopping:
                break
    result.step = step
    elapsed = time.perf_counter() - run_t0
    trained = step - start_step
    logger.line(f"trained {trained} step{'' if trained == 1 else 's'} in {elapsed:.1f}s; run directory: {run_dir}")
    logger.close()
    if info.is_main:
        plot_losses(run_dir)
    return result


def _holds_step(path: Path, step: int) -> bool:
    return ckpt.is_complete(path) and ckpt.read_json(path / "trainer_state.json").get("step") == step
