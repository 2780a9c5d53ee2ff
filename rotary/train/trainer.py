"""The training loop: plain code, read top to bottom (nanoGPT's shape, torchtitan's separation).

``train(cfg)`` runs alone, under ``torchrun`` (one or many nodes) and under
``accelerate launch``; rank 0 alone logs and writes. Exact resume rests on three facts: batch k
is a pure function of (seed, k), the learning rate is a pure function of the step, and the
optimiser and RNG states are saved with the weights.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rotary import __version__
from rotary.config import ModelConfig, save_yaml, to_dict
from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM, gemm
from rotary.train import checkpoint as ckpt
from rotary.train.config import TrainConfig
from rotary.train.data import TrainData, prepare_training_data
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
from rotary.train.logging import RunLogger, format_eta, plot_losses, truncate_metrics
from rotary.train.schedule import lr_at, make_optimizer

TASK_MODELS = {"causal_lm": CausalLM, "masked_lm": MaskedLM}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "max_steps", "early_stopping", "interrupted", "resumed_finished"
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_second: float = 0.0


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def resolve_model_config(cfg: TrainConfig, vocab_size: int, pad_id: int | None) -> ModelConfig:
    """The recipe's model section, with what the task and tokenizer decide filled in."""
    spec = dict(cfg.model)
    want_causal = cfg.task == "causal_lm"
    if "causal" in spec and bool(spec["causal"]) != want_causal:
        raise RotaryError(f"model.causal={spec['causal']} contradicts task={cfg.task}: remove model.causal")
    spec["causal"] = want_causal
    if "vocab_size" not in spec:
        spec["vocab_size"] = vocab_size
    if "pad_token_id" not in spec and pad_id is not None:
        spec["pad_token_id"] = pad_id
    if cfg.dropout is not None:
        spec["dropout"] = cfg.dropout
    model_cfg = ModelConfig.from_dict(spec)
    if model_cfg.vocab_size < vocab_size:
        raise RotaryError(
            f"the data's tokenizer has {vocab_size} tokens but model.vocab_size is "
            f"{model_cfg.vocab_size}: remove model.vocab_size or prepare the data with the model's tokenizer"
        )
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise RotaryError(
            f"seq_len {seq_len} is longer than model.max_seq_len {model_cfg.max_seq_len}: "
            f"lower seq_len or raise model.max_seq_len"
        )
    return model_cfg


