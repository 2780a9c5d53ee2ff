"""prepare: token shards + meta.json, dtype choice, atomic writes, re-runs, bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from rotary.cli import main
from rotary.data import encode, write_shards
from rotary.data.encode import split_document
from rotary.data.prepare import prepare
from rotary.data.shards import PREPARE_FORMAT_VERSION, choose_dtype, open_shards, open_word_starts
from rotary.data.sources import load_corpus
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
    assert meta["undecodable_replacements"] == 0 and meta["version"] == PREPARE_FORMAT_VERSION
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
    # ... as `rotary prepare --help` says: --overwrite is for another corpus or tokenizer only
    from tests.cli.test_cli import subcommand_help

    assert "are rebuilt without it when its text or options changed" in subcommand_help("prepare")


def test_interrupted_prepare_leaves_no_complete_looking_dir(data_bpe_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(30):
        (src / f"{i}.txt").write_text(f"document {i} " * 50)
    calls = {"n": 0}
    real = write_shards.encode_documents

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(write_shards, "encode_documents", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), data_bpe_dir, out, progress=False, batch_docs=5)
    assert not out.exists()  # the directory it made goes with its partial shards
    out.mkdir()
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), data_bpe_dir, out, progress=False, batch_docs=5)
    assert sorted(p.name for p in out.iterdir()) == []  # no shard, no temp file, no meta.json
    with pytest.raises(RotaryError, match="no meta.json"):
        open_shards(out)
    monkeypatch.setattr(write_shards, "encode_documents", real)
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
    monkeypatch.setattr(encode, "CHUNK_CHARS", 2000)
    ids, flags = encode.encode_documents(tok, [doc, "tail"], "uint16", word_starts=False)
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
    from rotary.data.sources import corpus_stats

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


# --------------------------------------------------------------------------------------------
# empty splits, jieba shards with special tokens, the recipe's data section
# --------------------------------------------------------------------------------------------


def test_small_folder_prepares_a_validation_split(data_bpe_dir: Path, tmp_path: Path) -> None:
    # The README's "your own text" flow: two files, no --val-fraction.
    src = tmp_path / "my_texts"
    src.mkdir()
    (src / "a.txt").write_text("".join(f"The first file, line {i}.\n" for i in range(300)))
    (src / "b.txt").write_text("".join(f"The second file, line {i}.\n" for i in range(300)))
    info = prepare(str(src), data_bpe_dir, tmp_path / "out", progress=False)
    assert info.split("val")["tokens"] > 100 and info.split("train")["tokens"] > 10 * info.split("val")["tokens"]
    _, shards = open_shards(tmp_path / "out")
    assert len(shards["val"]) == info.split("val")["tokens"]


def test_empty_validation_split_fails_at_prepare_with_the_fix(data_bpe_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "tiny"
    src.mkdir()
    (src / "a.txt").write_text("one line\n")
    (src / "b.txt").write_text("another\n")
    out = tmp_path / "out"
    with pytest.raises(RotaryError, match=r"empty validation split .*raise the val fraction"):
        prepare(str(src), data_bpe_dir, out, progress=False)
    assert not (out / "meta.json").exists() and not (out / "val.bin").exists()
    assert main(["prepare", "--corpus", str(src), "--tokenizer", str(data_bpe_dir), "--out", str(out),
                 "--no-progress"]) == 2
    assert "empty validation split" in capsys.readouterr().err
    # Asking for no validation split is allowed: a warning, not an error.
    info = prepare(str(src), data_bpe_dir, out, progress=False, val_fraction=0.0)
    assert info.split("val")["tokens"] == 0 and any("validation split is empty" in n for n in info.notes)



@pytest.mark.parametrize("empty", ["train", "val"])
def test_a_refused_split_leaves_no_partial_shard_behind(data_bpe_dir: Path, tmp_path: Path, empty: str) -> None:
    # an empty train or val split is an error after the shards were written under their hidden
    # partial names: those must go too, and the out dir prepare made with them
    src = tmp_path / "src"
    src.mkdir()
    if empty == "val":  # two small files: the last one's val share is empty
        (src / "a.txt").write_text("one line\n")
        (src / "b.txt").write_text("another\n")
    else:
        (src / "a.txt").write_text("\n")
    out = tmp_path / "out"
    with pytest.raises(RotaryError, match="(empty validation split|no text in its training split)"):
        prepare(str(src), data_bpe_dir, out, progress=False)
    assert not out.exists()
    out.mkdir()  # the user's own directory stays, empty
    with pytest.raises(RotaryError, match="(empty validation split|no text in its training split)"):
        prepare(str(src), data_bpe_dir, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == []

def test_jieba_shards_keep_special_tokens_and_jieba_words(data_wordpiece_jieba_dir: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    # A jieba word not in the vocabulary is cut into characters (as RoFormer does) but stays
    # one word for whole-word masking.
    text = "中国[MASK]民。国务院总理李鹏今天上午来到北京石景山发电总厂考察"
    ids, flags = encode.encode_documents(tok, [text, "[CLS]北京"], "uint16", word_starts=True)
    assert list(ids).count(tok.mask_id) == 1 and tok.unk_id not in ids[:4]
    np.testing.assert_array_equal(ids, expected_tokens(tok, [text, "[CLS]北京"]))
    pieces, groups = tok.segment(text)
    assert "[MASK]" in pieces and len(set(groups)) < len(groups)
    enc = tok.encode_batch_raw([text], pretokenized=[pieces])[0]
    word_of_token = [groups[w] for w in enc.word_ids]
    want = [1] + [int(a != b) for a, b in zip(word_of_token, word_of_token[1:])]
    assert list(flags[:len(want)]) == want and 0 in want
    assert flags[list(ids).index(tok.mask_id)] == 1


def test_recipe_data_values_are_checked_before_anything_is_written(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from rotary.train.config import load_recipe

    bad = [({"mlm_probability": 1.5}, "data.mlm_probability must be in \\(0, 1\\), got 1.5"),
           ({"mlm_probability": 0}, "mlm_probability"), ({"val_fraction": 1.0}, "data.val_fraction"),
           ({"val_fraction": 0}, "data.val_fraction"), ({"max_documents": 0}, "data.max_documents"),
           ({"tokenizer": {"vocab_size": 0}}, "vocab_size must be positive"),
           ({"tokenizer": {"kind": "bpe", "jieba": True}}, "jieba is for the wordpiece and char"),
           ({"split_by": "sentence"}, "split_by"),
           ({"corpus": "shakespeare", "val_fraction": 0.1}, "shakespeare holds out whole works"),
           ({"corpus_options": {"split_by": "line"}}, "set data.split_by itself")]
    for data, match in bad:
        with pytest.raises(RotaryError, match=match):
            load_recipe(None, {"data": {"corpus": "peoples-daily", **data}})
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_text("some text\n" * 200)
    run = tmp_path / "run"
    assert main(["train", "--task", "masked_lm", "--data.corpus", str(src), "--data.mlm_probability", "1.5",
                 "--data.tokenizer.kind", "char", "--output-dir", str(run), "--model.preset", "tiny",
                 "--max-steps", "2", "--threads", "1", "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mlm_probability" in err[0]
    assert not run.exists()


def test_recipe_corpus_options_reach_the_tokenizer_and_prepare(tmp_path: Path) -> None:
    from rotary.data.lm import prepare_training_data
    from rotary.train.config import load_recipe
    from rotary.train.distributed import DistInfo

    jl = tmp_path / "notes.jsonl"
    jl.write_text("".join(json.dumps({"body": f"note {i}: " + "some words here " * (i % 7 + 1)}) + "\n"
                          for i in range(400)))
    cfg = load_recipe(None, {"task": "masked_lm", "output_dir": str(tmp_path / "run"), "progress": False,
                             "data": {"corpus": "hf:json", "corpus_options": {"data_files": str(jl)},
                                      "text_field": "body", "max_documents": 50, "val_fraction": 0.2,
                                      "tokenizer": {"kind": "char", "vocab_size": 100}}})
    data = prepare_training_data(cfg, DistInfo())
    fingerprint = data.meta["inputs"]["corpus"]
    assert fingerprint["data_files"] == str(jl) and fingerprint["text_field"] == "body"
    assert fingerprint["val_fraction"] == 0.2 and fingerprint["max_documents"] == 50
    assert data.meta["documents_train"] == 50 and data.meta["documents_val"] == 50
    tok_record = json.loads((tmp_path / "run" / "tokenizer" / "rotary_tokenizer.json").read_text())
    assert tok_record["trained_on"] == "hf:json"
    # split_by and other options: one document per line of a .txt file.
    txt = tmp_path / "lines.txt"
    txt.write_text("".join(f"line number {i} with text\n" for i in range(300)))
    cfg = load_recipe(None, {"output_dir": str(tmp_path / "run2"), "progress": False,
                             "data": {"corpus": str(txt), "split_by": "line",
                                      "tokenizer": {"kind": "bpe", "vocab_size": 300}}})
    data = prepare_training_data(cfg, DistInfo())
    assert data.meta["inputs"]["corpus"]["split_by"] == "line"
    assert data.meta["documents_train"] + data.meta["documents_val"] == 300


def test_recipe_with_shards_records_the_corpus_they_came_from(data_char_dir: Path, tmp_path: Path) -> None:
    from rotary.config import load_yaml, save_yaml, to_dict
    from rotary.data.lm import prepare_training_data
    from rotary.train.config import load_recipe
    from rotary.train.distributed import DistInfo

    shards = tmp_path / "pd"
    prepare("peoples-daily", data_char_dir, shards, progress=False, corpus_opts={"max_documents": 20})
    # A Shakespeare recipe whose data is replaced by People's Daily shards (`--data.shards`).
    cfg = load_recipe(None, {"task": "masked_lm", "output_dir": str(tmp_path / "run"),
                             "data": {"corpus": "shakespeare", "shards": str(shards),
                                      "tokenizer": {"path": str(data_char_dir)}}})
    prepare_training_data(cfg, DistInfo())
    save_yaml(to_dict(cfg), tmp_path / "recipe.yaml")
    recorded = load_yaml(tmp_path / "recipe.yaml")["data"]
    assert recorded["corpus"] == "peoples-daily" and recorded["shards"] == str(shards)
    assert recorded["tokenizer"]["kind"] == "char" and recorded["tokenizer"]["vocab_size"] == 1500
    # Without data.tokenizer.path the tokenizer is found where prepare recorded it.
    cfg = load_recipe(None, {"task": "masked_lm", "output_dir": str(tmp_path / "run"),
                             "data": {"shards": str(shards)}})
    data = prepare_training_data(cfg, DistInfo())
    assert data.tokenizer.hash == load_tokenizer(data_char_dir).hash
    assert Path(cfg.data.tokenizer.path).resolve() == data_char_dir.resolve()
    assert cfg.data.corpus == "peoples-daily"


@pytest.mark.parametrize("max_documents", [None, 3])
def test_the_progress_bar_ends_at_100_percent_also_with_max_documents(data_bpe_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      max_documents: int | None) -> None:
    """The bar's total was the whole corpus, so --max-documents stopped it at 17-22%."""
    text = tmp_path / "t.txt"
    text.write_text("".join(f"line {i} of a long file\n\n" for i in range(400)))
    opts = {"split_by": "paragraph"} if max_documents is None else {"split_by": "paragraph",
                                                                     "max_documents": max_documents}
    prepare(str(text), data_bpe_dir, tmp_path / "out", progress=True, corpus_opts=opts)
    frames = [f for f in re.split(r"[\r\n]", capsys.readouterr().err) if f.strip()]
    assert "100%" in frames[-1], frames[-3:]
    shown = [int(p) for f in frames for p in re.findall(r"(\d+)%", f)]
    assert all(p == 100 for p in shown) if max_documents else shown[-1] == 100


