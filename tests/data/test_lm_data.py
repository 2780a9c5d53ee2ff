"""The trainer's LM batches (rotary.data.lm) read from memory-mapped shards: windows, seeds,
resume, evaluation coverage, and a memmap that is never copied whole. How a global batch is split
over ranks is tests/data/test_batch_split.py; the masking itself is tests/data/test_masking.py."""

from __future__ import annotations

import gc
import itertools
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from rotary.data.lm import TrainData
from rotary.data.prepare import prepare
from rotary.data.shards import open_shards
from rotary.labels import IGNORE_INDEX
from rotary.tokenizer import load_tokenizer
from rotary.train.distributed import DistInfo
from tests.train_support import write_shards

# Token ids equal to their positions reveal exactly where each window came from.
N = 100_000
POSITIONS = np.arange(N, dtype=np.uint32)


def take(it, n):
    return list(itertools.islice(it, n))


def positions_data(tmp_path: Path, tokenizer_dir: Path, *, seq_len: int, batch_size: int, seed: int = 0,
                   train=POSITIONS, val=POSITIONS[:1001]) -> TrainData:
    shards = write_shards(tmp_path / "positions", tokenizer_dir, train, val, vocab_size=N)
    data = TrainData("causal_lm", shards, tokenizer_dir)
    data.configure(seq_len=seq_len, batch_size=batch_size, seed=seed, model_vocab=N)
    return data


def test_causal_batches_are_shifted_contiguous_windows(data_bpe_dir: Path, tmp_path: Path) -> None:
    data = positions_data(tmp_path, data_bpe_dir, seq_len=32, batch_size=8)
    x, y = next(data.train_batches(0, 1, DistInfo()))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
    # A window is a contiguous slice of the shard.
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.long))


def test_batches_are_reproducible_and_resumable(data_bpe_dir: Path, tmp_path: Path) -> None:
    def run(seed: int, start: int = 0, n: int = 6) -> list[torch.Tensor]:
        data = positions_data(tmp_path, data_bpe_dir, seq_len=16, batch_size=4, seed=seed)
        return [x for x, _ in take(data.train_batches(start, 1, DistInfo()), n)]

    a, b = run(7), run(7)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, run(8)))
    # Resuming at step 4 gives batches 4 and 5 of the uninterrupted run.
    resumed = run(7, start=4, n=2)
    assert torch.equal(resumed[0], a[4]) and torch.equal(resumed[1], a[5])
    assert not torch.equal(a[0], a[1])  # batches within a run differ


def test_rows_of_a_global_batch_never_share_tokens(data_bpe_dir: Path, tmp_path: Path) -> None:
    # Row g of every global batch reads only block g of the shard (N // rows tokens).
    rows = 16
    data = positions_data(tmp_path, data_bpe_dir, seq_len=63, batch_size=rows)
    block = N // rows
    for x, y in take(data.train_batches(0, 1, DistInfo()), 20):
        window = torch.cat([x, y[:, -1:]], 1)
        lo = torch.arange(rows)[:, None] * block
        assert bool(((window >= lo) & (window < lo + block)).all())


def test_eval_batches_cover_each_window_once(data_bpe_dir: Path, tmp_path: Path) -> None:
    data = positions_data(tmp_path, data_bpe_dir, seq_len=10, batch_size=16)
    batches = list(data.eval_batches(None, DistInfo()))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (100, 10)
    # Every token but the first is a target exactly once.
    assert torch.equal(x.flatten(), torch.arange(1000)) and torch.equal(y.flatten(), torch.arange(1, 1001))
    assert [len(b[0]) for b in batches] == [16] * 6 + [4]
    assert len(list(data.eval_batches(2, DistInfo()))) == 2


def test_a_shard_shorter_than_one_window_is_a_user_error(data_bpe_dir: Path, tmp_path: Path) -> None:
    from rotary.errors import RotaryError

    with pytest.raises(RotaryError, match="fewer than one window of 65"):
        positions_data(tmp_path, data_bpe_dir, seq_len=64, batch_size=2, val=POSITIONS[:60])


def test_windows_come_through_a_fresh_memmap_each_batch(data_bpe_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard is never read whole nor through one long-lived mapping (RSS would grow with
    every page it touched, nanoGPT #287): each batch maps the file, slices its windows, drops it."""
    data = positions_data(tmp_path, data_bpe_dir, seq_len=16, batch_size=4)
    opened: list[weakref.ref] = []
    names: list[str] = []
    real = np.memmap

    def spy(*args, **kwargs):
        m = real(*args, **kwargs)
        opened.append(weakref.ref(m))
        names.append(str(m.filename))
        return m

    monkeypatch.setattr(np, "memmap", spy)
    batches = take(data.train_batches(0, 1, DistInfo()), 3)
    assert len(opened) == 3 and all(n.endswith("train.bin") for n in names)
    # the batches hold int64 copies of their windows only: every mapping is already gone
    gc.collect()
    assert all(ref() is None for ref in opened)
    assert all(x.dtype == torch.long for x, _ in batches)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_rss_stays_flat_while_sampling_a_large_shard(data_bpe_dir: Path, tmp_path: Path) -> None:
    def rss_file_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1])
        pytest.skip("no RssFile in /proc/self/status")

    n = 8_000_000  # 32 MB of uint32 ids
    data = positions_data(tmp_path, data_bpe_dir, seq_len=255, batch_size=64,
                          train=np.zeros(n, dtype=np.uint32))
    before = rss_file_kb()
    for _ in itertools.islice(data.train_batches(0, 1, DistInfo()), 200):  # 12,800 windows of 1 KB
        pass
    grown_mb = (rss_file_kb() - before) / 1024
    # one long-lived mapping would keep nearly every page of the file resident (~32 MB)
    assert grown_mb < 8, f"RSS grew by {grown_mb:.0f} MB"


