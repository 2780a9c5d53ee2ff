"""``rotary plan``: the batch arithmetic at world sizes this machine cannot run, the memory
estimate against the measured peak of a real step here, what resuming at another world size
does, and the 2-step trial with its checkpoint and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rotary import checkpoint as ckpt
from rotary import cli
from rotary.errors import RotaryError
from rotary.train.batching import Batching
from rotary.train.config import load_recipe
from rotary.train.plan import batching, build, format_plan, make_plan
from tests.train.test_seed_recipes import TOY

OWT_TOY = {**TOY, "model.n_kv_head": 1}  # GQA kept at toy width


@pytest.mark.parametrize("world", [1, 2, 8, 16, 40, 64])
def test_global_batch_is_per_device_times_accumulation_times_world(world):
    owt = load_recipe("openwebtext-gqa")  # global_batch_tokens 491,520: the accumulation follows the world
    b = batching(owt, world)
    assert b.global_rows == owt.batch_size * b.accum * world and b.tokens_per_step == b.global_rows * 1024
    assert b.accum == max(1, round(491_520 / (12 * 1024 * world)))
    if 40 % world == 0:  # 12 x 1,024 x 40 divides evenly: exactly the asked tokens per step
        assert b.tokens_per_step == 491_520
    rf = load_recipe("roformer-base")  # accumulation fixed at 16: the global batch grows with the world
    r = batching(rf, world)
    assert (r.accum, r.global_rows, r.tokens_per_step) == (16, 4 * 16 * world, 4 * 16 * world * 512)
    # OpenWebText's ~9B training tokens: steps per epoch
    assert b.steps_per_epoch(9_000_000_000) == (9_000_000_000 // 1024) // b.global_rows


def test_the_plan_says_when_the_asked_tokens_per_step_are_not_reachable():
    owt = load_recipe("openwebtext-gqa", {**OWT_TOY, "seq_len": 1024, "model.max_seq_len": 1024, "batch_size": 12,
                                          "global_batch_tokens": 491_520})
    text = format_plan(make_plan(owt, world_size=16))  # 40 / 16: accumulation 2, not 2.5
    assert "global_batch_tokens asks 491,520" in text and "393,216" in text
    assert "note" not in format_plan(make_plan(owt, world_size=8)).split("steps")[0]


def test_resuming_at_another_world_size_reshards_when_the_global_batch_is_kept(tmp_path):
    """The checkpoint records sequences per step; another world size resumes when batch x
    accumulation x world is unchanged (each rank takes its rows of the same global batch), and is
    refused otherwise."""
    from rotary.train.distributed import DistInfo
    from rotary.train.loop import train
    from rotary.train.run_directory import RunDirectory
    from tests.train_support import make_recipe, write_corpus

    cfg = make_recipe(tmp_path / "run", write_corpus(tmp_path / "corpus", 20), model={"preset": "tiny"},
                      max_steps=2, eval_interval=2, checkpoint_interval=2, batch_size=4)
    train(cfg)
    latest = ckpt.latest_checkpoint(cfg.run_dir)
    model = build(cfg, "cpu", vocab_size=int(load_vocab(latest)))
    for world, batch, ok in ((2, 2, True), (4, 1, True), (2, 4, False)):
        cfg.batch_size = batch
        run = RunDirectory(cfg, DistInfo(world_size=world), cfg.task, model, head={}, tokenizer_dir=None, accum=1,
                           tokens_per_step=batch * world * cfg.seq_len)
        assert Batching(world, batch, 1, cfg.seq_len).global_rows == run.global_rows
        if ok:
            assert run.load_weights(latest).step == 2
        else:
            with pytest.raises(RotaryError, match="trained with 4 sequences per step, this run has 8"):
                run.load_weights(latest)


def load_vocab(checkpoint: Path) -> int:
    import json

    return json.loads((checkpoint / "config.json").read_text())["model"]["vocab_size"]


def measured_peak(cfg, seq_len: int) -> float:
    """Peak bytes of one real training step here (the model, the trainer's AdamW, the loss), by
    torch's MemTracker, after a first step has made the optimizer state."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from rotary.train.schedule import make_optimizer

    torch.manual_seed(0)
    model = build(cfg, "cpu").train()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device=torch.device("cpu"))
    vocab = model.config.vocab_size

    def step(tracker=None) -> None:
        ids = torch.randint(0, vocab, (cfg.batch_size, seq_len + 1))
        model(ids[:, :-1], targets=ids[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def test_the_memory_estimate_is_within_20_percent_of_a_measured_step():
    """The demo recipe's shapes (4 layers, d=256, batch 8 x 256, vocab 4,096) in fp32 on this CPU."""
    cfg = load_recipe("demo", {"precision": "fp32"})
    plan = make_plan(cfg, world_size=1)
    estimate, measured = plan.memory["ddp"].peak, measured_peak(cfg, plan.batching.seq_len)
    assert 0.8 <= estimate / measured <= 1.2, (estimate / 2**20, measured / 2**20)
    # activations dominate here, and they grow with the rows as measured
    assert plan.activations.bytes(4, 16) > 1.8 * plan.activations.bytes(4, 8)


def test_fsdp_shards_the_state_and_keeps_the_activations():
    cfg = load_recipe("openwebtext-gqa", {**OWT_TOY, "model.n_layer": 4})
    plan = make_plan(cfg, world_size=8)
    ddp, fsdp = plan.memory["ddp"], plan.memory["fsdp"]
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 8) and fsdp.weights == pytest.approx(ddp.weights / 8)
    assert fsdp.activations == ddp.activations and ddp.buckets == ddp.weights and fsdp.buckets == 0
    assert fsdp.peak < ddp.peak
    n = plan.parameters
    assert ddp.weights == 4 * n and ddp.optimizer == 8 * n
    # the wall time is FLOPs / (devices x peak x MFU); fp32 (the toy recipe's) at the TF32 peak
    assert plan.precision == "fp32" and plan.step_seconds == pytest.approx(plan.flops_per_step / (8 * 494e12 * 0.4))
    bf16 = make_plan(load_recipe("openwebtext-gqa", {**OWT_TOY, "precision": "bf16"}), world_size=8)
    assert bf16.step_seconds == pytest.approx(bf16.flops_per_step / (8 * 989e12 * 0.4))


def test_the_trial_scales_down_what_the_machine_cannot_hold(tmp_path):
    from rotary.train.plan_trial import fit_to_machine

    toy = {**OWT_TOY, "model.n_layer": 8, "batch_size": 16}
    changes, notes, _ = fit_to_machine("openwebtext-gqa", toy, budget=1e12)
    assert changes == {} and notes == []
    plan = make_plan(load_recipe("openwebtext-gqa", toy))
    state = plan.memory["ddp"].weights * 4  # weights + gradients + optimizer state, about
    tight = state + plan.activations.bytes(8, 16) / 5
    changes, notes, estimate = fit_to_machine("openwebtext-gqa", toy, budget=tight)
    assert changes["batch_size"] < 16 and estimate <= tight and notes[0].startswith("batch_size 16 -> ")
    with pytest.raises(RotaryError, match="even 1 layer and 1 sequence"):
        fit_to_machine("openwebtext-gqa", toy, budget=1.0)


def test_rotary_plan_prints_the_plan_and_runs_the_trial(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from tests.train.test_seed_recipes import SCHEMAS

    columns, texts = SCHEMAS["openwebtext-gqa"]
    rows = [" ".join(texts[i % len(texts)] for i in range(k, k + 6)) for k in range(60)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}).save_to_disk(str(tmp_path / "owt"))
    toy = [w for k, v in OWT_TOY.items() for w in (f"--{k}", str(v))]
    argv = ["plan", "openwebtext-gqa", "--gpus", "8", "--nodes", "2", "--train-tokens", "9e9", *toy,
            "--data.corpus", f"hf:{tmp_path / 'owt'}", "--global_batch_tokens", "256",
            "--output-dir", str(tmp_path / "trial")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "on 16 x NVIDIA H100 SXM 80GB" in out and "tokens/step" in out and "epochs)" in out
    assert "ddp: peak" in out and "fsdp: peak" in out
    assert "trial passed: step 1 checkpointed and resumed to step 2" in out
    steps = sorted(p.name for p in (tmp_path / "trial" / "checkpoints").iterdir())
    assert steps == ["step-0000001", "step-0000002"], steps
    # the plan alone, and the user's mistakes
    assert cli.main(["plan", "roformer-base", "--no-trial", "--gpu", "a100", *toy]) == 0
    assert "NVIDIA A100" in capsys.readouterr().out
    for bad, says in ((["plan", "--no-trial"], "needs a recipe"),
                      (["plan", "demo", "--gpus", "0", "--no-trial"], "--gpus and --nodes must be at least 1"),
                      (["plan", "thucnews", "--no-trial"], "covers the pretraining tasks"),
                      (["plan", "demo", "--output-dir", str(tmp_path / "trial")], "is not empty")):
        assert cli.main(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    with pytest.raises(SystemExit):
        cli.main(["plan", "demo", "--gpu", "b200"])
