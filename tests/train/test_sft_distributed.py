"""SFT on several processes (gloo on the CPU): DDP and FSDP give one process's losses. In a file
of its own so that pytest-xdist's per-file scheduling can run it beside test_distributed.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.train.test_distributed import ENV, torchrun
from tests.train_support import free_port, make_recipe, train_losses, write_corpus

pytestmark = pytest.mark.slow


def test_sft_on_two_processes_equals_one_process_with_double_batch(tmp_path):
    """SFT batches (conversations of different lengths, the loss on assistant tokens only) split
    over ranks, by DDP and by FSDP: the same losses per step as one process, so the loss is
    normalised by the global batch's assistant tokens, not averaged per rank (packed batches go
    through the same weights)."""
    from rotary.train.loop import train
    from tests.train.test_sft import CONVERSATIONS, sft_recipe, write_jsonl

    base = make_recipe(tmp_path / "base", write_corpus(tmp_path / "docs"), max_steps=1,
                       model={"preset": "tiny", "max_seq_len": 128}, seq_len=128, tensorboard=False)
    train(base)
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": m} for m in CONVERSATIONS])
    recipes = {}
    for name, batch, strategy in (("one", 4, "ddp"), ("ddp", 2, "ddp"), ("fsdp", 2, "fsdp")):
        cfg = sft_recipe(tmp_path, name, chats, base.run_dir, batch_size=batch, max_steps=3, eval_interval=3,
                         checkpoint_interval=3, device="cpu", tensorboard=False, distributed=strategy)
        recipes[name] = tmp_path / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(cfg.to_dict()))
    p1 = subprocess.run([sys.executable, "-m", "rotary", "train", str(recipes["one"])], capture_output=True,
                        text=True, timeout=180, env=ENV)
    assert p1.returncode == 0, p1.stderr[-2000:]
    a = train_losses(tmp_path / "one")
    assert sorted(a) == [1, 2, 3]
    for name in ("ddp", "fsdp"):
        p2 = torchrun(str(recipes[name]), nproc=2, extra=(f"--master-port={free_port()}",))
        assert p2.returncode == 0, p2.stderr[-3000:]
        b = train_losses(tmp_path / name)
        assert sorted(b) == [1, 2, 3], name
        for step in a:
            assert abs(a[step] - b[step]) <= 1e-5, (name, step, a[step], b[step])
