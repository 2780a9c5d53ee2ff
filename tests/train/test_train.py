"""The training engine: runs, logs, checkpoints, exact resume, stopping, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rotary import checkpoint as ckpt
from rotary.errors import RotaryError
from rotary.ops import gemm
from rotary.train.config import load_recipe
from rotary.train.loop import train
from tests.train_support import make_recipe, train_interrupted_at, write_corpus
from tests.train_support import train_losses as losses

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture
def train_recipe(tmp_path, corpus_dir):
    """Recipe factory: a tiny model on the small corpus; tokenizer and shards made by train()."""

    def factory(*, output_dir: str | None = None, tokenizer_kind: str = "bpe", **kw):
        return make_recipe(Path(output_dir or tmp_path / "run"), corpus=corpus_dir,
                           tokenizer_kind=tokenizer_kind, **kw)

    return factory


def run_cli(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rotary", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=kw.pop("cwd", None), **kw)


def recompute_eval(cfg, ckpt_dir: Path) -> dict[str, float]:
    """The evaluation of ``ckpt_dir`` done here from materialised logits: the checkpoint's model
    (``model(x)`` -> logits) on the run's validation batches, with F.cross_entropy and argmax."""
    import torch.nn.functional as F

    from rotary.data.lm import TrainData
    from rotary.model import CausalLM, MaskedLM
    from rotary.model.config import ModelConfig
    from rotary.train.distributed import DistInfo

    config = json.loads((ckpt_dir / "config.json").read_text())
    model = (CausalLM if config["task"] == "causal_lm" else MaskedLM)(ModelConfig.from_dict(config["model"]))
    ckpt.load_weights(model, ckpt_dir / "model.safetensors")
    model.eval()
    data = TrainData(cfg.task, cfg.run_dir / "data", cfg.run_dir / "tokenizer")
    data.configure(seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed, model_vocab=model.config.vocab_size)
    loss_sum, tokens, correct = 0.0, 0, 0
    with torch.no_grad():
        for x, y in data.eval_batches(cfg.eval_batches, DistInfo()):
            logits = model(x).double()
            keep = y != -100
            loss_sum += F.cross_entropy(logits[keep], y[keep], reduction="sum").item()
            tokens += int(keep.sum())
            correct += int((logits.argmax(-1) == y)[keep].sum())
    return {"loss": loss_sum / tokens, "tokens": tokens, "accuracy": correct / tokens}


def test_causal_run_writes_a_complete_run_directory(train_recipe):
    cfg = train_recipe(max_steps=12, eval_interval=6, checkpoint_interval=4, keep_checkpoints=2)
    res = train(cfg)
    run = cfg.run_dir
    assert res.step == 12 and res.stopped == "max_steps"
    # keep-last-2 plus best/
    steps = [s for s, _ in ckpt.list_checkpoints(run)]
    assert steps == [8, 12]
    assert ckpt.is_complete(run / "best")
    for d in [p for _, p in ckpt.list_checkpoints(run)] + [run / "best"]:
        assert (d / "tokenizer" / "tokenizer.json").is_file()
        assert (d / "training_state.pt").is_file()
        cfg_json = json.loads((d / "config.json").read_text())
        assert cfg_json["task"] == "causal_lm" and cfg_json["model"]["causal"] is True
    # metrics, log, tensorboard, resolved recipe
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    eval_recs = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in eval_recs] == [6, 12]
    val = json.loads((run / "data" / "meta.json").read_text())["splits"]["val"]
    assert val["bytes"] == val["characters"] > val["tokens"] > 0  # ASCII text; BPE merges bytes
    for r in eval_recs:
        assert {"loss", "perplexity", "bits_per_byte"} <= set(r)
        assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-6)
        # nats per token -> bits per byte: scaled by tokens / bytes of the validation text
        assert math.isclose(r["bits_per_byte"], r["loss"] / math.log(2) * val["tokens"] / val["bytes"], rel_tol=1e-9)
    # the last evaluation is the final model's loss on the validation batches
    again = recompute_eval(cfg, run / "checkpoints" / "step-0000012")
    assert again["tokens"] == eval_recs[-1]["tokens"] == res.last_eval["tokens"]
    assert math.isclose(again["loss"], eval_recs[-1]["loss"], rel_tol=1e-5)
    # the optimizer that trained it: decay on matrices only, at the recipe's rate
    state = torch.load(run / "checkpoints" / "step-0000012" / "training_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [cfg.weight_decay, 0.0] and cfg.weight_decay > 0
    weights = ckpt.load_file(str(run / "checkpoints" / "step-0000012" / "model.safetensors"))
    matrices = [k for k, t in weights.items() if t.dim() == 2 and "embed" not in k]
    assert len(groups[0]["params"]) == len(matrices) and len(groups[1]["params"]) == len(weights) - len(matrices)
    assert all({"loss", "lr", "tokens_per_s", "mfu"} <= set(r) for r in train_recs)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "tok/s" in (run / "train.log").read_text()
    assert (run / "recipe.yaml").is_file()
    # training reduces the loss on this repetitive corpus
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]


