"""Wikipedia dumps: a hand-written dump to exact plain text, the real enwiki sample (``enwiki-sample``,
a pinned gensim wheel fetched by pip on first use) read as a stream, and the sample through a
32k BPE, shards and two training steps on the CLI; broken dumps are one-line errors."""

from __future__ import annotations

import bz2
import hashlib
import inspect
import json
import math
import shutil
import tracemalloc
import zipfile

import pytest

from rotary import checkpoint as ckpt
from rotary import cli
from rotary.data.sources import download, enwiki_sample, load_corpus
from rotary.data.sources.wikipedia import WikiDumpCorpus, articles, dump_pages
from rotary.data.sources.wikitext import wikitext_to_text
from rotary.errors import RotaryError
from tests.dumps import page_xml, write_dump

ARTICLE = """{{Infobox river|name=Tamsa|length=264 km}}
'''Tamsa''' (also ''Tons'') is a river in [[India]], a tributary of the [[Ganges|Ganga]].<ref>{{cite book|title=Rivers \
of India|year=1990}}</ref> It is {{convert|264|km}} long.<ref name="a" />

== Course ==
[[File:Tamsa.jpg|thumb|The river at [[Prayagraj]]]]
The river flows through:
* [[Madhya Pradesh]]
* [[Uttar Pradesh]]

{| class="wikitable"
! Town !! District
|-
| Rewa || Rewa
|}
It joins the Ganga near [[Sirsa, Prayagraj|Sirsa]] &amp; [[Meja]].<!-- a comment -->

[[Category:Rivers of India]]
[[de:Tamsa]]"""
# templates, refs, the file with its caption, the table, comment, category and interlanguage link gone
TEXT = ("Tamsa (also Tons) is a river in India, a tributary of the Ganga. It is long.\n\nCourse\n\n"
        "The river flows through:\nMadhya Pradesh\nUttar Pradesh\n\nIt joins the Ganga near Sirsa & Meja.")
PAGES = [page_xml("Tons River", "#REDIRECT [[Tamsa]]", redirect="Tamsa", page_id=1),
         page_xml("Talk:Tamsa", "== Source? ==\nIs the length right? ~~~~", ns=1, page_id=2),
         page_xml("Tamsa", ARTICLE, page_id=3),
         page_xml("Tons", "#redirect [[Tamsa]]", page_id=4),  # old dumps: a redirect only by its text
         page_xml("Empty", "{{stub}}\n[[Category:Stubs]]", page_id=5)]  # nothing left once stripped


def test_a_dump_becomes_its_articles_in_plain_text(tmp_path):
    dump = write_dump(tmp_path / "enwiki-test-pages-articles.xml.bz2", PAGES)
    assert [(p.title, p.namespace, p.redirect) for p in dump_pages(dump)] == [
        ("Tons River", 0, True), ("Talk:Tamsa", 1, False), ("Tamsa", 0, False), ("Tons", 0, True), ("Empty", 0, False)]
    assert [p.title for p in articles(dump)] == ["Tamsa", "Empty"]
    for spec in (str(dump), f"wikidump:{dump}"):  # by its name, or asked for as a dump
        corpus = load_corpus(spec, val_fraction=0.0)
        assert isinstance(corpus, WikiDumpCorpus) and list(corpus.documents("train")) == ["Tamsa\n" + TEXT]
    assert list(load_corpus(str(dump), title=False, val_fraction=0.0).documents("train")) == [TEXT]
    plain = write_dump(tmp_path / "plain.xml", PAGES, compress=False)
    assert list(load_corpus(str(plain), val_fraction=0.0).documents("train")) == ["Tamsa\n" + TEXT]


def test_a_directory_of_dump_parts_is_read_part_by_part(tmp_path):
    parts = tmp_path / "enwiki"
    parts.mkdir()
    write_dump(parts / "pages-articles2.xml-p2p2.bz2", [page_xml("Beta", "'''Beta''' is second.")])
    write_dump(parts / "pages-articles1.xml-p1p1.bz2", [page_xml("Alpha", "[[Alpha]] is first.")])
    (parts / "README.txt").write_text("not a dump")
    corpus = load_corpus(f"wikidump:{parts}", val_fraction=0.0)
    assert list(corpus.documents("train")) == ["Alpha\nAlpha is first.", "Beta\nBeta is second."]
    fingerprint = corpus.fingerprint()
    assert len(fingerprint["files"]) == 2 and fingerprint["mwparserfromhell"] and fingerprint["title"] is True