def test_batches_from_a_prepared_memmap(data_bpe_dir: Path, tmp_path: Path) -> None:
    prepare("shakespeare", data_bpe_dir, tmp_path / "p", progress=False, corpus_opts={"max_documents": 2})
    meta, shards = open_shards(tmp_path / "p")
    train = np.asarray(shards["train"])
    data = TrainData("causal_lm", tmp_path / "p", data_bpe_dir)
    data.configure(seq_len=64, batch_size=4, seed=1, model_vocab=meta["vocab_size"])
    x, y = next(data.train_batches(0, 1, DistInfo()))
    row = torch.cat([x[0], y[0, -1:]]).numpy()
    # Each row is really a slice of the shard.
    starts = np.flatnonzero(train[:-64] == row[0])
    assert any(np.array_equal(train[s:s + 65], row) for s in starts)
    assert int(x.max()) < meta["vocab_size"]


# --------------------------------------------------------------------------------------------
# masked LM on the trainer's path
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jieba_shards(data_wordpiece_jieba_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlm") / "p"
    prepare("peoples-daily", data_wordpiece_jieba_dir, out, progress=False, num_workers=1,
            corpus_opts={"max_documents": 60})
    return out


def mlm_data(shards: Path, tokenizer_dir: Path, *, seed: int = 5, whole_word_mask: bool = True) -> TrainData:
    data = TrainData("masked_lm", shards, tokenizer_dir, whole_word_mask=whole_word_mask)
    data.configure(seq_len=64, batch_size=8, seed=seed, model_vocab=data.vocab_size)
    return data


def test_mlm_batches_are_deterministic_resumable_and_mask_whole_words(jieba_shards: Path,
                                                                    data_wordpiece_jieba_dir: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    a = take(mlm_data(jieba_shards, data_wordpiece_jieba_dir).train_batches(0, 1, DistInfo()), 3)
    b = take(mlm_data(jieba_shards, data_wordpiece_jieba_dir).train_batches(0, 1, DistInfo()), 3)
    resumed = next(mlm_data(jieba_shards, data_wordpiece_jieba_dir).train_batches(2, 1, DistInfo()))
    for (xa, la), (xb, lb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(la, lb)  # masks included
    assert torch.equal(resumed[0], a[2][0]) and torch.equal(resumed[1], a[2][1])
    inputs, labels = a[0]
    assert inputs.shape == labels.shape == (8, 64) and (labels != IGNORE_INDEX).any()
    other = next(mlm_data(jieba_shards, data_wordpiece_jieba_dir, seed=6).train_batches(0, 1, DistInfo()))
    assert not torch.equal(other[0], inputs)
    # Whole words: a chosen "##" continuation always has the token before it (its word) chosen.
    cont = torch.tensor([tok.id_to_token(i).startswith("##") for i in range(tok.vocab_size)])
    for inputs, labels in a:
        chosen = labels != IGNORE_INDEX
        original = torch.where(chosen, labels, inputs)
        follow = chosen[:, 1:] & cont[original[:, 1:]]
        assert (chosen[:, :-1][follow]).all()
    # Evaluation: fixed masks, the same every time.
    e1 = list(mlm_data(jieba_shards, data_wordpiece_jieba_dir).eval_batches(2, DistInfo()))
    e2 = list(mlm_data(jieba_shards, data_wordpiece_jieba_dir).eval_batches(2, DistInfo()))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1, e2))


def test_mlm_never_masks_the_document_separators(jieba_shards: Path, data_wordpiece_jieba_dir: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    specials = torch.tensor(tok.special_ids)
    seen_separator = False
    for inputs, labels in take(mlm_data(jieba_shards, data_wordpiece_jieba_dir, whole_word_mask=False)
                               .train_batches(0, 1, DistInfo()), 20):
        chosen = labels != IGNORE_INDEX
        original = torch.where(chosen, labels, inputs)
        special = torch.isin(original, specials)
        seen_separator |= bool(special.any())
        assert not (chosen & special).any()
        # random replacements are never special tokens either
        assert not torch.isin(inputs[chosen & (inputs != original) & (inputs != tok.mask_id)], specials).any()
    assert seen_separator  # the windows did hold [SEP]s between documents


def test_a_shard_past_2_to_the_31_tokens_is_windowed_and_read_with_64_bit_offsets(tmp_path):
    """OpenWebText is ~9B tokens: offsets past 2**31 must not wrap (nanoGPT's prepare summed
    lengths in int32). A sparse uint16 shard of 2**31 + 4,096 tokens (4 GiB on paper, a few KiB
    on disk) with known tokens at its end: the batch's last row draws past 2**31 and reads them."""
    import numpy as np

    from rotary.data.sampler import lm_window_starts, read_windows

    n = 2**31 + 4096
    path = tmp_path / "train.bin"
    tail = np.arange(4096, dtype=np.uint16) + 1
    with open(path, "wb") as f:
        f.truncate(2 * n)  # sparse: the holes read as zeros
        f.seek(2 * (n - 4096))
        f.write(tail.tobytes())
    starts = lm_window_starts(n, 64, 2, seed=0, index=0)
    assert starts.dtype == np.int64 and starts[1] >= 2**30  # row 1's block is the shard's second half
    windows = read_windows(path, np.dtype("uint16"), np.array([n - 64, 2**31 + 10], dtype=np.int64), 64)
    assert windows.dtype == np.int64
    assert windows[0].tolist() == tail[-64:].tolist()
    assert windows[1].tolist() == tail[10:74].tolist()
