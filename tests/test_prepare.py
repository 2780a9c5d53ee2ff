"""prepare: token shards + meta.json, dtype choice, atomic writes, re-runs, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rotary.cli import main
from rotary.data import prepare as prep
from rotary.data.corpora import load_corpus
from rotary.data.prepare import choose_dtype, open_shards, open_word_starts, prepare, split_document
from rotary.errors import RotaryError
from rotary.tokenizer import Tokenizer, load_tokenizer, train_tokenizer


def expected_tokens(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    out: list[int] = []
    for d in docs:
        out += tok.encode(d) + [tok.eos_id]
    return np.asarray(out)


@pytest.fixture(scope="module")
def shakespeare_prepared(data_bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("prep") / "shakespeare"
    info = prepare("shakespeare", data_bpe_dir, out, progress=False, corpus_opts={"max_documents": 3})
    return out, info


def test_shards_hold_every_document_followed_by_eos(shakespeare_prepared, data_bpe_dir: Path) -> None:
    out, info = shakespeare_prepared
    tok = load_tokenizer(data_bpe_dir)
    meta, shards = open_shards(out)
    corpus = load_corpus("shakespeare", max_documents=3)
    for split in ("train", "val"):
        docs = list(corpus.documents(split))
        np.testing.assert_array_equal(shards[split], expected_tokens(tok, docs))
        m = meta["splits"][split]
        assert m["documents"] == len(docs)
        assert m["characters"] == sum(map(len, docs))
        assert m["bytes"] == sum(len(d.encode()) for d in docs)
        assert m["tokens"] == len(shards[split]) == meta[f"tokens_{split}"]
    assert meta["dtype"] == "uint16" and shards["train"].dtype == np.uint16
    assert meta["tokenizer_hash"] == tok.hash and meta["vocab_size"] == tok.vocab_size
    assert meta["eos_id"] == tok.eos_id and meta["source"] == "shakespeare"
    assert meta["undecodable_replacements"] == 0 and meta["version"] == prep.PREPARE_FORMAT_VERSION
    assert info.summary_table().splitlines()[0].split()[:5] == ["split", "documents", "characters", "bytes", "tokens"]


def test_open_shards_maps_without_copying(shakespeare_prepared) -> None:
    out, _ = shakespeare_prepared
    _, shards = open_shards(out)
    for arr in shards.values():
        assert isinstance(arr, np.memmap) and arr.mode == "r"
        with pytest.raises((ValueError, TypeError)):
            arr[0] = 1


def test_rerun_with_same_inputs_does_nothing(shakespeare_prepared, data_bpe_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = shakespeare_prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    info = prepare("shakespeare", data_bpe_dir, out, progress=True, corpus_opts={"max_documents": 3})
    assert info.skipped
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_other_tokenizer_is_a_clear_error(shakespeare_prepared, data_char_dir: Path, tmp_path: Path) -> None:
    out, _ = shakespeare_prepared
    with pytest.raises(RotaryError, match="prepared with another tokenizer .*--overwrite"):
        prepare("shakespeare", data_char_dir, out, progress=False, corpus_opts={"max_documents": 3})
    with pytest.raises(RotaryError, match="holds corpus 'shakespeare'"):
        prepare("peoples-daily", load_tokenizer_dir_of(out), out, progress=False)


def load_tokenizer_dir_of(prepared: Path) -> str:
    return json.loads((prepared / "meta.json").read_text())["tokenizer_dir"]


def test_overwrite_and_progress_output(data_bpe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello there\n" * 2000)
    out = tmp_path / "out"
    prepare(str(text), data_bpe_dir, out, progress=True)
    captured = capsys.readouterr()
    assert "tok/s" in captured.err and "B/s" in captured.err  # the bar shows bytes/s and tokens/s
    assert "tokens/s" in captured.out and "train" in captured.out  # the summary table
    text.write_text("changed text\n" * 2000)
    info = prepare(str(text), data_bpe_dir, out, progress=False)
    assert not info.skipped and "rebuilt" in info.summary_table()


def test_interrupted_prepare_leaves_no_complete_looking_dir(data_bpe_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(30):
        (src / f"{i}.txt").write_text(f"document {i} " * 50)
    calls = {"n": 0}
    real = prep.encode_documents

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "encode_documents", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), data_bpe_dir, out, progress=False, batch_docs=5)
    assert sorted(p.name for p in out.iterdir()) == []  # no shard, no temp file, no meta.json
    with pytest.raises(RotaryError, match="no meta.json"):
        open_shards(out)
    monkeypatch.setattr(prep, "encode_documents", real)
    info = prepare(str(src), data_bpe_dir, out, progress=False, batch_docs=5)
    assert info.meta["splits"]["train"]["documents"] + info.meta["splits"]["val"]["documents"] == 30


def test_truncated_shard_is_detected(data_bpe_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("some text here\n" * 100)
    out = tmp_path / "out"
    prepare(str(tmp_path / "t.txt"), data_bpe_dir, out, progress=False)
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(RotaryError, match="do not match meta.json"):
        open_shards(out)


def test_dtype_choice() -> None:
    assert choose_dtype(8192) == "uint16"
    assert choose_dtype(65535) == "uint16"
    assert choose_dtype(65536) == "uint32"
    assert choose_dtype(100_000, "auto") == "uint32"
    assert choose_dtype(300, "uint32") == "uint32"
    with pytest.raises(RotaryError, match="does not fit uint16"):
        choose_dtype(70_000, "uint16")
    with pytest.raises(RotaryError, match="dtype must be"):
        choose_dtype(300, "int8")


def test_large_vocabulary_switches_to_uint32(tmp_path: Path) -> None:
    """A real 70,000-word vocabulary: ids above 65,535 survive the round trip through uint32."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    vocab.update({f"w{i}": i for i in range(5, 70_000)})
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_dir = tmp_path / "tok"
    Tokenizer(backend, "char").save(tok_dir)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"w{i} w{69_999 - i} w7"}) + "\n" for i in range(5, 105)))
    out = tmp_path / "out"
    info = prepare(str(corpus), tok_dir, out, progress=False, val_fraction=0.0)
    assert info.dtype == "uint32"
    meta, shards = open_shards(out)
    assert shards["train"].dtype == np.uint32 and meta["dtype"] == "uint32"
    assert int(shards["train"].max()) == 69_994
    assert shards["train"][:4].tolist() == [5, 69_994, 7, 3]  # w5 w69994 w7 [SEP]
    with pytest.raises(RotaryError, match="does not fit uint16"):
        prepare(str(corpus), tok_dir, tmp_path / "out16", progress=False, dtype="uint16")