def checkpoint_config(task: str, model_cfg: ModelConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory: enough to rebuild the model."""
    return {"model_type": "rotary", "rotary_version": __version__, "task": task,
            "model": model_cfg.to_dict(), **(extra or {})}


def autocast_context(precision: str, device: torch.device):
    """bf16/fp16 autocast on the right device type (CPU and MPS are not CUDA: nanoGPT #28)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """FLOP/s of a square matmul on this device: MFU's denominator, measured, not guessed.

    On CPU in fp32 it is the faster of the BLAS and oneDNN (see ``rotary.model.gemm``): the
    machine's peak, not that of whichever library PyTorch happens to call by default.
    """
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout) alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    candidates = [lambda: a @ b]
    if device.type == "cpu" and dtype == torch.float32 and gemm.onednn_available():
        candidates.append(lambda: gemm.matmul_onednn(a, b.t()))
    return max(_flops_per_second(fn, 2 * n**3, device) for fn in candidates)


def _flops_per_second(fn, flops: int, device: torch.device) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        if reps >= 5 and time.perf_counter() - t0 > 0.2:
            break
    _sync(device)
    return flops * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool, remove: bool = True) -> bool:
    """Refuse to mix two runs in one directory; returns whether it already holds a run.

    ``overwrite`` removes the previous run's own files (never anything else in the directory)
    when ``remove`` is true (rank 0 only: every rank checks, one deletes).
    """
    run_dir = cfg.run_dir
    if resume and overwrite:
        raise RotaryError("--resume continues the run in the output directory and --overwrite deletes it: "
                          "pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise RotaryError(f"output directory {run_dir} is a file: choose another --output-dir")
    has_run = (run_dir / "recipe.yaml").exists() or ckpt.newest_step_dir(run_dir) is not None
    if not has_run:
        if resume:
            raise RotaryError(f"nothing to resume in {run_dir} (no recipe.yaml, no checkpoints): drop --resume "
                              "to start a new run, or point --output-dir at the run to continue")
        return False
    if overwrite:
        if remove:
            import shutil

            for name in ckpt.RUN_ENTRIES:
                p = run_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        return True
    if not resume:
        raise RotaryError(
            f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to start "
            "over, or --output-dir for a new directory"
        )
    previous = (run_dir / "recipe.yaml")
    if previous.exists():
        from rotary.config import load_yaml

        old = load_yaml(previous)
        for key in ("task", "model"):
            if old.get(key) != to_dict(cfg).get(key):
                raise RotaryError(
                    f"{run_dir} holds a different run ({key} differs from this recipe): use "
                    "--output-dir for a new run or --overwrite to replace it"
                )
    return True


def resume_checkpoint(run_dir: Path, *, verify: bool = True) -> Path | None:
    """The checkpoint a resumed run continues from: the newest step, checked against its
    manifest. A damaged newest step is an error naming it (never a silent older one)."""
    newest = ckpt.newest_step_dir(run_dir)
    if newest is None:
        return None
    try:
        return ckpt.check_complete(newest, checksums=verify)
    except RotaryError as err:
        older = [p for _, p in ckpt.list_checkpoints(run_dir) if p != newest]
        hint = (f"; to resume from {older[-1].name} instead, move {newest} away" if older else "")
        raise RotaryError(f"cannot resume: {err}{hint}") from None


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, data: TrainData, cfg: TrainConfig, info: DistInfo,
             max_batches: int | None) -> dict[str, float]:
    """Validation metrics, summed over ranks: loss and perplexity, plus bits per byte (causal
    LM, so tokenizers compare) or masked-token accuracy (MLM)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # sum of token losses, tokens, correct
    for x, y in data.eval_batches(max_batches, info):
        x, y = x.to(info.device), y.to(info.device)
        with autocast_context(cfg.precision, info.device):
            # the head computes the sums chunk by chunk: no (tokens x vocab) logits
            totals += model(x, targets=y, return_stats=True).cpu()  # y is already shifted
    model.train(was_training)
    all_reduce_sum(totals, info)
    if totals[1] == 0:
        raise RotaryError("the validation split is too small for one evaluation batch: lower seq_len or add data")
    loss = float(totals[0] / totals[1])
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(totals[1])}
    if cfg.task == "causal_lm":
        out["bits_per_byte"] = loss / math.log(2) / data.val_bytes_per_token
    else:
        out["accuracy"] = float(totals[2] / totals[1])
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps.

    Python runs a signal handler only between bytecodes, so a process blocked in a collective
    (a peer died or runs other collectives) would not see the signal until dist_timeout_s: killed
    torchrun workers were left running. A watcher thread hears every signal through the wakeup fd
    and ends the process when the handler has not run: after ``grace_s`` in a distributed run
    (then the main thread is blocked in a collective), 1 s after a second signal in any case.
    """

    def __init__(self, grace_s: float = 10.0) -> None:
        self.signal: int | None = None
        self.grace_s = grace_s
        self._previous: dict[int, Any] = {}
        self._handled = 0  # signals the handler ran for (read by the watcher)
        self._wakeup: tuple[int, int, int] | None = None  # read fd, write fd, previous wakeup fd

    def __enter__(self) -> _StopRequest:
        import os
        import threading

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._previous:
            r, w = os.pipe()
            os.set_blocking(w, False)  # the C-level handler must never block
            self._wakeup = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
            main = threading.main_thread().ident
            threading.Thread(target=self._watch, args=(r, main), name="rotary-signals", daemon=True).start()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self._handled += 1
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def _watch(self, fd: int, main: int | None) -> None:
        import os
        import select
        import sys

        import torch.distributed as dist

        seen, first_at, last_at, signum = 0, 0.0, 0.0, 0
        while True:
            wait = None if self._handled >= seen else 0.2
            if select.select([fd], [], [], wait)[0]:
                data = os.read(fd, 64)
                if not data:  # __exit__ closed the write end
                    os.close(fd)
                    return
                for s in data:
                    if s in (signal.SIGINT, signal.SIGTERM):
                        signum, last_at = s, time.monotonic()
                        first_at = last_at if self._handled >= seen else first_at
                        seen += 1
            if self._handled >= seen:
                continue
            now = time.monotonic()
            stuck = now - first_at >= self.grace_s and dist.is_available() and dist.is_initialized()
            if stuck or (seen >= 2 and now - last_at >= 1.0):
                frame = sys._current_frames().get(main)  # where the main thread is blocked
                where = f" in {frame.f_code.co_name} ({frame.f_code.co_filename})" if frame else ""
                name = signal.Signals(signum).name
                sys.stderr.write(f"rotary: {name} not handled for {now - first_at:.0f}s, blocked{where} "
                                 "(a collective whose peer is gone or out of step?): exiting now\n")
                sys.stderr.flush()
                os._exit(128 + signum)

    def __exit__(self, *exc: Any) -> None:
        import os

        if self._wakeup is not None:
            r, w, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(w)  # the watcher reads EOF, closes the read end and returns
            self._wakeup = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, info: DistInfo):
    """Unsharded model/optimizer state (a collective under FSDP: every rank must call it)."""
    if info.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=opts)
    raw = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return raw.state_dict(), optimizer.state_dict()


def _load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optim_sd,
                          strategy: str, info: DistInfo) -> None:
    if info.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        return
    try:
        optimizer.load_state_dict(optim_sd)
    except (ValueError, KeyError, TypeError) as err:  # the optimiser state of another model
        raise RotaryError(f"the checkpoint's optimiser state does not fit this model "
                          f"({str(err).splitlines()[0][:120]}): resume with the recipe it was trained with") from None


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          verify: bool = True) -> TrainResult:
    """Train as the recipe says; returns where it stopped and its last evaluation.

    ``resume`` continues the run in ``cfg.run_dir`` from its newest checkpoint (checked against
    its manifest; ``verify=False`` skips the sha256 sums); ``overwrite`` replaces that run.
    """
    info = init_distributed(cfg.device, cfg.dist_timeout_s)
    try:
        return _train(cfg, info, resume=resume, overwrite=overwrite, verify=verify)
    finally:
        if info.enabled:
            # Free the wrapped model, optimizer and their pending collective handles (reference
            # cycles) while the process group is alive: left to interpreter exit, gloo's threads
            # were found destroyed mid-flight (std::terminate, SIGABRT) in ~1 of 6 FSDP resumes.
            gc.collect()
        shutdown(info)


def _train(cfg: TrainConfig, info: DistInfo, *, resume: bool, overwrite: bool, verify: bool) -> TrainResult:
    # Everything that can be checked is checked before the first file is written, so a
    # mistake never leaves a run directory that blocks the corrected rerun.
    if cfg.precision == "fp16" and info.device.type != "cuda":
        raise RotaryError("fp16 training needs CUDA (GradScaler): use --precision bf16 or fp32")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gemm.cpu_gemm()  # a bad ROTARY_CPU_GEMM is an error before any file is written
    run_dir = cfg.run_dir
    # the model section's keys and values (the vocabulary comes from the data later)
    resolve_model_config(cfg, vocab_size=int(cfg.model.get("vocab_size", 2**16)), pad_id=None)
    had_run = check_run_dir(cfg, resume=resume, overwrite=overwrite, remove=info.is_main)
    latest = resume_checkpoint(run_dir, verify=verify) if resume else None
    barrier(info)
    if info.is_main:
        ckpt.clean_partial(run_dir)

    # -- data and model ----------------------------------------------------------------------
    data = prepare_training_data(cfg, info)
    model_cfg = resolve_model_config(cfg, data.vocab_size, data.pad_id)
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    data.configure(seq_len=seq_len, batch_size=cfg.batch_size, seed=cfg.seed, model_vocab=model_cfg.vocab_size)

    torch.manual_seed(cfg.seed)
    raw_model = TASK_MODELS[cfg.task](model_cfg).to(info.device)
    if cfg.grad_accum_steps is not None:
        accum = cfg.grad_accum_steps
    elif cfg.global_batch_tokens is not None:
        per_micro = cfg.batch_size * seq_len * info.world_size
        accum = max(1, round(cfg.global_batch_tokens / per_micro))
    else:
        accum = 1

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

    model = wrap_model(raw_model, info, cfg.distributed)
    fwd_model = torch.compile(model) if cfg.compile else model
    optimizer = make_optimizer(raw_model if cfg.distributed != "fsdp" else model, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                               eps=cfg.eps, device=info.device)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    if latest is not None:
        state = ckpt.load_training_state(latest / "training_state.pt")
        _load_optimizer_state(model, optimizer, state["optimizer"], cfg.distributed, info)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        resume_rng = state.get("rng", {}).get(str(info.rank))

    if info.is_main:
        save_yaml(to_dict(cfg), run_dir / "recipe.yaml")
        truncate_metrics(run_dir, start_step)  # steps after the checkpoint are redone: no duplicates
    logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, progress=cfg.progress,
                       total_steps=cfg.max_steps, start_step=start_step)
    result = TrainResult(run_dir=run_dir, step=start_step, stopped="max_steps")
    best_loss = trainer_state.get("best_val_loss")
    best_loss = math.inf if best_loss is None else float(best_loss)
    bad_evals = int(trainer_state.get("evals_without_improvement", 0))
    result.best_eval = trainer_state.get("best_eval", {})
    result.last_eval = trainer_state.get("last_eval", {})

    tokens_per_step = cfg.batch_size * seq_len * accum * info.world_size
    flops_per_token = raw_model.flops_per_token(seq_len)
    peak = measure_matmul_peak(info.device, torch.bfloat16 if cfg.precision != "fp32" and info.device.type != "cpu" else torch.float32)
    n_params = raw_model.num_parameters()
    if info.is_main and (asked := launcher_asked_for()) is not None:
        logger.line(f"warning: accelerate launch was asked for {asked or 'several'} processes; this run has 1")
    if latest is not None:
        logger.line(f"resumed from {latest} at step {start_step}")
    elif resume and had_run:
        logger.line(f"{run_dir} has no checkpoint yet: training from step 0")
    logger.line(
        f"rotary {__version__} | {cfg.task} | {n_params / 1e6:.2f}M parameters | device {info.device} "
        f"x{info.world_size} | {tokens_per_step} tokens/step (batch {cfg.batch_size} x seq {seq_len} x "
        f"accum {accum} x {info.world_size} proc) | {cfg.precision}"
        + (f" (CPU GEMM: {gemm.cpu_gemm()})" if info.device.type == "cpu" and cfg.precision == "fp32" else "")
    )
    if start_step >= cfg.max_steps:
        result.stopped = "resumed_finished"
        logger.line(f"{latest} already reached max_steps={cfg.max_steps}: nothing to train")
        logger.close()
        return result

    def save(step: int) -> Path | None:
        model_sd, optim_sd = _full_state_dicts(model, optimizer, cfg.distributed, info)
        # RNG state of every rank, so each resumes its own dropout stream.
        rng_all = _gather_rng(info)
        if not info.is_main:
            barrier(info)
            return None
        if cfg.distributed == "fsdp" and info.enabled:
            state_for_file = {k: v.contiguous() for k, v in ckpt._strip_wrappers(model_sd).items()}
            if model_cfg.tie_embeddings:  # stored once, as in unsharded checkpoints
                state_for_file.pop("lm_head.weight", None)
        else:
            state_for_file = ckpt.model_state_for_saving(raw_model)
        training_state = {"optimizer": optim_sd, "rng": rng_all}
        if scaler is not None:
            training_state["scaler"] = scaler.state_dict()
        content = ckpt.CheckpointContent(
            config=checkpoint_config(cfg.task, model_cfg),
            model_state=state_for_file,
            trainer_state={
                "step": step, "tokens_seen": step * tokens_per_step, "micro_batches": step * accum,
                "grad_accum_steps": accum, "global_rows": cfg.batch_size * info.world_size * accum,
                "best_val_loss": best_loss if math.isfinite(best_loss) else None,
                "evals_without_improvement": bad_evals, "best_eval": result.best_eval,
                "last_eval": result.last_eval, "seed": cfg.seed, "rotary_version": __version__,
                # the open log window, so the first line after a resume averages the same steps
                "log_window": {"loss_sum": window_loss, "steps": window_n},
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
        _set_rng_state(resume_rng)
    batches = data.train_batches(start_step, accum, info)
    model.train()
    step = start_step
    window_t0, window_tokens, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
    saved_window = trainer_state.get("log_window") or {}
    window_loss, window_n = float(saved_window.get("loss_sum", 0.0)), int(saved_window.get("steps", 0))
    run_t0 = time.perf_counter()
    pending_best = False
    with _StopRequest() as stop:
        while step < cfg.max_steps:
            lr = lr_at(step, peak=cfg.lr, final=cfg.final_lr(), warmup=cfg.warmup(), total=cfg.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=info.device)
            for micro in range(accum):
                x, y = next(batches)
                x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
                sync = micro == accum - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
                with (contextlib.nullcontext() if sync else model.no_sync()):
                    with autocast_context(cfg.precision, info.device):
                        # the loss comes out of the model: the head fuses it with the output
                        # projection and never materialises the logits (rotary.model.losses)
                        loss = fwd_model(x, targets=y) / accum  # y[t] follows x[t]: no shift
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += loss.detach()
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = None
            if cfg.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
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
            window_tokens += tokens_per_step
            window_loss += loss_value
            window_n += 1

            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                dt = time.perf_counter() - window_t0
                tok_s = window_tokens / dt if dt > 0 else 0.0
                mfu = flops_per_token * tok_s / (peak * info.world_size)
                eta = (cfg.max_steps - step) * dt / max(window_tokens / tokens_per_step, 1)
                values = {"loss": window_loss / window_n, "lr": lr, "tokens_per_s": tok_s, "mfu": mfu,
                          "tokens": step * tokens_per_step}
                if grad_norm is not None:
                    values["grad_norm"] = float(grad_norm)
                logger.metrics("train", step, values)
                logger.line(
                    f"step {step:>6}/{cfg.max_steps} | loss {values['loss']:.4f} | lr {lr:.2e} | "
                    f"{tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {format_eta(eta)}"
                )
                result.tokens_per_second = tok_s
                window_t0, window_tokens, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
            # the bar's rate: the current log window so far (the last full window right after a log)
            live = window_tokens / max(time.perf_counter() - window_t0, 1e-9) if window_tokens else result.tokens_per_second
            logger.progress(step, {"loss": f"{loss_value:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{live:,.0f}"})

            is_last = step == cfg.max_steps
            stopping = False
            if step % cfg.eval_interval == 0 or is_last:
                metrics = evaluate(fwd_model, data, cfg, info, cfg.eval_batches)
                result.last_eval = metrics
                logger.metrics("eval", step, metrics)
                logger.line("eval   " + " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in metrics.items()))
                if metrics["loss"] < best_loss:
                    best_loss, bad_evals, pending_best = metrics["loss"], 0, True
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
                logger.line(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                break
            if stopping:
                break
    result.step = step
    elapsed = time.perf_counter() - run_t0
    logger.line(f"trained {step - start_step} steps in {elapsed:.1f}s; run directory: {run_dir}")
    logger.close()
    if info.is_main:
        plot_losses(run_dir)
    return result


def _gather_rng(info: DistInfo) -> dict[str, Any]:
    state = _rng_state()
    if not info.enabled:
        return {"0": state}
    import torch.distributed as dist

    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return {str(r): s for r, s in enumerate(gathered)}


__all__ = ["TrainResult", "checkpoint_config", "evaluate", "resolve_model_config", "train"]

