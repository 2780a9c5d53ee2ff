"""How TrainData splits batches over processes, checked in one process (no torchrun): rank r of
N must see exactly its rows of the single-process global batch, for training (also with
gradient accumulation) and evaluation (also the short last global batch), and every rank must
run as many evaluation forward passes as the others (FSDP's collectives hang otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rotary.data.lm import TrainData, prepare_training_data
from rotary.train.distributed import DistInfo
from tests.train_support import make_recipe, write_corpus

SEQ = 32
KINDS = {  # name: (task, tokenizer kind, whole-word masking)
    "causal": ("causal_lm", "bpe", False),
    "mlm": ("masked_lm", "char", False),
    "mlm-wwm": ("masked_lm", "wordpiece", True),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Tokenizer and shards per kind, prepared once (no training)."""
    root = tmp_path_factory.mktemp("split")
    corpus = write_corpus(root / "docs")
    out = {}
    for name, (task, kind, _) in KINDS.items():
        cfg = make_recipe(root / name, corpus=corpus, tokenizer_kind=kind, task=task)
        prepare_training_data(cfg, DistInfo())
        out[name] = (cfg.run_dir / "data", cfg.run_dir / "tokenizer")
    return out


def make_data(shards, name: str, batch_size: int) -> TrainData:
    task, _, wwm = KINDS[name]
    data = TrainData(task, *shards[name], whole_word_mask=wwm)
    data.configure(seq_len=SEQ, batch_size=batch_size, seed=7, model_vocab=data.vocab_size)
    return data


def take(it, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("accum", [1, 2])
def test_each_rank_trains_on_its_rows_of_the_single_process_batch(shards, name, accum):
    B, world, start = 2, 2, 3  # from step 3: a resumed run's batches too
    single = take(make_data(shards, name, B * world * accum).train_batches(start, 1, DistInfo()), 2)
    assert all(int((y != -100).sum()) > 0 for _, y in single)
    for rank in range(world):
        data = make_data(shards, name, B)
        micro = take(data.train_batches(start, accum, DistInfo(rank=rank, world_size=world)), 2 * accum)
        for step in range(2):
            gx, gy = single[step]
            for a in range(accum):
                x, y = micro[step * accum + a]
                lo = (rank * accum + a) * B
                # inputs and labels, so MLM's masks and random replacements too
                assert torch.equal(x, gx[lo : lo + B]), (rank, step, a)
                assert torch.equal(y, gy[lo : lo + B]), (rank, step, a)


def _val_windows(data: TrainData) -> int:
    return sum(len(x) for x, _ in data.eval_batches(None, DistInfo()))


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("last_share", ["empty", "short"])
def test_each_rank_evaluates_its_rows_and_as_many_batches_as_the_others(shards, name, last_share):
    from rotary.model.config import ModelConfig
    from rotary.tasks import get_task

    world = 2
    n = _val_windows(make_data(shards, name, 1))
    # a per-rank batch whose last global batch leaves rank 1 nothing ("empty") or less than B
    want = (lambda r, B: 1 <= r <= B) if last_share == "empty" else (lambda r, B: B < r < 2 * B)
    B = next(B for B in range(2, 40) if want(n % (world * B), B))
    single = list(make_data(shards, name, B * world).eval_batches(None, DistInfo()))
    per_rank = [list(make_data(shards, name, B).eval_batches(None, DistInfo(rank=r, world_size=world)))
                for r in range(world)]
    # the same number of forward passes on every rank: each runs FSDP's all_gathers
    assert len(per_rank[0]) == len(per_rank[1]) == len(single)
    for b, (gx, gy) in enumerate(single):
        for rank in range(world):
            x, y = per_rank[rank][b]
            rows = slice(rank * B, (rank + 1) * B)
            if len(gx[rows]):
                assert torch.equal(x, gx[rows]) and torch.equal(y, gy[rows]), (rank, b)
            else:  # padding: a real forward pass that counts no tokens
                assert len(x) >= 1 and x.shape[1:] == gx.shape[1:] and bool((y == -100).all()), (rank, b)
    # summed over ranks, the model's statistics are the single process's
    task = KINDS[name][0]
    data = make_data(shards, name, B)
    torch.manual_seed(0)
    spec = {"preset": "tiny", "max_seq_len": SEQ, "vocab_size": data.vocab_size, "causal": task == "causal_lm"}
    model = get_task(task).build_model(ModelConfig.from_dict(spec), {}).eval()
    with torch.no_grad():
        one = sum(model(x, labels=y, return_stats=True) for x, y in single)
        split = sum(model(x, labels=y, return_stats=True) for batches in per_rank for x, y in batches)
    assert torch.isfinite(split).all() and split[1] == one[1] and split[2] == one[2]
    assert abs(float(split[0] - one[0])) <= 1e-6 * float(one[0])


@pytest.mark.parametrize("accum", [1, 2])
def test_each_rank_reads_only_its_own_contiguous_stretch_of_the_shard(data_bpe_dir, tmp_path, accum):
    """Random reads stay inside one region of a large memmap per process: rank r of W reads only
    tokens [r*n/W, (r+1)*n/W), and different ranks see different data with the same seed."""
    import numpy as np

    from tests.train_support import write_shards

    n, world, B = 100_000, 4, 4
    positions = np.arange(n, dtype=np.uint32)  # ids = positions: each window shows where it lies
    shards = write_shards(tmp_path / "positions", data_bpe_dir, positions, positions[:1000], vocab_size=n)
    stretch = (n // (world * B * accum)) * B * accum
    seen = []
    for rank in range(world):
        data = TrainData("causal_lm", shards, data_bpe_dir)
        data.configure(seq_len=SEQ, batch_size=B, seed=3, model_vocab=n)
        batches = take(data.train_batches(0, accum, DistInfo(rank=rank, world_size=world)), 10 * accum)
        tokens = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in batches])
        assert int(tokens.min()) >= rank * stretch and int(tokens.max()) < (rank + 1) * stretch
        seen.append(tokens - rank * stretch)
    assert not torch.equal(seen[0], seen[1])