def test_masked_lm_run_reports_accuracy(train_recipe):
    cfg = train_recipe(task="masked_lm", max_steps=6, eval_interval=3, tokenizer_kind="char")
    res = train(cfg)
    assert res.step == 6
    # the reported accuracy (and loss) of the final model, recomputed from its logits
    again = recompute_eval(cfg, cfg.run_dir / "checkpoints" / "step-0000006")
    assert again["tokens"] == res.last_eval["tokens"] > 0
    assert res.last_eval["accuracy"] == pytest.approx(again["accuracy"], abs=1e-12)
    assert res.last_eval["loss"] == pytest.approx(again["loss"], rel=1e-5)
    assert "bits_per_byte" not in res.last_eval
    assert json.loads((cfg.run_dir / "best" / "config.json").read_text())["model"]["causal"] is False


@pytest.mark.parametrize("task,cpu_gemm,extra", [
    ("causal_lm", "blas", {}), ("masked_lm", "blas", {}), ("causal_lm", "onednn", {}),
    ("causal_lm", "blas", {"optimizer": "muon"}),  # Muon's momentum buffers and AdamW's moments both resume
    ("causal_lm", "blas", {"optimizer": "muon", "precision": "auto"}),  # bf16 here where the CPU has it
])
def test_interrupted_then_resumed_run_is_bitwise_identical(train_recipe, task, cpu_gemm, extra, tmp_path,
                                                           monkeypatch):
    if cpu_gemm == "onednn" and not gemm.onednn_available():
        pytest.skip("needs oneDNN (mkldnn)")
    monkeypatch.setenv("ROTARY_CPU_GEMM", cpu_gemm)
    monkeypatch.setattr(gemm, "_setting", None)
    monkeypatch.setattr(gemm, "_resolved", None)
    kind = "char" if task == "masked_lm" else "bpe"
    common = dict(task=task, max_steps=8, checkpoint_interval=100, eval_interval=3, dropout=0.1,
                  tokenizer_kind=kind, **extra)
    full = train_recipe(output_dir=str(tmp_path / "full"), **common)
    train(full)

    part = train_recipe(output_dir=str(tmp_path / "part"), **common)
    res = train_interrupted_at(part, 5, monkeypatch)
    assert (res.stopped, res.step) == ("interrupted", 5)
    res = train(part, resume=True)
    assert (res.stopped, res.step) == ("max_steps", 8)

    log = (part.run_dir / "train.log").read_text()
    if extra.get("precision") == "auto":  # the choice and its reason are logged
        from rotary.precision import resolve

        chosen, why = resolve("auto", torch.device("cpu"))
        assert f"| {chosen}" in log and why in log
        if chosen == "bf16":  # the compiled CPU kernels ran, and resume stayed exact with them
            from rotary.ops import inductor

            assert f"(CPU kernels: {inductor.describe()})" in log
            assert inductor.describe() == "compiled" or not inductor.available
            if inductor.active():  # ... and so did the compiled blocks (compile: auto)
                assert "| compile: blocks (auto: bf16 on the CPU)" in log
                assert "compiling the Transformer blocks (torch.compile)" in log  # the silent first step
    else:
        assert f"(CPU GEMM: {cpu_gemm})" in log
    a, b = losses(full.run_dir), losses(part.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]} (resume is not exact)"
    # evaluations and final weights are bitwise equal too
    evals = [[r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
             for d in (full.run_dir, part.run_dir)]
    assert [(r["step"], r["loss"]) for r in evals[0]] == [(r["step"], r["loss"]) for r in evals[1]]
    wa = ckpt.load_file(str(ckpt.latest_checkpoint(full.run_dir) / "model.safetensors"))
    wb = ckpt.load_file(str(ckpt.latest_checkpoint(part.run_dir) / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    state = torch.load(ckpt.latest_checkpoint(part.run_dir) / "training_state.pt", weights_only=True)
    assert ("muon" in state["optimizer"]) == (extra.get("optimizer") == "muon")


def test_gradient_accumulation_matches_a_bigger_batch(train_recipe, tmp_path):
    big = train_recipe(max_steps=3, batch_size=4, output_dir=str(tmp_path / "big"), eval_interval=100)
    acc = train_recipe(max_steps=3, batch_size=2, grad_accum_steps=2, output_dir=str(tmp_path / "acc"),
                       eval_interval=100)
    train(big)
    train(acc)
    # Accumulation splits the same global batch: the same losses up to summation order.
    a, b = losses(big.run_dir), losses(acc.run_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5)


def test_early_stopping_keeps_best(train_recipe, monkeypatch):
    from rotary.train import loop

    values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])

    def fake_eval(*a, **k):
        v = next(values)
        return {"loss": v, "perplexity": math.exp(v), "tokens": 10, "bits_per_byte": v}

    monkeypatch.setattr(loop, "evaluate", fake_eval)
    cfg = train_recipe(max_steps=20, eval_interval=2, early_stopping_patience=2, checkpoint_interval=100)
    res = train(cfg)
    assert res.stopped == "early_stopping"
    assert res.step == 8  # evals at 2 (3.0), 4 (2.0 best), 6 (worse), 8 (worse) -> stop
    best = json.loads((cfg.run_dir / "best" / "trainer_state.json").read_text())
    assert best["step"] == 4


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(train_recipe, monkeypatch):
    from rotary.model import heads

    calls = {"n": 0}
    real = heads.linear_cross_entropy

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(heads, "linear_cross_entropy", poisoned)
    cfg = train_recipe(max_steps=10, checkpoint_interval=2, eval_interval=100)
    with pytest.raises(RotaryError, match="non-finite loss"):
        train(cfg)
    steps = [s for s, _ in ckpt.list_checkpoints(cfg.run_dir)]
    assert steps and max(steps) == 4  # saved at 2 and 4; step 6 diverged and was not saved


def test_pickled_code_in_a_checkpoint_is_refused(train_recipe, tmp_path):
    cfg = train_recipe(max_steps=2, checkpoint_interval=2, eval_interval=100)
    train(cfg)
    latest = ckpt.latest_checkpoint(cfg.run_dir)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"optimizer": Evil()}, latest / "training_state.pt")
    resumed = train_recipe(max_steps=4, checkpoint_interval=2, eval_interval=100)
    with pytest.raises(RotaryError, match="training_state.pt is .* bytes"):  # the manifest sees it first
        train(resumed, resume=True)
    ckpt.write_manifest(latest)  # whoever planted it can rewrite the manifest too
    with pytest.raises(RotaryError, match="refusing to load"):
        train(resumed, resume=True)
    assert not marker.exists()


