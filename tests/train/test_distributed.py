"""Distributed training on CPU with gloo: torchrun single- and multi-node, DDP/FSDP equivalence
(also on an uneven validation split), workers orphaned in a collective, accelerate launch,
a dying rank, and kill -9 / Ctrl-C during training and saving."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rotary import checkpoint as ckpt
from tests.train_support import free_port, make_recipe, train_losses, write_corpus

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Tokenizer and shards made once by a one-step run, reused by every test here."""
    from rotary.train.loop import train

    root = tmp_path_factory.mktemp("dist")
    corpus = write_corpus(root / "docs")
    cfg = make_recipe(root / "seed-run", corpus=corpus, max_steps=1, tensorboard=False)
    train(cfg)
    return cfg.run_dir / "data", cfg.run_dir / "tokenizer"


def write_recipe(path: Path, run_dir: Path, prepared, **overrides) -> Path:
    shards, tok = prepared
    # gloo on the CPU, also where a GPU is present: NCCL needs one GPU per process
    overrides.setdefault("device", "cpu")
    cfg = make_recipe(run_dir, shards=shards, tokenizer=tok, **overrides)
    data = cfg.to_dict()
    path.write_text(yaml.safe_dump(data))
    return path


def torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = (), timeout: float = 180, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *extra,
           "-m", "rotary", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, **popen)


def test_ddp_two_processes_equal_one_process_with_double_batch(tmp_path, prepared):
    one = write_recipe(tmp_path / "one.yaml", tmp_path / "one", prepared, batch_size=4, max_steps=4,
                       eval_interval=2, checkpoint_interval=4)
    two = write_recipe(tmp_path / "two.yaml", tmp_path / "two", prepared, batch_size=2, max_steps=4,
                       eval_interval=2, checkpoint_interval=4)
    p1 = subprocess.run([sys.executable, "-m", "rotary", "train", str(one)], capture_output=True,
                        text=True, timeout=180, env=ENV)
    assert p1.returncode == 0, p1.stderr[-2000:]
    p2 = torchrun(str(two), nproc=2, extra=(f"--master-port={free_port()}",))
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
    # evaluation is sharded over ranks and summed: the same numbers
    evals = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
              if '"eval"' in x] for d in ("one", "two")]
    assert len(evals[0]) == len(evals[1]) == 2
    for ea, eb in zip(*evals):
        assert abs(ea["loss"] - eb["loss"]) <= 1e-5 and ea["tokens"] == eb["tokens"]
    # only rank 0 wrote, the same checkpoints as the single process (best at 2 and 4, last at 4)
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path / "two")]
    assert steps == [s for s, _ in ckpt.list_checkpoints(tmp_path / "one")] and steps[-1] == 4
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 6


def test_two_node_torchrun_on_localhost_trains_and_checkpoints(tmp_path, prepared):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=3,
                          eval_interval=3, checkpoint_interval=3)
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "rotary", "train", str(recipe)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [3]
    assert "x2" in (tmp_path / "run" / "train.log").read_text()  # world size 2 in the header


def test_a_dying_rank_stops_the_others_in_bounded_time(tmp_path, prepared):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=100000,
                          eval_interval=100000, checkpoint_interval=100000, dist_timeout_s=30)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "rotary", "train", str(recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    assert metrics.exists(), "training never started"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[1]), signal.SIGKILL)
    t0 = time.time()
    try:
        proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the surviving rank hung after its peer died")
    assert proc.returncode != 0
    assert time.time() - t0 < 90


def _complete_checkpoints_are_loadable(run_dir: Path) -> list[int]:
    from safetensors.torch import load_file

    steps = []
    for step, path in ckpt.list_checkpoints(run_dir):
        load_file(str(path / "model.safetensors"))
        ckpt.load_training_state(path / "training_state.pt")
        state = json.loads((path / "trainer_state.json").read_text())
        assert state["step"] == step
        steps.append(step)
    return steps


