"""Fine-tuning, classification and evaluation: `rotary finetune`, `classify`, `eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rotary.cli import main
from rotary.errors import RotaryError


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory) -> Path:
    """A small slice of the built-in chinese-sentiment reviews as train/val/test .jsonl files."""
    from rotary.data.sources import load_labelled

    data = load_labelled("chinese-sentiment")
    out = tmp_path_factory.mktemp("sentiment")
    rng = np.random.default_rng(0)
    for split, n in (("train", 800), ("val", 120), ("test", 200)):
        rows = data.split(split)
        pick = rng.permutation(len(rows))[:n]
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in pick:
                f.write(json.dumps({"text": rows[i].text, "label": data.label_names[rows[i].label]},
                                   ensure_ascii=False) + "\n")
    return out


def finetune_args(run: Path, corpus: Path, tokenizer: Path, *extra: str) -> list[str]:
    return ["finetune", "--from", "none", "--output-dir", str(run), "--task", "classification",
            "--data.corpus", str(corpus), "--data.tokenizer.path", str(tokenizer), "--model.preset", "tiny",
            "--model.max_seq_len", "64", "--model.type_vocab_size", "2", "--pooling", "mean", "--max-steps", "200",
            "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "10", "--weight-decay", "0.01",
            "--eval-interval", "100", "--eval-batches", "none", "--checkpoint-interval", "100",
            "--best-metric", "accuracy",
            "--progress", "false", "--tensorboard", "false", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def classifier_run(sentiment_dir, data_char_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("clf") / "run"
    assert main(finetune_args(run, sentiment_dir, data_char_dir)) == 0
    return run


def test_a_classifier_from_scratch_learns_sentiment_above_chance(classifier_run):
    test = json.loads((classifier_run / "test_results.json").read_text())
    assert test["examples"] == 200 and test["accuracy"] > 0.62, test  # majority class is ~0.5
    lo, hi = test["accuracy_95ci"]
    assert lo < test["accuracy"] < hi
    config = json.loads((classifier_run / "best" / "config.json").read_text())
    assert config["task"] == "classification" and config["label_names"] == test["label_names"]
    assert config["pooling"] == "mean" and config["num_labels"] == 2
    evals = [json.loads(line) for line in (classifier_run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [e["step"] for e in evals] == [100, 200] and all("macro_f1" in e and "examples" in e for e in evals)


def test_eval_of_the_classifier_matches_its_test_score_and_a_hand_count(classifier_run, sentiment_dir, capsys):
    assert main(["eval", str(classifier_run), "--corpus", str(sentiment_dir), "--split", "test"]) == 0
    out = capsys.readouterr().out
    record = json.loads((classifier_run / "eval.json").read_text())
    test = json.loads((classifier_run / "test_results.json").read_text())
    assert record["accuracy"] == pytest.approx(test["accuracy"]) and "macro_f1" in out
    confusion = np.asarray(record["confusion"])
    assert confusion.sum() == 200 and np.trace(confusion) / 200 == pytest.approx(record["accuracy"])
    assert (classifier_run / "confusion.png").stat().st_size > 1000
    # against scikit-learn's definitions, from the same predictions
    sklearn = pytest.importorskip("sklearn.metrics")
    from rotary.data.sources import load_labelled
    from rotary.evaluation import classifier_predictions
    from rotary.infer.pretrained import load

    examples = load_labelled(str(sentiment_dir)).split("test")
    preds = classifier_predictions(load(classifier_run, device="cpu"), examples, pair=False)
    labels = [e.label for e in examples]
    assert record["macro_f1"] == pytest.approx(sklearn.f1_score(labels, preds, average="macro"))
    assert record["accuracy"] == pytest.approx(sklearn.accuracy_score(labels, preds))


def test_finetune_and_eval_show_the_char_tfidf_bar_fitted_on_the_same_splits(classifier_run, sentiment_dir, capsys,
                                                                             monkeypatch, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from rotary.baselines import C_GRID, compare_line
    from rotary.data.sources import load_labelled

    bar = json.loads((classifier_run / "test_results.json").read_text())["baseline"]
    data = load_labelled(str(sentiment_dir))
    train, val, test = (data.split(s) for s in ("train", "val", "test"))
    # recomputed by hand: fitted on train only, C picked on val, scored on test
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True).fit([e.text for e in train])

    def fitted(c):
        return LogisticRegression(C=c, max_iter=2000).fit(vec.transform([e.text for e in train]),
                                                          [e.label for e in train])

    def accuracy(model, split):
        return float(np.mean(model.predict(vec.transform([e.text for e in split])) == [e.label for e in split]))

    from sklearn.metrics import f1_score

    val_f1 = {c: f1_score([e.label for e in val], fitted(c).predict(vec.transform([e.text for e in val])),
                          average="macro") for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (val_f1[c], -C_GRID.index(c)))
    assert bar["C"] == best_c and bar["accuracy"] == pytest.approx(accuracy(fitted(best_c), test))
    assert bar["examples"] == 200 and 0.6 < bar["accuracy"] < 1
    monkeypatch.setenv("ROTARY_BASELINE_CACHE", str(tmp_path / "cache" / "baselines"))  # afresh, then cached
    for _ in range(2):
        assert main(["eval", str(classifier_run), "--corpus", str(sentiment_dir), "--split", "test"]) == 0
        out = capsys.readouterr().out
        record = json.loads((classifier_run / "eval.json").read_text())
        assert record["baseline"]["accuracy"] == pytest.approx(bar["accuracy"])
        assert compare_line(record["accuracy"], record["baseline"]) in out
    assert len(list((tmp_path / "cache" / "baselines").iterdir())) == 1
    points = 100 * (record["accuracy"] - bar["accuracy"])
    assert (f"beats it by {points:+.1f} points" if points > 0 else f"loses by {-points:.1f} points") in out
    assert main(["eval", str(classifier_run), "--corpus", str(sentiment_dir), "--split", "test",
                 "--no-baseline"]) == 0
    assert "TF-IDF" not in capsys.readouterr().out



def _toy_examples(pairs):
    from rotary.data.sources.labelled import Example

    return [Example(text, None, label) for text, label in pairs]


def test_baseline_tie_on_val_keeps_the_smallest_c():
    # every C separates this data perfectly: a tie on val macro-F1 keeps the first (most
    # regularised) C of the grid, as the finetune test's by-hand recomputation assumes
    from rotary.baselines import C_GRID, fit_char_tfidf_lr

    train = _toy_examples([("aaaa", 0), ("aaab", 0), ("aaba", 0), ("zzzz", 1), ("zzzy", 1), ("zzyz", 1)])
    val = _toy_examples([("abaa", 0), ("zyzz", 1)])
    predict, c = fit_char_tfidf_lr(train, val, 2)
    assert predict(val) == [0, 1] and c == C_GRID[0]


def test_baseline_cache_key_covers_the_scored_split_and_the_labels(tmp_path, monkeypatch):
    # the cache is keyed by all three splits: scoring val then test on the same train/val must
    # not return val's numbers for test, and relabelled data must not reuse the old result
    from rotary.baselines import baseline

    monkeypatch.setenv("ROTARY_BASELINE_CACHE", str(tmp_path / "baselines"))
    train = _toy_examples([("aaaa", 0), ("aaab", 0), ("zzzz", 1), ("zzzy", 1)])
    val = _toy_examples([("abaa", 0), ("zyzz", 1)])
    test = _toy_examples([("aaaa", 0), ("zzzz", 1), ("zzzz", 1)])
    assert baseline(train, val, val, 2)["examples"] == 2
    assert baseline(train, val, test, 2)["examples"] == 3
    flipped = _toy_examples([("aaaa", 1), ("zzzz", 0), ("zzzz", 0)])
    assert baseline(train, val, flipped, 2)["accuracy"] == 0.0
    assert len(list((tmp_path / "baselines").iterdir())) == 3


def test_classify_prints_labels_and_probabilities_and_writes_jsonl(classifier_run, tmp_path, capsys):
    texts = ["--text", "这家酒店很干净，服务也好", "--text", "太差了，再也不来"]
    assert main(["classify", str(classifier_run), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "很好"}\n{"text": "很差"}\n', encoding="utf-8")
    assert main(["classify", str(classifier_run), "--input", str(src), "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    from rotary.infer.pretrained import load

    direct = load(classifier_run, device="cpu").classify(["很好", "很差"])
    assert [r["label"] for r in direct] == [r["label"] for r in rows]


def test_classify_batches_plain_lines_or_jsonl_to_stdout_one_row_per_line(classifier_run, tmp_path, capsys):
    from rotary.infer.pretrained import load

    texts = ["很好", "很差"]
    expected = dict(zip(texts, load(classifier_run, device="cpu").classify(texts)))
    src = tmp_path / "in.txt"
    src.write_text("很好\n\n很差\n", encoding="utf-8")  # a blank line in the middle keeps its row
    assert main(["classify", str(classifier_run), "--input", str(src), "--checkpoint", "best", "--no-verify"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3] and [r["text"] for r in rows] == ["很好", None, "很差"]
    assert rows[1] == {"id": 2, "text": None, "skipped": "blank line"} and "1 blank line" in err
    for r in (rows[0], rows[2]):
        assert r["label"] == expected[r["text"]]["label"]
        assert r["probabilities"] == pytest.approx(expected[r["text"]]["probabilities"])
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"id": "a-7", "text": "很差"}\n{"text": "很好"}\n', encoding="utf-8")
    assert main(["classify", str(classifier_run), "--input", str(jsonl), "--output", str(tmp_path / "o.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [("a-7", "很差", expected["很差"]["label"]),
                                                             (2, "很好", expected["很好"]["label"])]



def test_batch_rows_strip_crlf_keep_falsy_ids_and_trust_the_txt_suffix(tmp_path):
    # a file saved on Windows must not leave "\r" on every text (it would be classified as part
    # of the text); a JSON id of 0 or "" is the caller's id, not a missing one; and a .txt file is
    # plain text even when its first line happens to be a JSON object
    from rotary.infer.batch_io import read_rows

    crlf = tmp_path / "win.txt"
    crlf.write_bytes("很好\r\n\r\n很差\r\n".encode())
    rows = read_rows(str(crlf))
    assert [(r.id, r.text) for r in rows] == [(1, "很好"), (2, None), (3, "很差")]
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"id": 0, "text": "a"}\n{"id": "", "text": "b"}\n{"text": "c"}\n', encoding="utf-8")
    assert [r.id for r in read_rows(str(ids))] == [0, "", 3]
    txt = tmp_path / "notes.txt"
    txt.write_text('{"text": "x"}\nplain\n', encoding="utf-8")
    assert [r.text for r in read_rows(str(txt))] == ['{"text": "x"}', "plain"]


def test_stdin_format_is_detected_from_the_first_non_blank_line(monkeypatch):
    # stdin has no suffix to go by: a JSON Lines stream that opens with a blank line is still
    # JSON Lines (its blank line keeps its row), not plain text with braces in it
    import io

    from rotary.infer.batch_io import read_rows

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO('\n{"id": "k", "text": "很好"}\n'.encode())))
    rows = read_rows("-")
    assert [(r.id, r.text) for r in rows] == [(1, None), ("k", "很好")]


def test_a_lone_carriage_return_inside_a_line_is_text_not_a_line_break(tmp_path, monkeypatch):
    # text mode reads "\r" as a line end: row 2 of the output would then answer half of line 1
    import io

    from rotary.infer.batch_io import read_rows

    src = tmp_path / "cr.txt"
    src.write_bytes("好\r的\n差\r\n".encode())
    assert [(r.id, r.text) for r in read_rows(str(src))] == [(1, "好\r的"), (2, "差")]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("好\r的\n差\n".encode())))
    assert [r.text for r in read_rows("-")] == ["好\r的", "差"]


def test_classification_errors_are_one_line(classifier_run, tmp_path, capsys):
    code = main(["classify", str(classifier_run), "--text", "a"])
    assert code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n', encoding="utf-8")
    for argv, needle in (
        (["classify", str(classifier_run), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")], "text"),
        (["classify", str(classifier_run), "--text", "a", "--text-pair", "b", "--text-pair", "c"], "one pair"),
        (["classify", str(classifier_run)], "--text"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rotary: error:") and needle in err[0], err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.fixture(scope="module")
def tiny_mlm(data_char_dir, tmp_path_factory):
    """A masked-LM run of 2 steps: a backbone to fine-tune from."""
    from rotary.train.loop import train
    from tests.train_support import make_recipe

    mlm = make_recipe(tmp_path_factory.mktemp("mlm") / "mlm", corpus=Path("peoples-daily"), tokenizer=data_char_dir,
                      task="masked_lm", model={"preset": "tiny", "max_seq_len": 32}, max_steps=2, eval_interval=2,
                      checkpoint_interval=2, data={"corpus": "peoples-daily", "max_documents": 30,
                                                   "tokenizer": {"path": str(data_char_dir)}})
    train(mlm)
    return mlm


def test_finetune_needs_no_recipe_and_sizes_its_steps_from_the_data(tiny_mlm, sentiment_dir, tmp_path, monkeypatch,
                                                                     capsys):
    """`rotary finetune --from RUN --data.corpus my.jsonl`: classification implied, 3 epochs of the
    user's own file, an evaluation and a checkpoint every epoch, best/ by accuracy, the test scored."""
    # the slice's rows were split by the same hash: take some of each split, as a user's file mixes them
    rows = [r for split, n in (("train", 70), ("val", 15), ("test", 15))
            for r in (sentiment_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    corpus = tmp_path / "reviews.jsonl"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--from", str(tiny_mlm.run_dir), "--data.corpus", str(corpus),
                 "--progress", "false", "--tensorboard", "false", "--threads", "1"]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "finetune-reviews"
    recipe = (run / "recipe.yaml").read_text()
    assert "task: classification" in recipe and "best_metric: accuracy" in recipe
    from rotary.data.sources import load_labelled

    n_train = len(load_labelled(str(corpus)).split("train"))
    per_epoch = math.ceil(n_train / 16)
    evals = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals == [per_epoch, 2 * per_epoch, 3 * per_epoch], (n_train, evals)
    assert json.loads((run / "best" / "trainer_state.json").read_text())["best_metric"] == "accuracy"
    assert json.loads((run / "test_results.json").read_text())["examples"] > 0
    out = capsys.readouterr().out  # the bar beside rotary's own test accuracy
    assert "test, char 1-3-gram TF-IDF + LR on the same splits (C " in out and "points" in out, out
    # --max-steps wins over the epochs; --epochs sets another count
    assert main(["finetune", "--from", str(tiny_mlm.run_dir), "--data.corpus", str(corpus), "--max-steps", "2",
                 "--output-dir", "runs/two", "--progress", "false", "--tensorboard", "false"]) == 0
    assert max(json.loads(x)["step"] for x in (tmp_path / "runs/two/metrics.jsonl").read_text().splitlines()) == 2
    # epochs is a fine-tune's: an LM recipe refuses it in one line
    capsys.readouterr()
    assert main(["train", "demo", "--epochs", "2", "--output-dir", "runs/lm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs" in err[0] and not (tmp_path / "runs/lm").exists(), err


def test_finetune_from_a_masked_lm_starts_from_its_backbone(tiny_mlm, data_char_dir, sentiment_dir, tmp_path):
    from rotary.run_source import load_model
    from rotary.tasks import get_task
    from rotary.train.finetune import load_backbone

    mlm = tiny_mlm
    pretrained, ckpt_dir = load_model(mlm.run_dir)
    clf = get_task("classification").build_model(pretrained.config, {"num_labels": 2})
    load_backbone(clf, ckpt_dir / "model.safetensors")
    for (name, a), (_, b) in zip(pretrained.backbone.state_dict().items(), clf.backbone.state_dict().items()):
        assert torch.equal(a, b), name
    # and through the verb: 2 steps from the MLM run
    run = tmp_path / "ft"
    args = finetune_args(run, sentiment_dir, data_char_dir)
    args[args.index("--from") + 1] = str(mlm.run_dir)
    args = [a for a in args if a not in ("--model.preset", "tiny", "--model.max_seq_len", "64",
                                         "--model.type_vocab_size", "2")]
    args[args.index("--max-steps") + 1] = "2"
    args[args.index("--eval-interval") + 1] = "2"
    assert main(args) == 0
    assert "backbone from" in (run / "train.log").read_text()


def test_a_decoder_classifies_with_its_last_token(data_char_dir, sentiment_dir, tmp_path):
    """Fine-tuning from a causal LM run: LlamaForSequenceClassification's layout (last real token,
    a bias-free score), learning above chance; the saved classifier pools as its training did."""
    from rotary.infer.pretrained import load
    from rotary.train.loop import train
    from tests.train_support import make_recipe

    lm = make_recipe(tmp_path / "lm", tokenizer=data_char_dir, model={"preset": "tiny", "max_seq_len": 64},
                     max_steps=2, checkpoint_interval=2,
                     data={"corpus": "peoples-daily", "max_documents": 30, "tokenizer": {"path": str(data_char_dir)}})
    train(lm)
    run = tmp_path / "ft"
    args = finetune_args(run, sentiment_dir, data_char_dir)
    args[args.index("--from") + 1] = str(lm.run_dir)
    args = [a for a in args if a not in ("--model.preset", "tiny", "--model.max_seq_len", "64",
                                         "--model.type_vocab_size", "2", "--pooling", "mean")]
    assert main(args) == 0
    assert "decoder backbone from" in (run / "train.log").read_text()
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["pooling"] == "last" and config["model"]["causal"] is True
    test = json.loads((run / "test_results.json").read_text())
    assert test["accuracy"] > 0.6, test  # majority class is ~0.5
    pre = load(run)
    model = pre.model
    assert not hasattr(model, "out_proj") and model.score.bias is None
    # the logits of a padded batch: each row's own last token, as the row alone gives
    texts = ["很好，非常满意", "太差了，质量不好，再也不买了"]
    together = pre.classify(texts)
    alone = [pre.classify([t])[0] for t in texts]
    for a, b in zip(together, alone):
        assert a["label"] == b["label"]
        for name in a["probabilities"]:
            assert a["probabilities"][name] == pytest.approx(b["probabilities"][name], abs=1e-5)


def test_finetune_refuses_what_cannot_be_a_backbone(tmp_path, capsys, sentiment_dir, data_char_dir):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "bert"}')
    for source, needle in ((tmp_path / "nope", "no such run"), (hf, "convert it first")):
        args = finetune_args(tmp_path / "ft", sentiment_dir, data_char_dir)
        args[args.index("--from") + 1] = str(source)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "ft").exists()


# -- rotary eval for language models: the counting is checked by hand -----------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    from rotary.model import CausalLM, ModelConfig

    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=50, d_model=32, n_layer=2, n_head=2, max_seq_len=64)).eval()