def test_output_dir_with_another_run_needs_resume_or_overwrite(train_recipe):
    cfg = train_recipe(max_steps=2, eval_interval=100)
    train(cfg)
    with pytest.raises(RotaryError, match="already holds a run"):
        train(train_recipe(max_steps=2, eval_interval=100))
    other = train_recipe(max_steps=2, eval_interval=100, model={"preset": "tiny", "n_layer": 1, "max_seq_len": 32})
    with pytest.raises(RotaryError, match="different run"):
        train(other, resume=True)
    res = train(other, overwrite=True)
    assert res.step == 2


def test_resuming_with_another_schedule_says_so_and_the_same_schedule_does_not(train_recipe):
    """lr_at depends on max_steps (and lr, warmup, ...): a resume that changes them trains another
    run than a fresh start would, and the log says which settings changed."""
    train(train_recipe(max_steps=2, eval_interval=100))
    log = train_recipe().run_dir / "train.log"
    train(train_recipe(max_steps=3, eval_interval=100), resume=True)
    assert "learning-rate schedule differs" in log.read_text() and "(max_steps 2 -> 3)" in log.read_text()
    train(train_recipe(max_steps=4, eval_interval=100, lr=1e-3), resume=True)
    assert "(max_steps 3 -> 4, lr 0.003 -> 0.001)" in log.read_text()
    train(train_recipe(max_steps=4, eval_interval=100, lr=1e-3), resume=True)  # the same settings: no note
    assert log.read_text().count("learning-rate schedule differs") == 2


