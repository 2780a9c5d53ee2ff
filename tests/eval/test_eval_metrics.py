"""Evaluation numbers against recomputations: chunked loss statistics over several (ragged)
chunks, and the trainer's loss / perplexity / bits per byte / accuracy from known totals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rotary.errors import RotaryError
from rotary.evaluation.batches import evaluate
from rotary.ops.fused_cross_entropy import cross_entropy_stats
from rotary.train.distributed import DistInfo

N, D, VOCAB = 61, 12, 37


def problem(bias: bool, seed: int = 0):
    """Rows whose labels are a mix of ignored (-100), argmax (counted correct) and random ones,
    spread over the whole range so every chunk, the last one included, holds each kind."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g)
    w = torch.randn(VOCAB, D, generator=g)
    b = torch.randn(VOCAB, generator=g) if bias else None
    logits = F.linear(h, w, b)
    labels = torch.randint(0, VOCAB, (N,), generator=g)
    labels[::3] = logits.argmax(-1)[::3]
    labels[1::5] = -100
    labels[-1] = logits[-1].argmax()  # the very last row: correct, and labelled
    return h, w, b, labels, logits


def reference_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    keep = labels != -100
    loss_sum = F.cross_entropy(logits[keep].double(), labels[keep], reduction="sum").item()
    correct = int((logits.argmax(-1) == labels)[keep].sum())
    return loss_sum, int(keep.sum()), correct


# 61 rows: chunks of 1, 7 (ragged last chunk of 5), 30 (last of 1), 60 (last of 1), 61 (one
# chunk), 64 and None (one chunk larger than the input)
@pytest.mark.parametrize("chunk_rows", [1, 7, 30, 60, 61, 64, None])
@pytest.mark.parametrize("bias", [False, True])
def test_stats_over_several_chunks_equal_sums_over_materialised_logits(chunk_rows, bias):
    h, w, b, labels, logits = problem(bias)
    stats = cross_entropy_stats(h, w, b, labels, chunk_rows=chunk_rows)
    loss_sum, tokens, correct = reference_stats(logits, labels)
    assert stats.dtype == torch.float64 and stats.shape == (3,)
    assert stats[1].item() == tokens and stats[2].item() == correct
    assert stats[0].item() == pytest.approx(loss_sum, rel=1e-5)
    # the reference itself is not degenerate: some rows ignored, some right, some wrong
    assert 0 < correct < tokens < N


def test_stats_of_the_last_rows_alone_are_counted():
    """Only the last row labelled: a chunk loop that stops one chunk early sees nothing."""
    h, w, b, labels, logits = problem(bias=True, seed=1)
    only_last = torch.full_like(labels, -100)
    only_last[-1] = labels[-1]
    for chunk_rows in (7, 30, 60):
        stats = cross_entropy_stats(h, w, b, only_last, chunk_rows=chunk_rows)
        want = F.cross_entropy(logits[-1:], only_last[-1:]).item()
        assert stats[1].item() == 1 and stats[2].item() == 1
        assert stats[0].item() == pytest.approx(want, rel=1e-5)


def test_stats_with_every_row_ignored_are_zero():
    h, w, b, labels, _ = problem(bias=False)
    stats = cross_entropy_stats(h, w, b, torch.full_like(labels, -100), chunk_rows=7)
    assert stats.tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# trainer.evaluate: the metrics from the summed statistics
# ---------------------------------------------------------------------------------------------


class StatsModel(nn.Module):
    """Returns given (loss sum, tokens, correct) per evaluation batch, whatever its arguments."""

    def __init__(self, per_batch: list[tuple[float, int, int]]) -> None:
        super().__init__()
        self.per_batch = list(per_batch)
        self.calls = 0

    def forward(self, x, *args, **kwargs):
        assert not self.training, "evaluation runs in eval mode"
        stats = self.per_batch[self.calls]
        self.calls += 1
        return torch.tensor(stats, dtype=torch.float64)


class FakeData:
    def __init__(self, n_batches: int, bytes_per_token: float) -> None:
        self.n_batches = n_batches
        self.val_bytes_per_token = bytes_per_token

    def eval_batches(self, max_batches, info):
        n = self.n_batches if max_batches is None else min(self.n_batches, max_batches)
        for _ in range(n):
            yield torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)


PER_BATCH = [(30.0, 16, 5), (25.5, 12, 7), (12.25, 8, 2)]


def run_evaluate(task: str, bytes_per_token: float = 3.25, max_batches=None, per_batch=PER_BATCH):
    model = StatsModel(per_batch)
    model.train()
    cfg = SimpleNamespace(task=task, precision="fp32")
    out = evaluate(model, FakeData(len(per_batch), bytes_per_token), cfg, DistInfo(), max_batches)
    assert model.training  # restored
    return out, model