KILLED_AFTER_TRAIN = r"""
import os, signal, sys
from rotary.data import prepare as prep, write_shards

real = write_shards._write_split

def write_then_die(split, *args, **kwargs):
    stats = real(split, *args, **kwargs)
    if split == "val":  # the train split and the val split are written: die before they are named
        os.kill(os.getpid(), signal.SIGKILL)
    return stats

write_shards._write_split = write_then_die
prep.prepare(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, corpus_opts={"split_by": "paragraph"})
"""


def test_prepare_killed_part_way_leaves_no_shards_and_training_refuses_then_a_rerun_redoes_it(
        data_bpe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    text = tmp_path / "t.txt"
    text.write_text("".join(f"paragraph {i} of the text\n\n" for i in range(300)))
    out = tmp_path / "out"
    prepare(str(text), data_bpe_dir, out, progress=False, corpus_opts={"split_by": "paragraph"})
    whole = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".bin"}
    text.write_text("".join(f"changed paragraph {i}\n\n" for i in range(300)))  # a rebuild, killed
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_TRAIN, str(text), str(data_bpe_dir), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == [], visible  # neither the old shards nor the new ones look usable
    with pytest.raises(RotaryError, match="no meta.json"):
        open_shards(out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  shards: {out}\n  tokenizer:\n    path: {data_bpe_dir}\nmax_steps: 1\n"
                      f"output_dir: {tmp_path / 'run'}\nmodel:\n  preset: tiny\n")
    capsys.readouterr()
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(meta.json missing): run `rotary prepare`" in err, err
    text.write_text("".join(f"paragraph {i} of the text\n\n" for i in range(300)))
    info = prepare(str(text), data_bpe_dir, out, progress=False, corpus_opts={"split_by": "paragraph"})
    assert not info.skipped and {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".bin"} == whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the partial files were removed


def test_a_binary_corpus_leaves_no_output_directory_and_no_bar_after_the_error(data_bpe_dir: Path, tmp_path: Path,
                                                                              capsys) -> None:
    corpus = tmp_path / "random.txt"
    corpus.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    out = tmp_path / "shards"
    assert main(["prepare", "--corpus", str(corpus), "--tokenizer", str(data_bpe_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err.splitlines()[-1] and not out.exists()  # was: an empty shards/ left behind
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    assert main(["prepare", "--corpus", str(corpus), "--tokenizer", str(data_bpe_dir), "--out", str(existing),
                 "--no-progress"]) == 2
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