def test_undecodable_bytes_are_counted_in_meta_and_summary(data_bpe_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text("clean text\n")
    (src / "bad.txt").write_bytes(b"caf\xe9 \xff\xfe ok\n")
    info = prepare(str(src), data_bpe_dir, tmp_path / "out", progress=False, val_fraction=0.0)
    assert info.meta["undecodable_replacements"] == 3  # \xe9, \xff, \xfe
    assert info.meta["splits"]["train"]["undecodable_replacements"] == 3
    assert "3 undecodable byte sequence(s) were replaced" in info.summary_table()


def test_bad_input_errors(data_bpe_dir: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n\n')
    with pytest.raises(RotaryError, match="no text"):
        prepare(str(blank), data_bpe_dir, tmp_path / "o1", progress=False)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"content": "oops"}\n')
    with pytest.raises(RotaryError, match=r"d\.jsonl:3: no 'text' field"):
        prepare(str(jl), data_bpe_dir, tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2" / "meta.json").exists()
    with pytest.raises(RotaryError, match="tokenizer not found"):
        prepare("shakespeare", tmp_path / "no-tokenizer", tmp_path / "o3", progress=False)


def test_long_documents_are_split_without_changing_tokens(data_bpe_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = load_tokenizer(data_bpe_dir)
    (doc,) = list(load_corpus("shakespeare", max_documents=1).train_documents())
    doc = doc[:60_000] + "\n\n\n   spaced  \n\tout\n" + doc[60_000:80_000]
    pieces = split_document(doc, 2000)
    assert len(pieces) > 20 and "".join(pieces) == doc
    monkeypatch.setattr(prep, "CHUNK_CHARS", 2000)
    ids, flags = prep.encode_documents(tok, [doc, "tail"], "uint16", word_starts=False)
    np.testing.assert_array_equal(ids, expected_tokens(tok, [doc, "tail"]))
    assert flags is None


def test_jieba_tokenizer_writes_word_starts(data_wordpiece_jieba_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    out1, out2 = tmp_path / "one", tmp_path / "two"
    prepare("peoples-daily", data_wordpiece_jieba_dir, out1, progress=False, num_workers=1,
            corpus_opts={"max_documents": 40})
    # Several processes (the jieba pool) give the same bytes as one.
    prepare("peoples-daily", data_wordpiece_jieba_dir, out2, progress=False, num_workers=2,
            corpus_opts={"max_documents": 40})
    meta, shards = open_shards(out1)
    words = open_word_starts(out1)
    assert meta["word_starts"] and meta["pre_tokenizer"] == "jieba"
    _, shards2 = open_shards(out2)
    words2 = open_word_starts(out2)
    for split in ("train", "val"):
        np.testing.assert_array_equal(shards[split], shards2[split])
        np.testing.assert_array_equal(words[split], words2[split])
        assert len(words[split]) == len(shards[split])
    docs = list(load_corpus("peoples-daily", max_documents=40).val_documents())
    np.testing.assert_array_equal(shards["val"], expected_tokens(tok, docs))
    # Continuation pieces (##x) never start a word; every separator does.
    train, flags = np.asarray(shards["train"]), np.asarray(words["train"])
    cont = np.array([tok.id_to_token(int(i)).startswith("##") for i in range(tok.vocab_size)])
    assert not flags[cont[train]].any()
    assert flags[train == tok.eos_id].all()
    assert 0.3 < flags.mean() < 0.95


def test_cli_prepare(data_bpe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.txt").write_text("alpha beta gamma\n" * 500)
    argv = ["prepare", "--corpus", str(tmp_path / "t.txt"), "--tokenizer", str(data_bpe_dir),
            "--out", str(tmp_path / "out"), "--val-fraction", "0.2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "documents" in out and "bytes/token" in out
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses the choice
        main(argv + ["--dtype", "uint8"])
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_meta_json_is_written_last(data_bpe_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_replace = os.replace

    def spy(src, dst, *a, **k):
        order.append(Path(dst).name)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", spy)
    (tmp_path / "t.txt").write_text("x y z\n" * 100)
    prepare(str(tmp_path / "t.txt"), data_bpe_dir, tmp_path / "out", progress=False)
    assert order[-1] == "meta.json" and set(order[:-1]) == {"train.bin", "val.bin"}


def test_corpus_token_counts_match_prepare(shakespeare_prepared, data_bpe_dir: Path) -> None:
    from rotary.data.corpora import corpus_stats

    _, info = shakespeare_prepared
    stats = corpus_stats("shakespeare", load_tokenizer(data_bpe_dir), max_documents=3)
    for split in ("train", "val"):
        m = info.meta["splits"][split]
        # prepare adds one separator per document
        assert stats[split]["tokens"] + stats[split]["documents"] == m["tokens"]


def test_prepare_full_shakespeare(data_bpe_dir: Path, tmp_path: Path) -> None:
    info = prepare("shakespeare", data_bpe_dir, tmp_path / "out", progress=False)
    assert info.meta["splits"]["train"]["documents"] == 39 and info.meta["splits"]["val"]["documents"] == 3


def test_train_tokenizer_then_prepare_chinese_char(tmp_path: Path) -> None:
    tok = train_tokenizer("chinese-sentiment", "char", 800, tmp_path / "tok", max_documents=500)
    info = prepare("chinese-sentiment", tmp_path / "tok", tmp_path / "out", progress=False,
                   corpus_opts={"max_documents": 500})
    assert info.meta["splits"]["train"]["documents"] == 500
    assert info.meta["eos_id"] == tok.sep_id and not info.meta["word_starts"]
