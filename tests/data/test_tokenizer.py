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


# --------------------------------------------------------------------------------------------
# special tokens in the text; jieba = RoFormer's segmentation, so the HF export matches
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece_plain(tmp_path_factory: pytest.TempPathFactory):
    return train_tokenizer("peoples-daily", "wordpiece", 1500, tmp_path_factory.mktemp("wp") / "tok",
                           max_documents=60)


@pytest.fixture(scope="module")
def char_jieba(tmp_path_factory: pytest.TempPathFactory):
    return train_tokenizer("peoples-daily", "char", 1500, tmp_path_factory.mktemp("cj") / "tok", jieba=True,
                           max_documents=60)


def test_special_tokens_in_text_are_never_split(bpe, data_wordpiece_jieba_dir: Path, data_char_dir: Path,
                                                wordpiece_plain, char_jieba) -> None:
    jieba_wp = load_tokenizer(data_wordpiece_jieba_dir)
    # The case: [MASK] inside Chinese text is one [MASK], not three [UNK].
    ids = jieba_wp.encode("中国[MASK]民")
    assert ids.count(jieba_wp.mask_id) == 1 and jieba_wp.unk_id not in ids
    assert ids == jieba_wp.encode("中国") + [jieba_wp.mask_id] + jieba_wp.encode("民")
    for tok in (jieba_wp, load_tokenizer(data_char_dir), wordpiece_plain, char_jieba):
        for special in ("[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            sid = tok.token_to_id(special)
            for text, head, tail in (("中国" + special + "人民", "中国", "人民"), (special + "北京", "", "北京"),
                                     ("上海 " + special, "上海", "")):
                ids = tok.encode(text)
                assert ids.count(sid) == 1, (tok, text, ids)
                assert ids == tok.encode(head) + [sid] + tok.encode(tail), (tok, text)
        assert tok.encode("[MASK][MASK]") == [tok.mask_id] * 2
        assert tok.encode_for_model(["北京[MASK]"])[0].ids == [tok.cls_id, *tok.encode("北京"), tok.mask_id, tok.sep_id]
    eot = bpe.token_to_id("<|endoftext|>")
    ids = bpe.encode("the end<|endoftext|>ROMEO.")
    assert ids.count(eot) == 1 and ids == bpe.encode("the end") + [eot] + bpe.encode("ROMEO.")


def _peoples_daily_docs(n: int = 50) -> list[str]:
    from rotary.data.sources import load_corpus

    # Articles after the 300 the fixture tokenizer was trained on: words it has not all seen.
    docs = list(load_corpus("peoples-daily", max_documents=300 + n).train_documents())[300:]
    assert len(docs) == n
    return docs


def test_jieba_wordpiece_loads_in_transformers_with_rotarys_ids(data_wordpiece_jieba_dir: Path,
                                                               tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("rjieba")
    mixed = ["中国[MASK]民", "Hello World, c++ 与 3.5亿元；Café\u3000naïve[SEP]x", "  \n\t北京  "]
    docs = _peoples_daily_docs(50) + mixed
    lower = train_tokenizer("peoples-daily", "wordpiece", 2000, tmp_path / "lower", jieba=True,
                            lowercase=True, max_documents=100)
    for tok_dir in (data_wordpiece_jieba_dir, tmp_path / "lower"):
        tok = load_tokenizer(tok_dir)
        assert json.loads((tok_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "RoFormerTokenizer"
        for hf in (transformers.AutoTokenizer.from_pretrained(str(tok_dir)),
                   transformers.RoFormerTokenizerFast.from_pretrained(str(tok_dir)), tok.to_hf()):
            ours = tok.encode_batch(docs)
            assert hf(docs, add_special_tokens=False)["input_ids"] == ours
            assert hf(docs)["input_ids"] == [e.ids for e in tok.encode_for_model(docs)]
            pairs = hf(docs[:10], docs[10:20], truncation="longest_first", max_length=64)
            assert pairs["input_ids"] == [e.ids for e in tok.encode_for_model(docs[:10], docs[10:20], max_len=64)]
            assert hf.mask_token_id == tok.mask_id
            assert hf.decode(ours[0], skip_special_tokens=True) == tok.decode(ours[0])
    assert lower.encode("HELLO 北京") == lower.encode("hello 北京")


def test_jieba_char_tokenizer_loads_in_pretrained_tokenizer_fast(char_jieba, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    char_jieba.save(tmp_path / "cj")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "cj"))
    docs = _peoples_daily_docs(50) + ["中国[MASK]民 Hello"]
    assert hf(docs, add_special_tokens=False)["input_ids"] == char_jieba.encode_batch(docs)


def test_jieba_record_names_the_segmenter_and_an_old_one_loads_as_new(data_wordpiece_jieba_dir: Path,
                                                                      tmp_path: Path) -> None:
    import hashlib

    tok = load_tokenizer(data_wordpiece_jieba_dir)
    record = json.loads((data_wordpiece_jieba_dir / "rotary_tokenizer.json").read_text())
    assert record["segmenter"] == "rjieba" and record["hash"] == tok.hash
    # A directory written before rjieba: format 1, no segmenter, hashed without it.
    old = tmp_path / "old"
    shutil.copytree(data_wordpiece_jieba_dir, old)
    text = (old / "tokenizer.json").read_text()
    h = hashlib.sha256()
    h.update(json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
    h.update(json.dumps({"kind": "wordpiece", "pre_tokenizer": "jieba"}, sort_keys=True).encode())
    legacy_hash = h.hexdigest()[:16]
    record.pop("segmenter")
    record.update(format=1, hash=legacy_hash)
    (old / "rotary_tokenizer.json").write_text(json.dumps(record))
    again = load_tokenizer(old)
    # It now segments with rjieba, so it is another tokenizer than the one its shards were made with.
    assert again.jieba and again.hash == tok.hash != legacy_hash
    assert again.encode(CHINESE) == tok.encode(CHINESE)
    again.save(tmp_path / "resaved")
    assert load_tokenizer(tmp_path / "resaved").hash == tok.hash
    record["hash"] = "0" * 16
    (old / "rotary_tokenizer.json").write_text(json.dumps(record))
    with pytest.raises(RotaryError, match="does not match the hash"):
        load_tokenizer(old)


def test_a_transformers_tokenizer_folder_names_its_own_eos_and_pad(tmp_path):
    """A Llama-style folder (</s>, no rotary record) gives rotary the EOS that generate stops at."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from rotary.tokenizer import load_tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<unk>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_id == 2 and tok.pad_id == 0
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(RotaryError, match=r"no <\|endoftext\|> token"):
        _ = load_tokenizer(tmp_path).eos_id
