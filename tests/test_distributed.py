"""Distributed training on CPU with gloo: torchrun single- and multi-node, DDP equivalence,
a dying rank, and kill -9 / Ctrl-C during training and saving."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rotary.train import checkpoint as ckpt
from tests.train_support import make_recipe, train_losses, write_corpus

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Tokenizer and shards made once by a one-step run, reused by every test here."""
    from rotary.train.trainer import train

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


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path, prepared):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", prepared, batch_size=2, max_steps=100000,
                          checkpoint_interval=100000, eval_interval=100000, log_interval=1, tensorboard=False)
    proc = subprocess.Popen([sys.executable, "-m", "rotary", "train", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: checkpoint saved" in err
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")]
    assert steps and steps[-1] >= 3


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


def test_fsdp_run_resumes_from_its_checkpoint_exactly(tmp_path, prepared):
    import shutil

    full = write_recipe(tmp_path / "full.yaml", tmp_path / "full", prepared, batch_size=2, max_steps=6,
                        eval_interval=3, checkpoint_interval=3, keep_checkpoints=5, distributed="fsdp")
    proc = torchrun(str(full), nproc=2, extra=(f"--master-port={free_port()}",))
    assert proc.returncode == 0, proc.stderr[-3000:]
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