def test_wikitext_keeps_prose_and_drops_furniture():
    assert wikitext_to_text("A [[:Category:Rivers|list of rivers]], [[wikt:tributary|tributaries]] "
                            "and [https://example.org a site].") == "A list of rivers, tributaries and a site."
    assert wikitext_to_text("[[Ys: The Vanished Omens]] [[fr:Ys]][[Image:Ys.png|thumb|Box art]]") == \
        "Ys: The Vanished Omens"
    assert wikitext_to_text("x<ref>note</ref> y<references /> z <math>e^x</math>.\n\n\n\nnext") == "x y z.\n\nnext"


def test_broken_dumps_are_one_line_errors(tmp_path, capsys):
    dump = bz2.compress((PAGES[2] * 40).join(["<mediawiki>", "</mediawiki>"]).encode())
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(dump[: len(dump) // 2])
    not_dump = tmp_path / "feed.xml"
    not_dump.write_text("<rss><channel><title>news</title></channel></rss>")
    cases = {cut: "the bz2 data ends early, after", not_dump: "not a MediaWiki XML dump (its root element is <rss>",
             tmp_path / "text.bz2": "not a complete MediaWiki XML dump (syntax error",
             tmp_path / "bad.bz2": "not a readable dump (Invalid data stream)"}
    (tmp_path / "text.bz2").write_text("hello, not xml")
    (tmp_path / "bad.bz2").write_bytes(b"BZh9" + b"\x00" * 64)
    for path, message in cases.items():
        with pytest.raises(RotaryError) as err:
            list(load_corpus(str(path), val_fraction=0.0).documents("train"))
        assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value), err.value
    assert cli.main(["tokenizer", "train", "--corpus", str(cut), "--kind", "bpe", "--vocab-size", "300",
                     "--out", str(tmp_path / "tok")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(RotaryError, match="corpus path does not exist"):
        load_corpus(str(tmp_path / "missing.xml.bz2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RotaryError, match="no .xml/.bz2 dump files under"):
        load_corpus(f"wikidump:{tmp_path / 'empty'}")


def test_hf_wikipedia_parquet_rows_read_their_text_column(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    texts = ["Tamsa is a river in India.", "Alpha is the first letter."]
    rows = {"id": ["1", "2"], "url": ["https://en.wikipedia.org/wiki?curid=1"] * 2, "title": ["Tamsa", "Alpha"],
            "text": texts}
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table(rows), path)  # wikimedia/wikipedia's columns: id, url, title, text
    assert list(load_corpus(str(path), val_fraction=0.0).documents("train")) == texts


def test_the_sample_download_checks_both_sha256s_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ROTARY_CACHE", str(tmp_path / "cache"))
    data = bz2.compress(("<mediawiki>" + PAGES[2] + "</mediawiki>").encode())
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(enwiki_sample.MEMBER, data)
    monkeypatch.setattr(enwiki_sample, "_run_pip", lambda dest: shutil.copy(wheel, dest / enwiki_sample.WHEEL))
    with pytest.raises(RotaryError, match="is not the pinned .* of gensim-4.4.0-cp311"):
        enwiki_sample.enwiki_sample_file()
    monkeypatch.setattr(enwiki_sample, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(enwiki_sample, "FILE_SHA256", hashlib.sha256(data).hexdigest())
    assert enwiki_sample.enwiki_sample_file().read_bytes() == data
    assert list(load_corpus("enwiki-sample", val_fraction=0.0).documents("train")) == ["Tamsa\n" + TEXT]


def test_the_sample_asks_pip_for_one_platforms_wheel_whatever_runs_rotary(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(download.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or
                        type("Done", (), {"returncode": 0})())
    enwiki_sample._run_pip(tmp_path)  # the pinned sha256 holds on any interpreter
    assert commands[0][-3:] == ["gensim==4.4.0", "-d", str(tmp_path)]
    assert " ".join(enwiki_sample.WHEEL_TAGS) in " ".join(commands[0])


def test_the_real_sample_streams_its_206_pages_into_106_articles_of_plain_text():
    path = enwiki_sample.enwiki_sample_file()  # pip downloads the pinned wheel on first use
    pages = dump_pages(path)
    assert inspect.isgenerator(pages) and next(pages).title == "AccessibleComputing"
    pages.close()
    tracemalloc.start()
    try:
        counts = {"pages": 0, "redirects": 0, "other namespaces": 0}
        for page in dump_pages(path):
            counts["pages"] += 1
            counts["redirects"] += page.redirect
            counts["other namespaces"] += page.namespace != 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts == {"pages": 206, "redirects": 100, "other namespaces": 1}  # the project page is a redirect
    assert peak < 3_000_000  # ~1.1 MB: one page at a time, not the 6.1 MB of XML
    corpus = load_corpus("enwiki-sample")
    train, val = list(corpus.train_documents()), list(corpus.val_documents())
    assert (len(train), len(val)) == (100, 6) and not set(train) & set(val)
    assert [d.split("\n", 1)[0] for d in val] == ["Algeria", "Andorra", "Affirming the consequent",
                                                   "Demographics of Angola", "Azerbaijan", "Ampere"]
    assert train[0].startswith("Anarchism\nAnarchism is a political philosophy that advocates self-governed")
    text = "\n".join(train + val)
    assert 2_800_000 < len(text) < 3_000_000
    for markup in ("{{", "}}", "[[", "]]", "<ref", "{|", "Category:", "File:", "thumb|", "'''", "&nbsp;"):
        assert markup not in text, markup


def test_a_truncated_real_dump_yields_its_first_pages_then_a_clear_error(tmp_path):
    cut = tmp_path / "enwiki-cut.xml.bz2"
    cut.write_bytes(enwiki_sample.enwiki_sample_file().read_bytes()[:600_000])  # 35%: two whole bz2 blocks
    titles = []
    with pytest.raises(RotaryError, match=r"the bz2 data ends early, after \d+ pages .*download the dump again"):
        for page in dump_pages(cut):
            titles.append(page.title)
    assert titles[:2] == ["AccessibleComputing", "Anarchism"]


def test_the_real_sample_through_a_32k_bpe_shards_and_two_training_steps(tmp_path, capsys):
    tok, shards = tmp_path / "tok", tmp_path / "shards"
    assert cli.main(["tokenizer", "train", "--corpus", "enwiki-sample", "--kind", "bpe", "--vocab-size", "32000",
                     "--out", str(tok), "--no-progress"]) == 0
    vocab = json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 32000  # 2.7M characters of train text are enough for all 31,743 merges
    assert cli.main(["prepare", "--corpus", "enwiki-sample", "--tokenizer", str(tok), "--out", str(shards),
                     "--no-progress"]) == 0
    meta = json.loads((shards / "meta.json").read_text())
    assert meta["source"] == "enwiki-sample" and meta["documents_train"] == 100 and meta["documents_val"] == 6
    run = tmp_path / "run"
    toy = ["--model.n_layer", "1", "--model.n_head", "2", "--model.d_model", "32", "--model.d_ff", "64",
           "--model.max_seq_len", "64", "--seq-len", "64", "--batch-size", "2", "--global-batch-tokens", "128",
           "--max-steps", "2", "--warmup-steps", "0", "--eval-interval", "2", "--eval-batches", "1",
           "--checkpoint-interval", "2", "--precision", "fp32", "--compile", "false", "--tensorboard", "false",
           "--progress", "false", "--threads", "1"]
    capsys.readouterr()
    assert cli.main(["train", "wikipedia-bpe32k", "--data.shards", str(shards), "--output-dir", str(run), *toy]) == 0
    config = json.loads((ckpt.latest_checkpoint(run) / "config.json").read_text())
    model = config["model"]  # the recipe's GPT-2-small kind of block at toy width, the 32k vocabulary
    assert (model["vocab_size"], model["n_layer"], model["mlp"], model["norm"], model["position"]) == (
        32000, 1, "gelu", "layernorm", "rope")
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in evals if r["kind"] == "eval"][-1]
    assert last["step"] == 2 and math.isfinite(last["loss"]) and last["loss"] < math.log(32000) + 1