@torch.no_grad()
def per_token_losses(model, tokens: np.ndarray) -> torch.Tensor:
    """Loss of each target j = 1..n-1 with the whole prefix as context (one forward pass)."""
    x = torch.from_numpy(tokens.astype(np.int64))[None]
    logits = model(x)[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")


@pytest.mark.parametrize("n,seq_len,stride", [(50, 16, 16), (50, 16, 4), (50, 16, 1), (17, 16, 5), (40, 64, 8)])
def test_sliding_window_scores_every_token_once(tiny_lm, n, seq_len, stride):
    from rotary.evaluation import causal_lm_metrics

    tokens = np.random.default_rng(n + stride).integers(0, 50, n)
    m = causal_lm_metrics(tiny_lm, tokens, seq_len=seq_len, stride=stride, bytes_total=1000, batch_size=3)
    assert m["tokens_scored"] == n - 1
    # by hand: target j is scored in the first window that reaches it, with that window's context
    total, b, done = 0.0, 0, 0
    while done < n - 1:
        hi = min(b + seq_len, n - 1)
        losses = per_token_losses(tiny_lm, tokens[b:hi + 1])  # targets b+1..hi
        total += float(losses[done - b:].sum())
        done, b = hi, b + stride
    assert m["loss"] == pytest.approx(total / (n - 1), rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(total / math.log(2) / 1000, rel=1e-5)
    if seq_len >= n - 1:  # one window: the full-context loss
        assert m["loss"] == pytest.approx(float(per_token_losses(tiny_lm, tokens).mean()), rel=1e-5)


class ContextCountingLM(torch.nn.Module):
    """A 'model' for which context helps by construction: the loss of a scored position is
    1 / (tokens it reads). Fed the tokens 0..n-1 (each id its own position), it checks that every
    scored position reads the contiguous tokens before its target, and records (target, context)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.scored: list[tuple[int, int]] = []

    def forward(self, x, targets, return_stats):
        loss = 0.0
        for row_x, row_y in zip(x.tolist(), targets.tolist()):
            for p, target in enumerate(row_y):
                if target == -100:
                    continue
                assert row_x[: p + 1] == list(range(target - p - 1, target)), "not the tokens before the target"
                self.scored.append((target, p + 1))
                loss += 1.0 / (p + 1)
        return torch.tensor([loss, float(len([t for r in targets.tolist() for t in r if t != -100])), 0.0],
                            dtype=torch.float64)


@pytest.mark.parametrize("n,seq_len,stride", [(50, 16, 4), (50, 16, 1), (50, 16, 15), (17, 16, 5), (40, 8, 3)])
def test_sliding_window_with_a_small_stride_has_more_context_and_a_bad_stride_is_refused(n, seq_len, stride):
    """Each target once, with the context its window gives it: t - b tokens in the first window
    (start b, every ``stride`` tokens) that reaches it, so after the first window at least
    seq_len - stride + 1; a model that gains from context scores lower than without overlap."""
    from rotary.evaluation import causal_lm_metrics

    tokens = np.arange(n)
    got = {}
    for s in (stride, seq_len):
        model = ContextCountingLM()
        got[s] = causal_lm_metrics(model, tokens, seq_len=seq_len, stride=s, bytes_total=100, batch_size=3)
        contexts = dict(model.scored)
        assert sorted(t for t, _ in model.scored) == list(range(1, n))  # every target once
        # by hand: the first window start b (a multiple of s) with b + seq_len >= t scores target t
        want = {t: t - next(b for b in range(0, n, s) if min(b + seq_len, n - 1) >= t) for t in range(1, n)}
        assert contexts == want
        assert all(c >= min(t, seq_len - s + 1) for t, c in contexts.items())
        assert got[s]["loss"] == pytest.approx(sum(1 / c for c in want.values()) / (n - 1), rel=1e-12)
    if n - 1 > seq_len:  # more than one window: the overlap gives the later targets more context
        assert got[stride]["loss"] < got[seq_len]["loss"]
    tiny = ContextCountingLM()
    for bad in (0, seq_len + 1):
        with pytest.raises(RotaryError, match=f"--stride must be in 1..{seq_len}"):
            causal_lm_metrics(tiny, tokens, seq_len=seq_len, stride=bad, bytes_total=60)


def test_masked_lm_eval_is_fixed_by_its_seed_and_counts_top1_by_hand(data_char_dir):
    from rotary.evaluation import masked_lm_metrics
    from rotary.model import MaskedLM, ModelConfig
    from rotary.tokenizer import load_tokenizer

    tok = load_tokenizer(data_char_dir)
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, max_seq_len=32,
                                 causal=False)).eval()
    tokens = np.asarray(tok.encode("中国人民在一九九八年迎来了新的一年。" * 12), dtype=np.int64)
    a = masked_lm_metrics(model, tok, tokens, seq_len=32, seed=3)
    b = masked_lm_metrics(model, tok, tokens, seq_len=32, seed=3)
    c = masked_lm_metrics(model, tok, tokens, seq_len=32, seed=4)
    assert a == b and a["masked_tokens"] > 0 and a["top1_accuracy"] <= a["top5_accuracy"]
    assert c != a


def test_a_single_class_and_a_label_count_mismatch_are_one_line_errors(classifier_run, data_char_dir):
    from rotary.data.labelled_batches import ClassificationData
    from rotary.data.sources.labelled import Example
    from rotary.evaluation import evaluate_classifier
    from rotary.tokenizer import load_tokenizer

    tok = load_tokenizer(data_char_dir)
    rows = [Example("好", None, 0), Example("坏", None, 0)]
    with pytest.raises(RotaryError, match="at least 2"):
        ClassificationData(rows, rows, tok, data_char_dir, ["only"], max_len=16)
    with pytest.raises(RotaryError, match="predicts 2 labels, the data has 3"):
        evaluate_classifier(classifier_run, rows, ["a", "b", "c"], device="cpu")


def test_the_fine_tune_records_its_max_len_and_classify_cuts_texts_there(classifier_run):
    """A text longer than max_len classifies as its first max_len tokens do, to the last digit:
    the 64th token is read, the 65th is not (a one-token cut and no cut both answer differently)."""
    from rotary.infer.pretrained import load

    config = json.loads((classifier_run / "best" / "config.json").read_text())
    assert config["max_len"] == 64
    pre = load(classifier_run, device="cpu")
    tok = pre.tokenizer
    # praise, then a long complaint after the cut: if the tail were read the answer would change
    long = "这家酒店很干净，服务也好，房间很大，早餐也不错。" * 3 + "太差了，再也不来了，服务员态度恶劣！" * 8

    def ids(text, max_len=64):
        return tok.encode_for_model([text], None, max_len=max_len)[0].ids

    assert len(ids(long, 10_000)) > 150 and len(ids(long)) == 64
    cut = next(long[:k] for k in range(1, len(long)) if ids(long[:k], 10_000) == ids(long))  # [CLS] 62 chars [SEP]
    assert ids(cut) == ids(long)
    got, want, one_less = pre.classify([long, cut, cut[:-1]])
    assert got["label"] == want["label"]
    assert got["probabilities"] == pytest.approx(want["probabilities"], rel=0, abs=1e-6)
    assert got["probabilities"] != pytest.approx(one_less["probabilities"], rel=0, abs=1e-6)
    with torch.no_grad():  # the whole text, uncut (RoPE reads past max_seq_len): another answer
        x = torch.tensor([ids(long, 10_000)])
        whole = pre.model(x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x))
    whole = whole.float().softmax(-1)[0].tolist()
    assert list(got["probabilities"].values()) != pytest.approx(whole, rel=0, abs=1e-6)


def test_the_seeds_study_runs_in_quick_mode_and_summarises_every_run(data_char_dir, sentiment_dir, tmp_path):
    """experiments/finetune_seeds.py --quick: the same code as the recorded study, tiny budget."""
    import subprocess
    import sys

    from rotary.train.loop import train
    from tests.train_support import make_recipe

    mlm = make_recipe(tmp_path / "mlm", tokenizer=data_char_dir, task="masked_lm",
                      model={"preset": "tiny", "max_seq_len": 32}, max_steps=2, checkpoint_interval=2,
                      data={"corpus": "peoples-daily", "max_documents": 30, "tokenizer": {"path": str(data_char_dir)}})
    train(mlm)
    script = Path(__file__).resolve().parents[2] / "experiments" / "finetune_seeds.py"
    out = tmp_path / "results"
    cmd = [sys.executable, str(script), "--quick", "--pretrained", str(mlm.run_dir), "--tasks", "chinese-sentiment",
           "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--extra", "--data.corpus", str(sentiment_dir),
           "--seq-len", "32", "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    results = json.loads((out / "finetune_seeds.json").read_text())
    assert set(results["runs"]) == {"chinese-sentiment/pretrained", "chinese-sentiment/scratch"}
    for r in results["runs"].values():
        assert r["seeds"] == [1337, 1338] and len(r["accuracy"]) == 2 and r["examples"] == 200
        assert r["accuracy_mean"] == pytest.approx(sum(r["accuracy"]) / 2)
    gain = results["gain"]["chinese-sentiment"]
    runs = results["runs"]
    assert gain == pytest.approx(runs["chinese-sentiment/pretrained"]["accuracy_mean"]
                                 - runs["chinese-sentiment/scratch"]["accuracy_mean"])
    assert "| chinese-sentiment (200) | scratch |" in (out / "finetune_seeds.md").read_text()
    # the scratch runs trained the pretrained run's architecture, from no weights
    scratch = json.loads((tmp_path / "runs" / "chinese-sentiment-scratch-s1337" / "best" / "config.json").read_text())
    pretrained = json.loads((mlm.run_dir / "best" / "config.json").read_text())
    assert scratch["model"] == {**pretrained["model"], "dropout": scratch["model"]["dropout"]}
    # finished runs are skipped on a second invocation
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "$ " not in again.stdout


def test_a_resumed_fine_tune_needs_neither_its_source_run_nor_its_tokenizer_path(data_char_dir, sentiment_dir,
                                                                                  tmp_path):
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(data_char_dir, tok)
    run = tmp_path / "ft"
    args = finetune_args(run, sentiment_dir, tok)
    for flag, value in (("--max-steps", "2"), ("--eval-interval", "2"), ("--checkpoint-interval", "2")):
        args[args.index(flag) + 1] = value
    assert main(args) == 0
    shutil.rmtree(tok)  # gone: the resume must read the run's own checkpoint
    args[args.index("--max-steps") + 1] = "4"
    assert main([*args, "--resume"]) == 0
    log = (run / "train.log").read_text()
    assert "resumed: model and tokenizer from" in log
    assert json.loads((run / "best" / "config.json").read_text())["num_labels"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4


def test_task_adaptive_pretraining_continues_the_mlm_on_train_texts_only_then_fine_tunes_from_it(
        tiny_mlm, sentiment_dir, tmp_path, monkeypatch, capsys):
    """tapt_steps: the --from MLM trains on the task's train texts (never a val or test text) in
    <run>-tapt, and the classifier starts from those weights; --overwrite redoes both."""
    from safetensors.torch import load_file

    from rotary.data.sources import load_corpus, load_labelled

    rows = [r for split, n in (("train", 60), ("val", 15), ("test", 15))
            for r in (sentiment_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]]
    corpus = tmp_path / "reviews.jsonl"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    labelled = load_labelled(str(corpus))
    held_out = {e.text for s in ("val", "test") for e in labelled.split(s)}
    pretraining = list(load_corpus(f"labelled:{corpus}").documents("train"))
    assert sorted(pretraining) == sorted(e.text for e in labelled.split("train"))
    assert not set(pretraining) & held_out  # no held-out text is pretrained on
    assert not set(load_corpus(f"labelled:{corpus}").documents("val")) & {e.text for e in labelled.split("test")}
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "--from", str(tiny_mlm.run_dir), "--data.corpus", str(corpus), "--tapt-steps", "3",
            "--max-steps", "2", "--output-dir", "runs/clf", "--progress", "false", "--tensorboard", "false"]
    assert main(argv) == 0, capsys.readouterr().err
    tapt = tmp_path / "runs" / "clf-tapt"
    state = json.loads((tapt / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and json.loads((tapt / "best" / "config.json").read_text())["task"] == "masked_lm"
    meta = json.loads((tapt / "data" / "meta.json").read_text())
    assert meta["source"] == f"labelled:{corpus}" and meta["documents_train"] == len(labelled.split("train"))
    tapt_weights = load_file(str(tapt / "checkpoints" / "step-0000003" / "model.safetensors"))
    mlm_weights = load_file(str(tiny_mlm.run_dir / "best" / "model.safetensors"))
    assert tapt_weights.keys() == mlm_weights.keys()  # the MLM moved on the task's texts
    assert any(not torch.equal(tapt_weights[k], mlm_weights[k]) for k in tapt_weights)
    log = (tmp_path / "runs" / "clf" / "train.log").read_text()
    assert "task-adaptive pretraining: 3 MLM steps" in log
    mtime = (tapt / "checkpoints" / "step-0000003" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 2  # the fine-tune exists: refused, and the finished TAPT run is left as it was
    assert (tapt / "checkpoints" / "step-0000003" / "model.safetensors").stat().st_mtime_ns == mtime
    assert main([*argv, "--overwrite"]) == 0
    assert (tapt / "checkpoints" / "step-0000003" / "model.safetensors").stat().st_mtime_ns != mtime  # redone
    capsys.readouterr()
    assert main(["train", "demo", "--tapt-steps", "2", "--output-dir", "runs/lm"]) == 2
    assert "tapt_steps" in capsys.readouterr().err


def test_a_resumed_fine_tune_keeps_its_tokenizer_after_keep_n_prunes_the_checkpoint_it_came_from(
        sentiment_dir, data_char_dir, tmp_path, monkeypatch):
    """The resumed run read its tokenizer from the newest checkpoint; keep-N then deleted that
    checkpoint and every later save and best/ went without tokenizer/ (the test scoring failed)."""
    import os
    import signal

    from rotary.train.logging import RunLogger

    run = tmp_path / "run"
    args = finetune_args(run, sentiment_dir, data_char_dir, "--max-steps", "6", "--checkpoint-interval", "1",
                         "--keep-checkpoints", "1", "--eval-interval", "3")
    real = RunLogger.progress

    def interrupt_at_2(self, at, postfix):
        real(self, at, postfix)
        if at == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunLogger, "progress", interrupt_at_2)
    assert main(args) == 130
    monkeypatch.setattr(RunLogger, "progress", real)
    assert main(["finetune", "--resume", "--output-dir", str(run), "--progress", "false"]) == 0
    from rotary import checkpoint as ckpt

    (step, last), = ckpt.list_checkpoints(run)
    assert step == 6 and (last / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "best" / "tokenizer" / "tokenizer.json").is_file() and (run / "test_results.json").is_file()


def test_overwrite_refuses_to_delete_the_run_it_starts_from(classifier_run, sentiment_dir, tmp_path, capsys):
    """`--from runs/x --output-dir runs/x --overwrite` deleted runs/x, then failed to read it."""
    import shutil

    copy = tmp_path / "self"
    shutil.copytree(classifier_run, copy)
    before = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*"))
    for argv in (["finetune", "--from", str(copy), "--data.corpus", str(sentiment_dir), "--max-steps", "1",
                  "--output-dir", str(copy), "--overwrite", "--progress", "false"],
                 ["finetune", "--from", "none", "--data.tokenizer.path", str(copy / "best" / "tokenizer"),
                  "--data.corpus", str(sentiment_dir), "--model.preset", "tiny", "--max-steps", "1",
                  "--output-dir", str(copy), "--overwrite", "--progress", "false"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--overwrite would delete" in err[0] and "nothing was deleted" in err[0], err
        assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*")) == before