def test_causal_metrics_are_per_token_loss_and_bits_per_byte():
    out, model = run_evaluate("causal_lm", bytes_per_token=3.25)
    assert model.calls == 3
    loss = (30.0 + 25.5 + 12.25) / (16 + 12 + 8)
    assert out["tokens"] == 36
    assert out["loss"] == pytest.approx(loss, rel=1e-12)
    assert out["perplexity"] == pytest.approx(math.exp(loss), rel=1e-12)
    # nats per token -> bits per token -> bits per byte: divided by the bytes each token stands for
    assert out["bits_per_byte"] == pytest.approx(loss / math.log(2) / 3.25, rel=1e-12)
    assert "accuracy" not in out
    # the same losses over text of twice as many bytes per token: half the bits per byte
    half, _ = run_evaluate("causal_lm", bytes_per_token=6.5)
    assert half["bits_per_byte"] == pytest.approx(out["bits_per_byte"] / 2, rel=1e-12)


def test_masked_metrics_report_accuracy_over_all_batches():
    out, _ = run_evaluate("masked_lm")
    assert out["accuracy"] == pytest.approx((5 + 7 + 2) / 36, rel=1e-12)
    assert out["loss"] == pytest.approx(67.75 / 36, rel=1e-12)
    assert "bits_per_byte" not in out


def test_max_batches_limits_the_evaluation():
    out, model = run_evaluate("masked_lm", max_batches=2)
    assert model.calls == 2 and out["tokens"] == 28
    assert out["accuracy"] == pytest.approx(12 / 28, rel=1e-12)


def test_no_labelled_token_is_a_clear_error():
    with pytest.raises(RotaryError, match="validation split is too small"):
        run_evaluate("causal_lm", per_batch=[(0.0, 0, 0)])


def test_causal_eval_scores_in_the_windows_the_run_trained_on(data_bpe_dir, tmp_path, capsys):
    """A model trained on 64-token windows was scored on 256 (its max_seq_len): the run's own
    seq_len is the default now, --seq-len chooses another."""
    import json

    import rotary
    from rotary import checkpoint as ckpt
    from rotary.cli import main
    from rotary.evaluation import causal_documents_metrics
    from rotary.model import CausalLM, ModelConfig
    from rotary.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=load_tokenizer(data_bpe_dir).vocab_size, max_seq_len=32, n_layer=1,
                                 n_head=2, d_model=16, d_ff=32))
    run = tmp_path / "run"
    ckpt.write_checkpoint_dir(run / "best", ckpt.CheckpointContent(
        config=ckpt.checkpoint_config("causal_lm", model.config), model_state=ckpt.model_state_for_saving(model),
        trainer_state={"step": 0}, tokenizer_dir=data_bpe_dir))
    (run / "recipe.yaml").write_text("task: causal_lm\nseq_len: 8\n")
    corpus = tmp_path / "c.txt"
    docs = [f"the cat sat on the mat {i} times and then it slept" for i in range(12)]
    corpus.write_text("\n".join(docs) + "\n")
    pre = rotary.load(run, device="cpu")
    for extra, window in (([], 8), (["--seq-len", "32"], 32)):
        assert main(["eval", str(run), "--corpus", str(corpus), "--corpus-opt", "split_by=line",
                     "--corpus-opt", "val_fraction=0.5", *extra]) == 0
        record = json.loads((run / "eval.json").read_text())
        assert record["seq_len"] == window
        split_docs = list(rotary.data.load_corpus(str(corpus), split_by="line", val_fraction=0.5).documents("val"))
        expected = causal_documents_metrics(pre, split_docs, seq_len=window)
        assert record["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert record["windows"] < causal_documents_metrics(pre, split_docs, seq_len=8)["windows"]
    # an option for another kind of run is refused by name, not silently ignored; eval.json untouched
    before = (run / "eval.json").read_bytes()
    for flag, task in ((["--beam", "3"], "seq2seq"), (["--seed", "1"], "masked_lm"),
                       (["--no-baseline"], "classification")):
        assert main(["eval", str(run), "--corpus", str(corpus), "--corpus-opt", "split_by=line", *flag]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rotary: error: {flag[0]} (") and "\n" not in err, err
        assert err.endswith(f"applies to a {task} run; this run is a causal_lm"), err
    assert (run / "eval.json").read_bytes() == before


def test_eval_window_never_exceeds_max_seq_len_and_refuses_zero(tmp_path):
    # a recipe's seq_len above the model's max_seq_len (the run was resized, or the recipe edited)
    # must not silently score past the trained length; only an explicit --seq-len may do that
    from rotary.evaluation import eval_window

    pre = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(max_seq_len=32)), path=tmp_path / "best")
    assert eval_window(pre) == 32  # no recipe: the model's limit
    (tmp_path / "recipe.yaml").write_text("task: causal_lm\nseq_len: 64\n")
    assert eval_window(pre) == 32
    (tmp_path / "recipe.yaml").write_text("task: causal_lm\nseq_len: 8\n")
    assert eval_window(pre) == 8
    assert eval_window(pre, 100) == 100  # a length-extrapolation study asks for it
    for bad in (0, -4):
        with pytest.raises(RotaryError, match="--seq-len must be positive"):
            eval_window(pre, bad)


def test_document_bits_per_byte_divide_by_utf8_bytes_and_separators(data_bpe_dir):
    # every document is followed by a separator token that is scored, so its byte is counted too;
    # non-ASCII text makes characters and bytes differ
    from rotary.evaluation import causal_documents_metrics
    from rotary.model import CausalLM, ModelConfig
    from rotary.tokenizer import load_tokenizer

    tok = load_tokenizer(data_bpe_dir)
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=32, n_layer=1, n_head=2, d_model=16,
                                 d_ff=32)).eval()
    docs = ["the cat sat on the mat", "café au lait, naïve", "one more line"]
    m = causal_documents_metrics(SimpleNamespace(tokenizer=tok, model=model), docs, seq_len=16)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs) + len(docs)
    assert m["bits_per_byte"] == pytest.approx(m["loss"] * m["tokens_scored"] / math.log(2) / n_bytes, rel=1e-9)
    # every byte counted is predicted: each token of the split is a target, its first one too
    # (a separator precedes it as context), so the loss is one full forward's over [sep] + tokens
    from rotary.data.encode import encode_documents

    tokens, _ = encode_documents(tok, docs, "int64", False)
    assert m["tokens_scored"] == len(tokens)
    ids = torch.tensor([[tok.eos_id, *tokens.tolist()]])
    assert ids.shape[1] <= 33  # one window (32 inputs, the model's max_seq_len) holds the whole split
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0].float(), ids[0, 1:])
    whole = causal_documents_metrics(SimpleNamespace(tokenizer=tok, model=model), docs, seq_len=32)
    assert whole["windows"] == 1 and whole["loss"] == pytest.approx(float(want), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# the classifier report: the confusion matrix itself, and where precision and recall come from
# ---------------------------------------------------------------------------------------------


def test_confusion_matrix_rows_are_true_labels_and_columns_predictions():
    """An asymmetric case, so a transposed matrix (or precision and recall swapped) shows: sum,
    trace and macro-F1 are the same either way. Rows true, columns predicted, as scikit-learn's
    confusion_matrix and the eval command's printout ("rows true, columns predicted") say."""
    import numpy as np

    from rotary.evaluation import classification_report

    # true 0 -> predicted 1 three times, true 1 -> predicted 0 never; class 2 predicted for a 1
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 1])
    preds = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    report = classification_report(labels, preds, ["a", "b", "c"])
    want = [[2, 3, 0],
            [0, 2, 1],
            [0, 0, 2]]
    assert report["confusion"] == want
    per = report["per_class"]
    # a: 2 of 2 predicted a are right (precision 1), 2 of 5 true a found (recall 0.4)
    assert (per["a"]["precision"], per["a"]["recall"], per["a"]["support"]) == (1.0, 0.4, 5)
    assert (per["b"]["precision"], per["b"]["recall"], per["b"]["support"]) == (0.4, pytest.approx(2 / 3), 3)
    assert (per["c"]["precision"], per["c"]["recall"], per["c"]["support"]) == (pytest.approx(2 / 3), 1.0, 2)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert report["confusion"] == sklearn.confusion_matrix(labels, preds, labels=[0, 1, 2]).tolist()
    p, r, f, s = sklearn.precision_recall_fscore_support(labels, preds, labels=[0, 1, 2], zero_division=0)
    for k, name in enumerate("abc"):
        assert per[name]["precision"] == pytest.approx(p[k]) and per[name]["recall"] == pytest.approx(r[k])
        assert per[name]["f1"] == pytest.approx(f[k]) and per[name]["support"] == s[k]
    assert report["macro_f1"] == pytest.approx(sklearn.f1_score(labels, preds, average="macro"))
    assert report["accuracy"] == pytest.approx(0.6)


