"""The README's workflow, verb by verb, through the real CLI on a tiny budget."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_support import write_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model.preset", "tiny", "--model.max_seq_len", "32", "--seq-len", "32", "--batch-size", "2",
        "--eval-batches", "2", "--progress", "false"]


def greedy_decode(pre, prompt: str, n: int, seed: int | None = None, **sampling) -> str:
    """``n`` tokens by full forward passes over the growing sequence (no cache), stopping at EOS
    as ``Pretrained.generate`` does; the decoded text without the EOS. Greedy, or with
    ``sampling`` one ``sample_next`` draw per step from a generator seeded with ``seed``."""
    from rotary.infer.sampling import sample_next

    ids = pre.tokenizer.encode(prompt)
    new: list[int] = []
    eos = pre.tokenizer.eos_id
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for _ in range(n):
            logits = pre.model(torch.tensor([ids + new]))[:, -1]
            nxt = int(sample_next(logits, generator=g, **sampling)[0]) if sampling else int(logits[0].argmax())
            new.append(nxt)
            if nxt == eos:
                break
    return pre.tokenizer.decode([t for t in new if t != eos])


def rotary(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rotary", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"rotary {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_readme_workflow_on_your_own_text(tmp_path):
    texts = write_corpus(tmp_path / "my_texts")
    rotary("tokenizer", "train", "--corpus", str(texts), "--kind", "bpe", "--vocab-size", "300",
           "--out", "tok", cwd=tmp_path)
    rotary("prepare", "--corpus", str(texts), "--tokenizer", "tok", "--out", "data/mine",
           "--val-fraction", "0.2", cwd=tmp_path)
    again = rotary("prepare", "--corpus", str(texts), "--tokenizer", "tok", "--out", "data/mine",
                   "--val-fraction", "0.2", cwd=tmp_path)
    assert "nothing to do" in again.stdout + again.stderr
    recipe = ROOT / "recipes" / "shakespeare.yaml"
    rotary("train", str(recipe), "--data.shards", "data/mine", "--data.tokenizer.path", "tok",
           "--name", "mine", "--max-steps", "4", "--eval-interval", "2", *TINY, cwd=tmp_path)
    run = tmp_path / "runs" / "mine"
    assert (run / "best" / "model.safetensors").is_file()

    out = rotary("generate", "runs/mine", "--prompt", "Shall I", "--top-p", "0.5", "--max-new-tokens", "8",
                 "--seed", "1", cwd=tmp_path)
    assert out.stdout.startswith("Shall I") and len(out.stdout.strip()) > len("Shall I")
    batch = rotary("generate", "runs/mine", "--prompt", "So", "--prompt", "Rough winds do",
                   "--temperature", "0", "--max-new-tokens", "5", cwd=tmp_path)
    assert batch.stdout.count("-" * 40) == 2 and batch.stdout.startswith("So")

    # Python API: greedy decoding (KV cache, batched) is the argmax of full forward passes,
    # one token at a time; the CLI's greedy batch printed the same continuations
    import rotary as rt

    pre = rt.load(run, device="cpu")
    for prompt in ("So", "Rough winds do"):
        want = greedy_decode(pre, prompt, 5)
        assert pre.generate(prompt, max_new_tokens=5, temperature=0) == want
        assert prompt + want + "\n" + "-" * 40 in batch.stdout
    assert pre.generate(["So", "Rough winds do"], max_new_tokens=5, temperature=0) == [
        greedy_decode(pre, "So", 5), greedy_decode(pre, "Rough winds do", 5)]
    # seeded sampling: the settings reach the sampler (the CLI's default temperature is 0.8).
    # Narrow sets: this barely trained model's distribution is nearly flat, and a wide top-p
    # set would rarely change which token is drawn.
    sampled = greedy_decode(pre, "Shall I", 8, seed=1, temperature=0.8, top_p=0.5)
    assert out.stdout == "Shall I" + sampled + "\n"
    assert pre.generate("Shall I", max_new_tokens=8, temperature=0.8, top_p=0.5, seed=1) == sampled
    assert pre.generate("Shall I", max_new_tokens=8, temperature=1.5, top_k=3, seed=2) == greedy_decode(
        pre, "Shall I", 8, seed=2, temperature=1.5, top_k=3)

    # to transformers and back
    rotary("convert", "runs/mine", "--to", "hf", "hf_out", cwd=tmp_path)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_out").eval()
    ids = torch.tensor([pre.tokenizer.encode("Shall I compare thee")])
    with torch.no_grad():
        diff = (hf(ids).logits - pre.model(ids)).abs().max().item()
    assert diff <= 1e-4
    rotary("convert", "hf_out", "back", "--from-hf", cwd=tmp_path)
    from rotary.run_source import load_model

    back = load_model(tmp_path / "back")[0]
    with torch.no_grad():
        assert (back(ids) - pre.model(ids)).abs().max().item() <= 1e-4
    assert json.loads((tmp_path / "back" / "config.json").read_text())["task"] == "causal_lm"

    info = rotary("info", cwd=tmp_path)
    assert "roformer-base" in info.stdout and "llama-small" in info.stdout


@pytest.mark.slow
def test_demo_command_on_a_tiny_budget(tmp_path):
    """`rotary demo` end to end (the real corpus, a few steps), then again: it reuses and says so."""
    args = ["demo", "--output-dir", "runs/d", "--max-steps", "3", "--model.preset", "tiny", "--model.n_layer", "1",
            "--model.max_seq_len", "32", "--seq-len", "32", "--batch-size", "2", "--eval-batches", "2",
            "--eval-interval", "3", "--data.tokenizer.vocab_size", "300", "--progress", "false"]
    first = rotary(*args, cwd=tmp_path, timeout=400)
    for word in ("bits/byte", "xz", "gzip", "Sample", "ROMEO:"):
        assert word in first.stdout
    run = tmp_path / "runs" / "d"
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "metrics.jsonl").is_file() and list((run / "tensorboard").iterdir())
    res = json.loads((run / "demo_results.json").read_text())
    # bits per byte: the loss in bits per token over the bytes each validation token stands for
    val = json.loads((run / "data" / "meta.json").read_text())["splits"]["val"]
    assert val["bytes"] > val["tokens"] > 0
    want = res["rotary"]["loss"] / math.log(2) * val["tokens"] / val["bytes"]
    assert math.isclose(res["rotary"]["bits_per_byte"], want, rel_tol=1e-9)
    assert math.isclose(res["rotary"]["perplexity"], math.exp(res["rotary"]["loss"]), rel_tol=1e-9)
    # the whole validation split was scored: every token but the tail of the last window
    assert val["tokens"] - 32 <= res["validation_tokens"] <= val["tokens"] - 1
    # xz -9e and gzip -9 on English text: ~2-3.5 bits per byte, gzip the worse of the two
    assert 1.0 < res["xz"]["bits_per_byte"] < res["gzip"]["bits_per_byte"] < 4.0
    # the fair bar: Kneser-Ney on the same works (it does not depend on the model), and the model again
    # with a sliding window of half its context, which can only help a model this barely trained so much
    assert abs(res["kneser_ney"]["bits_per_byte"] - 2.029) < 0.01 and res["kneser_ney"]["order"] == 8
    assert res["rotary_sliding"]["stride"] == 16
    assert abs(res["rotary_sliding"]["bits_per_byte"] - res["rotary"]["bits_per_byte"]) < 0.5
    assert "Kneser-Ney char 8-gram" in first.stdout and "sliding window (stride 16)" in first.stdout
    second = rotary(*args, cwd=tmp_path, timeout=400)
    assert "reusing" in second.stdout and "already finished" in second.stdout
    assert "reusing its figures" in second.stdout and "bits/byte" in second.stdout


@pytest.mark.slow
def test_demo_sweep_quick_scores_on_tuning_works(tmp_path):
    """experiments/demo_sweep.py --quick: the recorded sweep's code on a tiny budget. Its rows are
    scored on the tuning works (the demo's own validation works are never seen)."""
    script = Path(__file__).resolve().parents[2] / "experiments" / "demo_sweep.py"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--rows", "bf16-muon", "--runs-dir",
                           str(tmp_path / "runs"), "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads((out / "demo_sweep.json").read_text())
    row = table["rows"][0]
    assert row["row"] == "bf16-muon" and row["steps"] == 4 and row["tokens"] == 4 * 2 * 32
    assert 0 < row["sliding_bits_per_byte"] < 10 and 0 < row["kneser_ney"] < 4
    meta = json.loads((tmp_path / "runs" / "bf16-muon" / "data" / "meta.json").read_text())
    assert meta["source_options"]["val_works"] == table["tune_works"]
    state = torch.load(tmp_path / "runs" / "bf16-muon" / "checkpoints" / "step-0000004" / "training_state.pt",
                       weights_only=True)
    assert set(state["optimizer"]) == {"muon", "adamw"}
    assert "| bf16-muon |" in (out / "demo_sweep.md").read_text()
    # --seeds: the demo recipe itself (its own validation works), the same tiny budget
    proc = subprocess.run([sys.executable, str(script), "--quick", "--seeds", "5", "--runs-dir",
                           str(tmp_path / "runs"), "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seeds = json.loads((out / "demo_seeds.json").read_text())
    assert [r["seed"] for r in seeds["rows"]] == [5] and seeds["summary"]["sliding_bits_per_byte"]["std"] == 0.0
    assert abs(seeds["rows"][0]["kneser_ney"] - row["kneser_ney"]) > 0.01  # other works than the sweep's
    meta = json.loads((tmp_path / "runs" / "seed-5" / "data" / "meta.json").read_text())
    assert "val_works" not in meta["source_options"]
