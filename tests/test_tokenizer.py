"""Tokenizers: kinds, special tokens, exact BPE round trips, HF loading, jieba surviving save/load."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotary.cli import main
from rotary.errors import RotaryError
from rotary.tokenizer import load_tokenizer, train_tokenizer


@functools.lru_cache(maxsize=4)
def _cached_load(path: str):
    return load_tokenizer(path)


CHINESE = "北京是中国的首都！国务院总理李鹏今天上午来到北京石景山发电总厂考察，向广大企业职工表示节日的祝贺。"


@pytest.fixture(scope="module")
def bpe(data_bpe_dir: Path):
    return load_tokenizer(data_bpe_dir)


def test_bpe_special_tokens_and_vocab(bpe) -> None:
    assert bpe.kind == "bpe" and bpe.vocab_size == 1024
    assert bpe.id_to_token(bpe.eos_id) == "<|endoftext|>"
    assert bpe.pad_id is None and bpe.mask_id is None and bpe.cls_id is None
    assert bpe.special_ids == [bpe.eos_id]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_bpe_decode_round_trips_any_text_exactly(data_bpe_dir: Path, text: str) -> None:
    tok = _cached_load(str(data_bpe_dir))
    if "<|endoftext|>" in text:
        return  # the special token's spelling is reserved
    assert tok.decode(tok.encode(text)) == text


def test_bpe_round_trip_on_real_text(bpe) -> None:
    text = "ROMEO.\n  But soft! what light through yonder window breaks?\n\n\tCafé — naïve ☃ 中文 🙂\r\n"
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_batch([text, "x"]) == [bpe.encode(text), bpe.encode("x")]


def test_saved_dir_loads_in_transformers(data_bpe_dir: Path, data_wordpiece_jieba_dir: Path, data_char_dir: Path,
                                         bpe) -> None:
    transformers = pytest.importorskip("transformers")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "rotary_tokenizer.json"):
        assert (data_bpe_dir / name).is_file()
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(data_bpe_dir))
    text = "To be, or not to be: that is the question."
    assert hf(text)["input_ids"] == bpe.encode(text)
    assert hf.eos_token == "<|endoftext|>"
    assert hf.decode(bpe.encode(text)) == text

    char = load_tokenizer(data_char_dir)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(data_char_dir))
    assert hf(CHINESE)["input_ids"] == char.encode_for_model([CHINESE])[0].ids
    assert (hf.pad_token_id, hf.mask_token_id, hf.cls_token_id, hf.sep_token_id) == (
        char.pad_id, char.mask_id, char.cls_id, char.sep_id)


def test_mlm_special_tokens(data_wordpiece_jieba_dir: Path, data_char_dir: Path) -> None:
    for d in (data_wordpiece_jieba_dir, data_char_dir):
        tok = load_tokenizer(d)
        assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
        assert tok.eos_id == tok.sep_id
        assert tok.special_ids == [0, 1, 2, 3, 4]
        enc = tok.encode_for_model(["北京"], ["上海"])[0]
        assert enc.ids[0] == tok.cls_id and enc.ids[-1] == tok.sep_id
        assert enc.type_ids[0] == 0 and enc.type_ids[-1] == 1


def test_char_tokenizer_is_one_token_per_character(data_char_dir: Path) -> None:
    tok = load_tokenizer(data_char_dir)
    text = "中国人民 共和国"
    ids = tok.encode(text)
    assert [tok.id_to_token(i) for i in ids] == list("中国人民共和国")
    assert tok.decode(ids) == "中国人民共和国"


def test_jieba_pre_tokenization_survives_save_and_load(data_wordpiece_jieba_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(data_wordpiece_jieba_dir)
    assert tok.jieba
    tokens = [tok.id_to_token(i) for i in tok.encode(CHINESE)]
    # jieba's words reach WordPiece whole: multi-character tokens exist.
    assert "北京" in tokens and any(len(t.lstrip("#")) > 1 for t in tokens)

    tok.save(tmp_path / "copy")
    record = json.loads((tmp_path / "copy" / "rotary_tokenizer.json").read_text())
    assert record["pre_tokenizer"] == "jieba"
    again = load_tokenizer(tmp_path / "copy")
    assert again.jieba and again.hash == tok.hash
    texts = [CHINESE, "我们十分关注最近一个时期一些国家和地区发生的金融风波。", "Hello 世界 2024年"]
    assert again.encode_batch(texts) == tok.encode_batch(texts)
    assert [e.ids for e in again.encode_for_model(texts, max_len=16)] == \
        [e.ids for e in tok.encode_for_model(texts, max_len=16)]

    # What HF would have silently lost: tokenizer.json alone (all that PreTrainedTokenizerFast
    # reads) cannot carry a Python pre-tokenizer, and without jieba the ids differ.
    from tokenizers import Tokenizer as HFTokenizer

    bare = HFTokenizer.from_file(str(tmp_path / "copy" / "tokenizer.json"))
    assert bare.encode(CHINESE, add_special_tokens=False).ids != tok.encode(CHINESE)
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "copy"))
    assert hf(CHINESE, add_special_tokens=False)["input_ids"] != tok.encode(CHINESE)


def test_hash_is_stable_and_detects_edits(data_bpe_dir: Path, data_char_dir: Path, tmp_path: Path) -> None:
    a = load_tokenizer(data_bpe_dir)
    assert load_tokenizer(data_bpe_dir).hash == a.hash
    assert load_tokenizer(data_char_dir).hash != a.hash
    copy = tmp_path / "edited"
    shutil.copytree(data_bpe_dir, copy)
    cfg = json.loads((copy / "tokenizer.json").read_text())
    cfg["added_tokens"][0]["content"] = "<|eot|>"
    (copy / "tokenizer.json").write_text(json.dumps(cfg))
    with pytest.raises(RotaryError, match="does not match the hash"):
        load_tokenizer(copy)


def test_training_is_deterministic_and_uses_train_split_only(tmp_path: Path) -> None:
    a = train_tokenizer("peoples-daily", "char", 600, tmp_path / "a", max_documents=50)
    b = train_tokenizer("peoples-daily", "char", 600, tmp_path / "b", max_documents=50)
    assert a.hash == b.hash
    assert json.loads((tmp_path / "a" / "rotary_tokenizer.json").read_text())["trained_on"] == "peoples-daily"


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(RotaryError, match="too small"):
        train_tokenizer("shakespeare", "bpe", 100, None, max_documents=1)
    with pytest.raises(RotaryError, match="wordpiece and char"):
        train_tokenizer("shakespeare", "bpe", 1000, None, jieba=True, max_documents=1)
    with pytest.raises(RotaryError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer("shakespeare", "sentencepiece", 1000, None)
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "   "}\n\n')
    with pytest.raises(RotaryError, match="no text"):
        train_tokenizer(str(blank), "bpe", 300, None, val_fraction=0.0)
    with pytest.raises(RotaryError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(RotaryError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "emptydir")


def test_cli_tokenizer_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tok"
    code = main(["tokenizer", "train", "--corpus", "peoples-daily", "--kind", "wordpiece", "--jieba",
                 "--vocab-size", "800", "--out", str(out), "--max-documents", "40", "--no-progress"])
    assert code == 0
    assert "wordpiece tokenizer" in capsys.readouterr().out
    assert load_tokenizer(out).jieba
    assert main(["tokenizer", "train", "--corpus", "shakespeare", "--kind", "bpe", "--vocab-size", "10",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