def test_macro_f1_is_scikit_learns_in_the_report_the_trainer_and_the_baseline():
    """One definition everywhere: scikit-learn's macro average over the classes that occur in the
    truth or the predictions. Class c is predicted but never true (F1 0, counted); class d is
    neither (left out). Three ways in: the report, the trainer's metrics from summed statistics,
    and the classical baseline's scorer."""
    import numpy as np
    import torch

    from rotary.baselines import macro_f1_of
    from rotary.evaluation import classification_report
    from rotary.tasks import get_task

    labels = np.array([0, 0, 0, 1, 1, 1])
    preds = np.array([0, 0, 2, 1, 1, 0])
    report = classification_report(labels, preds, ["a", "b", "c", "d"])
    # a: precision 2/3, recall 2/3; b: precision 1, recall 2/3 (F1 0.8); c: F1 0; d: absent
    want = (2 / 3 + 0.8 + 0.0) / 3
    assert report["macro_f1"] == pytest.approx(want)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert want == pytest.approx(sklearn.f1_score(labels, preds, average="macro"))
    assert macro_f1_of(labels.tolist(), preds.tolist(), 4) == pytest.approx(want)
    confusion = torch.tensor(report["confusion"], dtype=torch.float64).flatten()
    totals = torch.cat([torch.tensor([0.0, 6.0, 4.0], dtype=torch.float64), confusion])  # loss, count, correct
    metrics = get_task("classification").metrics(totals, None)
    assert metrics == {"accuracy": pytest.approx(4 / 6), "macro_f1": pytest.approx(want)}