def test_seq_len_longer_than_the_model_is_refused(train_recipe):
    cfg = train_recipe(max_steps=2, seq_len=128)
    with pytest.raises(RotaryError, match="longer than model.max_seq_len"):
        train(cfg)


def test_shards_from_another_tokenizer_are_refused(train_recipe, tmp_path):
    a = train_recipe(max_steps=1, eval_interval=100, output_dir=str(tmp_path / "a"))
    train(a)
    assert "trained 1 step in " in (a.run_dir / "train.log").read_text()  # not "1 steps"
    b = train_recipe(max_steps=1, eval_interval=100, output_dir=str(tmp_path / "b"), tokenizer_kind="char")
    train(b)
    mixed = load_recipe(None, {
        "model": {"preset": "tiny", "max_seq_len": 32}, "seq_len": 32, "max_steps": 1,
        "output_dir": str(tmp_path / "c"), "progress": False, "tensorboard": False,
        "data": {"shards": str(a.run_dir / "data"), "tokenizer": {"path": str(b.run_dir / "tokenizer")}},
    })
    with pytest.raises(RotaryError, match="another tokenizer"):
        train(mixed)


def test_cli_unknown_recipe_key_is_one_line_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nmax_step: 3\n")
    proc = run_cli("train", str(recipe), timeout=60)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "max_step" in lines[0] and "max_steps" in lines[0]