def test_kill_9_at_random_moments_always_resumes_from_a_complete_checkpoint(tmp_path, prepared):
    """Five SIGKILLs during training and saving (a checkpoint every step): never a partial
    checkpoint that looks complete, and the run always resumes from its latest one."""
    rng = random.Random(0)
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=400,
                          checkpoint_interval=1, keep_checkpoints=3, eval_interval=1000, log_interval=1,
                          tensorboard=False)
    run_dir = tmp_path / "run"
    last_seen = 0
    for trial in range(5):
        args = [sys.executable, "-m", "rotary", "train", str(recipe)] + (["--resume"] if trial else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        # wait until this attempt has trained past where the last one stopped, then kill at random
        deadline = time.time() + 120
        while time.time() < deadline:
            steps = [s for s, _ in ckpt.list_checkpoints(run_dir)]
            if steps and max(steps) > last_seen:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        steps = _complete_checkpoints_are_loadable(run_dir)
        assert steps, f"trial {trial}: no complete checkpoint"
        assert max(steps) >= last_seen
        last_seen = max(steps)
    # resume once more and finish a few steps past the last checkpoint
    latest = max(s for s, _ in ckpt.list_checkpoints(run_dir))
    proc = subprocess.run([sys.executable, "-m", "rotary", "train", str(recipe), "--resume",
                           "--max-steps", str(latest + 2)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"at step {latest}" in proc.stderr
    assert max(_complete_checkpoints_are_loadable(run_dir)) == latest + 2
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_exits_with_128_plus_its_number(tmp_path, prepared, signum, code):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=100000,
                          checkpoint_interval=100000, eval_interval=100000, log_interval=1, tensorboard=False)
    proc = subprocess.Popen([sys.executable, "-m", "rotary", "train", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted: checkpoint saved" in err
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")]
    assert steps and steps[-1] >= 3


def test_sigterm_to_torchrun_preempts_every_rank_into_one_checkpoint_and_resume_is_exact(tmp_path, prepared):
    """A cluster scheduler's preemption: SIGTERM to torchrun, which forwards it to every rank. The
    ranks agree on a step, save one consistent checkpoint (a checkpoint every step, so the signal
    often lands in a save) and exit 143; --resume then trains exactly the steps an uninterrupted
    run trains."""
    common = dict(batch_size=2, max_steps=60, checkpoint_interval=1, keep_checkpoints=2, eval_interval=1000,
                  log_interval=1, tensorboard=False)
    whole = write_recipe(tmp_path / "whole.yaml", tmp_path / "whole", prepared, **common)
    part = write_recipe(tmp_path / "part.yaml", tmp_path / "part", prepared, **common)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "rotary", "train", str(part)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = tmp_path / "part" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    # torchrun itself ends with its SignalException (exit 1); the workers saved first
    assert "interrupted: checkpoint saved" in err and "SignalException" in err, err[-3000:]
    steps = _complete_checkpoints_are_loadable(tmp_path / "part")
    stopped_at = max(steps)
    assert 5 <= stopped_at < 60
    assert not [p for p in (tmp_path / "part" / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    resumed = torchrun(str(part), "--resume", nproc=2, extra=(f"--master-port={free_port()}",))
    assert resumed.returncode == 0 and f"at step {stopped_at}" in resumed.stderr, resumed.stderr[-3000:]
    done = torchrun(str(whole), nproc=2, extra=(f"--master-port={free_port()}",))
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = train_losses(tmp_path / "whole"), train_losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 61))
    assert a == b  # bit for bit, across the preemption


def test_accelerate_launch_runs_the_same_entry_point(tmp_path, prepared):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=2,
                          eval_interval=2, checkpoint_interval=2)
    # --multi_gpu selects accelerate's torchrun launcher; rotary itself picks the CPU and gloo here
    # (accelerate's own --cpu multi-process mode needs MPI).
    for _attempt in range(2):  # a free port can be taken between choosing and binding it
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
               "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
               f"--main_process_port={free_port()}", "-m", "rotary", "train", str(recipe)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
        if "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2" in (tmp_path / "run" / "train.log").read_text()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]


def test_fsdp_matches_ddp_and_checkpoints_full_weights(tmp_path, prepared):
    ddp = write_recipe(tmp_path / "ddp.yaml", tmp_path / "ddp", prepared, batch_size=2, max_steps=3,
                       eval_interval=3, checkpoint_interval=3)
    fsdp = write_recipe(tmp_path / "fsdp.yaml", tmp_path / "fsdp", prepared, batch_size=2, max_steps=3,
                        eval_interval=3, checkpoint_interval=3, distributed="fsdp")
    for recipe in (ddp, fsdp):
        proc = torchrun(str(recipe), nproc=2, extra=(f"--master-port={free_port()}",))
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "fsdp")
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
    from safetensors.torch import load_file

    wa = load_file(str(ckpt.latest_checkpoint(tmp_path / "ddp") / "model.safetensors"))
    wb = load_file(str(ckpt.latest_checkpoint(tmp_path / "fsdp") / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def uneven_batch(prepared, seq_len: int = 32, task: str = "causal_lm") -> int:
    """A per-rank batch B whose last global validation batch (2 ranks) leaves rank 1 no rows."""
    from rotary.data.lm import TrainData
    from rotary.train.distributed import DistInfo

    data = TrainData(task, *prepared)
    data.configure(seq_len=seq_len, batch_size=1, seed=0, model_vocab=data.vocab_size)
    n = sum(len(x) for x, _ in data.eval_batches(None, DistInfo()))
    return next(B for B in range(2, 64) if 1 <= n % (2 * B) <= B)


def eval_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "eval"}


def single_process(recipe: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "rotary", "train", str(recipe)], capture_output=True,
                          text=True, timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_masked_lm_under_ddp_on_an_uneven_validation_split_equals_one_process(tmp_path, prepared):
    """MLM (masks drawn per global batch) under DDP, evaluated on the whole validation split,
    whose last global batch gives rank 1 nothing: the metrics are the single process's. Before,
    a rank masked its own rows alone and drew other random replacements than one process."""
    from rotary.data.lm import prepare_training_data
    from rotary.train.distributed import DistInfo

    corpus = prepared[0].parents[1] / "docs"
    seed = make_recipe(tmp_path / "mlm-data", corpus=corpus, tokenizer_kind="char", task="masked_lm")
    prepare_training_data(seed, DistInfo())
    shards = (seed.run_dir / "data", seed.run_dir / "tokenizer")
    B = uneven_batch(shards, task="masked_lm")
    # lr ~0: the same weights in both runs (their training losses differ anyway: each rank averages
    # over its own masked tokens), so evaluation compares the masks and the split alone
    common = dict(task="masked_lm", lr=1e-12, max_steps=2, eval_interval=2, checkpoint_interval=2,
                  eval_batches=None, dist_timeout_s=60)
    one = write_recipe(tmp_path / "one.yaml", tmp_path / "one", shards, batch_size=2 * B, **common)
    two = write_recipe(tmp_path / "two.yaml", tmp_path / "two", shards, batch_size=B, **common)
    single_process(one)
    proc = torchrun(str(two), nproc=2, extra=(f"--master-port={free_port()}",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = eval_records(tmp_path / "one")[2], eval_records(tmp_path / "two")[2]
    assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
    assert abs(a["accuracy"] - b["accuracy"]) <= 1e-9


def test_fsdp_run_resumes_from_its_checkpoint_exactly(tmp_path, prepared):
    """FSDP on an uneven validation split (rank 1's share of the last batch is empty: a
    forward pass is an all_gather, so it must still run one): the evaluations equal a single
    process's, and a run resumed from step 3 continues exactly."""
    import shutil

    B = uneven_batch(prepared)
    common = dict(max_steps=6, eval_interval=3, checkpoint_interval=3, keep_checkpoints=5, eval_batches=None,
                  dist_timeout_s=60)
    one = write_recipe(tmp_path / "one.yaml", tmp_path / "one", prepared, batch_size=2 * B, **common)
    full = write_recipe(tmp_path / "full.yaml", tmp_path / "full", prepared, batch_size=B, distributed="fsdp",
                        **common)
    single_process(one)
    proc = torchrun(str(full), nproc=2, extra=(f"--master-port={free_port()}",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = eval_records(tmp_path / "one"), eval_records(tmp_path / "full")
    assert sorted(ref) == sorted(got) == [3, 6]
    for step in ref:
        assert ref[step]["tokens"] == got[step]["tokens"], step
        assert abs(ref[step]["loss"] - got[step]["loss"]) <= 1e-5, (step, ref[step], got[step])
    # The same run as if it had stopped after step 3: drop everything written later.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / ckpt.CHECKPOINTS / ckpt.step_dir_name(6))
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= 3))
    recipe = yaml.safe_load(full.read_text())
    recipe["output_dir"] = str(part)
    (tmp_path / "part.yaml").write_text(yaml.safe_dump(recipe))
    proc = torchrun(str(tmp_path / "part.yaml"), "--resume", nproc=2, extra=(f"--master-port={free_port()}",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_losses(tmp_path / "full"), train_losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    # optimizer moments and data position came back: later steps equal the uninterrupted run
    for step in (4, 5, 6):
        assert a[step] == b[step], (step, a[step], b[step])
    assert eval_records(part)[6]["loss"] == got[6]["loss"]


def test_workers_blocked_in_a_collective_exit_when_their_launcher_is_killed(tmp_path, prepared):
    """torchrun killed with -9 while rank 1 is frozen: rank 0, blocked in a collective, gets
    SIGTERM (parent-death signal) and ends in seconds, not after dist_timeout_s; so does rank 1
    once it runs again. Before, they ran on, orphaned, until dist_timeout_s (10 minutes)."""
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=100000,
                          eval_interval=100000, checkpoint_interval=100000, dist_timeout_s=600,
                          tensorboard=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "rotary", "train", str(recipe)]
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=ENV)
    workers: list[int] = []
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            time.sleep(0.2)
        assert metrics.exists(), "training never started"
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGSTOP)  # rank 0 now waits for it in the next collective
        time.sleep(1.0)
        launcher.kill()
        launcher.wait(timeout=30)

        def gone(pid: int, within: float) -> bool:
            end = time.time() + within
            while time.time() < end:
                try:  # gone, or a zombie that its new parent has not reaped yet
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
                except FileNotFoundError:
                    return True
                time.sleep(0.2)
            return False

        assert gone(workers[0], 45), "rank 0 outlived its launcher, blocked in a collective"
        assert "not handled for" in err_path.read_text()
        os.kill(workers[1], signal.SIGCONT)
        assert gone(workers[1], 60), "rank 1 outlived its launcher"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()


def test_accelerate_launch_that_starts_one_of_several_processes_warns(tmp_path, prepared):
    """Without --multi_gpu, accelerate's single-process launcher runs one process for
    --num_processes 2 (exit 0, "x1"): rotary says so instead of silently training alone."""
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=2,
                          eval_interval=2, checkpoint_interval=2, tensorboard=False)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes=2",
           "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "-m", "rotary", "train", str(recipe)]
    env = {**ENV, "HF_HOME": str(tmp_path / "hf")}  # no accelerate config file of the user's
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rotary: warning: accelerate launch was asked for 2 processes but started one" in proc.stderr
    assert "x1" in (tmp_path / "run" / "train.log").read_text()