def test_cli_override_with_bad_type_is_one_line_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    proc = run_cli("train", str(recipe), "--max-steps", "many", "--output-dir", str(tmp_path / "r"), timeout=60)
    assert proc.returncode == 2
    assert "max_steps" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_lr_schedule_warmup_then_cosine():
    from rotary.train.schedule import lr_at

    kw = dict(peak=1.0, final=0.1, warmup=10, total=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    vals = [lr_at(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_weight_decay_skips_norms_biases_and_embeddings():
    from rotary import CausalLM, get_preset
    from rotary.train.schedule import param_groups

    model = CausalLM(get_preset("tiny").replace(bias=True))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n and "embed" not in n for n in decayed)
    assert "backbone.embed_tokens.weight" in {names[id(p)] for p in no_decay["params"]}


def test_whole_word_masking_masks_whole_wordpiece_words(train_recipe):
    from rotary.data.lm import prepare_training_data
    from rotary.train.distributed import DistInfo

    cfg = train_recipe(task="masked_lm", max_steps=2, tokenizer_kind="wordpiece")
    cfg.data.whole_word_mask = True
    res = train(cfg)
    assert res.step == 2
    data = prepare_training_data(cfg, DistInfo())
    data.configure(seq_len=32, batch_size=4, seed=cfg.seed, model_vocab=data.vocab_size)
    inputs, labels = next(data.train_batches(0, 1, DistInfo()))
    is_cont = torch.from_numpy(data.start_table == 0)
    original = torch.where(labels != -100, labels, inputs)
    # a ## continuation is predicted exactly when the token before it (same word) is
    cont = is_cont[original[:, 1:]]
    assert bool(((labels[:, 1:] != -100) == (labels[:, :-1] != -100))[cont].all())


def test_more_processes_than_gpus_is_refused_before_nccl(monkeypatch):
    from rotary.device import pick_device
    from rotary.errors import RotaryError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for name in ("auto", "cuda"):
        with pytest.raises(RotaryError, match="2 processes on this node but 1 CUDA device"):
            pick_device(name, local_rank=1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert pick_device("auto") == torch.device("cuda", 0)


@pytest.mark.slow
def test_compiled_training_matches_eager(train_recipe, tmp_path):
    common = dict(max_steps=3, eval_interval=3, checkpoint_interval=3)
    eager = train_recipe(output_dir=str(tmp_path / "eager"), **common)
    compiled = train_recipe(output_dir=str(tmp_path / "compiled"), compile=True, **common)
    train(eager)
    train(compiled)
    assert "compiling the model (torch.compile)" in (compiled.run_dir / "train.log").read_text()
    assert "compiling" not in (eager.run_dir / "train.log").read_text()
    a, b = losses(eager.run_dir), losses(compiled.run_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:  # inductor reorders float arithmetic: close, not bitwise
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


def test_output_bias_starts_at_the_training_unigram_and_a_resume_keeps_it(train_recipe, tmp_path, monkeypatch):
    import numpy as np
    import torch.nn.functional as F

    from rotary.data.shards import open_shards
    from rotary.model import CausalLM
    from rotary.model.config import ModelConfig

    model = {"preset": "tiny", "max_seq_len": 32, "output_bias": True}
    common = dict(max_steps=6, checkpoint_interval=100, eval_interval=3, lr=1e-3, model=model)
    full = train_recipe(output_dir=str(tmp_path / "full"), **common)
    train(full)
    assert "output_bias started at the log unigram" in (full.run_dir / "train.log").read_text()
    _, shards = open_shards(full.run_dir / "data")
    weights = ckpt.load_file(str(ckpt.latest_checkpoint(full.run_dir) / "model.safetensors"))
    bias = weights["output_bias"]
    counts = np.bincount(np.asarray(shards["train"]).astype(np.int64), minlength=len(bias))[: len(bias)]
    unigram = torch.from_numpy(np.log((counts + 1.0) / (counts.sum() + len(bias)))).float()
    # six AdamW steps at lr 1e-3 move it by < 0.01 from where it started; the unigram spans nats
    assert (bias - unigram).abs().max() < 0.01 and unigram.max() - unigram.min() > 3

    part = train_recipe(output_dir=str(tmp_path / "part"), **common)
    train_interrupted_at(part, 4, monkeypatch)
    train(part, resume=True)  # restarting the bias at the unigram here would change steps 5-6
    assert losses(full.run_dir) == losses(part.run_dir)

    net = CausalLM(ModelConfig.from_dict({**json.loads((ckpt.latest_checkpoint(full.run_dir) / "config.json")
                                                       .read_text())["model"]}))
    ckpt.load_weights(net, ckpt.latest_checkpoint(full.run_dir) / "model.safetensors")
    x = torch.randint(0, net.config.vocab_size, (2, 9))
    logits = net(x)
    assert torch.allclose(logits, net.lm_head(net.backbone(x)) + net.output_bias, atol=1e-6)
    fused = net(x[:, :-1], targets=x[:, 1:])  # the trainer's loss path carries the bias too
    assert torch.allclose(fused, F.cross_entropy(net(x[:, :-1]).reshape(-1, len(bias)), x[:, 1:].reshape(-1)),
                          atol=1e-5)


def test_output_bias_is_refused_where_it_means_nothing():
    from rotary.hf.llama import config_to_hf
    from rotary.model import MaskedLM
    from rotary.model.config import ModelConfig

    cfg = ModelConfig(vocab_size=50, max_seq_len=16, n_layer=1, n_head=2, d_model=16, output_bias=True)
    with pytest.raises(RotaryError, match="output_bias is for a causal LM"):
        MaskedLM(cfg)
    with pytest.raises(RotaryError, match="lm_head has no bias"):
        config_to_hf(cfg)


def test_evaluation_stats_carry_the_output_bias():
    # evaluation scores through cross_entropy_stats (return_stats=True): without the bias there,
    # validation loss/accuracy would be those of another model than the one trained and sampled
    import torch.nn.functional as F

    from rotary.model import CausalLM
    from rotary.model.config import ModelConfig

    torch.manual_seed(0)
    net = CausalLM(ModelConfig(vocab_size=50, max_seq_len=16, n_layer=1, n_head=2, d_model=16, output_bias=True))
    with torch.no_grad():
        net.output_bias.copy_(torch.randn(50) * 3)  # large enough to move both the loss and the argmax
    x = torch.randint(0, 50, (2, 9))
    logits = net(x[:, :-1]).reshape(-1, 50)
    y = x[:, 1:].reshape(-1)
    loss_sum, scored, correct = net(x[:, :-1], targets=x[:, 1:], return_stats=True).tolist()
    assert scored == y.numel()
    assert loss_sum == pytest.approx(F.cross_entropy(logits, y, reduction="sum").item(), rel=1e-5)
    assert correct == (logits.argmax(-1) == y).sum().item()


def test_output_bias_start_samples_a_long_shard_end_to_end():
    # above chunks * chunk_tokens the shard is sampled in evenly spaced chunks, first to last: a
    # token only the shard's tail holds must be counted, and the sample is exactly chunks * chunk_tokens
    import numpy as np

    from rotary.model import CausalLM
    from rotary.model.config import ModelConfig
    from rotary.train.setup import start_output_bias

    net = CausalLM(ModelConfig(vocab_size=8, max_seq_len=16, n_layer=1, n_head=2, d_model=16, output_bias=True))
    tokens = np.zeros(1000, dtype=np.uint16)
    tokens[-10:] = 7  # only in the last chunk
    note = start_output_bias(net, tokens, chunks=4, chunk_tokens=10)
    assert note is not None and "of 40 training tokens" in note
    counts = np.array([30, 0, 0, 0, 0, 0, 0, 10], dtype=np.float64)
    want = torch.from_numpy(np.log((counts + 1) / (counts.sum() + 8))).float()
    assert torch.allclose(net.output_bias.detach(), want, atol=1e-6)


def test_counted_batches_see_each_batchs_own_length_and_labelled_share():
    """tok/s and MFU count the positions the model ran on: a padded batch is as long as its
    longest row, not seq_len (a classifier's MFU read > 100% when it counted batch x seq_len)."""
    from rotary.train.metrics import CountedBatches

    calls = []

    def flops_per_token(seq_len, predicted_share=1.0):
        calls.append((seq_len, predicted_share))
        return 1000.0 * seq_len + predicted_share

    ids = [torch.zeros(4, 7, dtype=torch.long), torch.zeros(4, 20, dtype=torch.long)]
    classify = [(ids[0], torch.tensor([0, 1, 0, 1])), (ids[1], torch.tensor([1, 1, 0, 0]))]
    counted = CountedBatches(iter(classify), flops_per_token)
    assert [b[0].shape[1] for b in counted] == [7, 20]
    assert counted.take() == (4 * 7 + 4 * 20, 4 * 7 * (7000 + 1) + 4 * 20 * (20000 + 1))
    assert counted.take() == (0, 0.0)
    labels = torch.full((2, 8), -100)
    labels[0, :2] = 5  # a masked LM's batch: 2 of 16 positions are predicted
    next(CountedBatches(iter([(torch.zeros(2, 8, dtype=torch.long), labels)]), flops_per_token))
    assert calls[-1] == (8, 2 / 16)
