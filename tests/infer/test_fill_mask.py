"""fill-mask: the same top-k tokens and probabilities as transformers' fill-mask pipeline, the
inline and JSON output of `rotary fill-mask`, its one-line errors, and the import of a directory
in the layout of the published roformer_chinese_* checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("rjieba")

import rotary  # noqa: E402
from rotary import checkpoint as ckpt  # noqa: E402
from rotary import cli  # noqa: E402
from rotary.errors import RotaryError  # noqa: E402
from rotary.hf import save_hf  # noqa: E402
from rotary.infer.fill_mask import format_inline, token_text  # noqa: E402
from rotary.model import CausalLM, MaskedLM  # noqa: E402
from rotary.model.config import ModelConfig  # noqa: E402
from rotary.tokenizer import load_tokenizer  # noqa: E402

TEXTS = [
    "今天[MASK]很好，我想去公园玩！",  # PaddleNLP's README sentences
    "北京是[MASK]的首都！",
    "中国[MASK][MASK]的发展很快。",  # two masks side by side
    "[MASK]民日报说，经济[MASK]长。",  # a mask first, and two apart
]
TOL = 1e-5


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights far from initialisation, so the distributions are peaked and the top-k distinct."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.5))
            if p.ndim == 1 and "norm" in name.lower() and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


def roformer_config(vocab_size: int, **kw) -> ModelConfig:
    base = dict(vocab_size=vocab_size, max_seq_len=64, n_layer=2, n_head=4, d_model=32, d_ff=64,
                mlp="gelu", norm="layernorm", norm_eps=1e-12, pre_norm=False, bias=True, causal=False,
                type_vocab_size=2, pad_token_id=0)
    return ModelConfig(**(base | kw))


def write_run(model: torch.nn.Module, tok_dir: Path, out: Path, task: str = "masked_lm") -> Path:
    """A rotary checkpoint directory holding ``model`` and the tokenizer of ``tok_dir``."""
    content = ckpt.CheckpointContent(config=ckpt.checkpoint_config(task, model.config),
                                     model_state=ckpt.model_state_for_saving(model),
                                     trainer_state={"step": 0}, tokenizer_dir=tok_dir)
    return ckpt.write_checkpoint_dir(out, content)


def pipeline_top_k(model_dir: Path, text: str, top_k: int, tok=None) -> list[list[tuple[str, float]]]:
    """transformers' fill-mask pipeline, as (token, score) rows per mask."""
    tok = tok or transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(model_dir))
    fill = transformers.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
    out = fill(text, top_k=top_k)
    rows = out if isinstance(out[0], list) else [out]
    return [[(tok.convert_ids_to_tokens(r["token"]), r["score"]) for r in row] for row in rows]


def assert_same(ours: list[list[tuple[str, float]]], theirs: list[list[tuple[str, float]]]) -> None:
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert [t for t, _ in a] == [t for t, _ in b]
        assert max(abs(p - q) for (_, p), (_, q) in zip(a, b)) <= TOL


@pytest.fixture(scope="module", params=["char", "wordpiece-jieba"])
def mlm_run(request, tmp_path_factory):
    """(rotary checkpoint dir, its HF export) of a tiny randomised MaskedLM with a real tokenizer."""
    tok_dir = request.getfixturevalue("data_char_dir" if request.param == "char" else "data_wordpiece_jieba_dir")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = randomize(MaskedLM(roformer_config(tok.vocab_size)), 1)
    root = tmp_path_factory.mktemp(f"fill-{request.param}")
    run = write_run(model, tok_dir, root / "run")
    hf_dir = save_hf(model, root / "hf", tokenizer_dir=tok_dir)
    return run, hf_dir


@pytest.mark.parametrize("text", TEXTS)
def test_fill_mask_equals_transformers_pipeline(mlm_run, text):
    run, hf_dir = mlm_run
    pre = rotary.load(run, device="cpu")
    ours = pre.fill_mask(text, top_k=5)
    assert len(ours) == text.count("[MASK]") and all(len(row) == 5 for row in ours)
    assert_same(ours, pipeline_top_k(hf_dir, text, 5))
    # each mask has its own distribution (the probabilities of one row sum below 1)
    assert all(0 < sum(p for _, p in row) <= 1 + 1e-6 for row in ours)
    if text.count("[MASK]") > 1:
        assert ours[0] != ours[1]


def test_fill_mask_top_k_larger_than_five(mlm_run):
    run, hf_dir = mlm_run
    pre = rotary.load(run, device="cpu")
    assert_same(pre.fill_mask(TEXTS[1], top_k=12), pipeline_top_k(hf_dir, TEXTS[1], 12))


def test_format_inline_is_paddlenlps_style():
    preds = [[("天气", 0.5), ("##天", 0.2), ("阳光", 0.1)], [("玩", 0.9)]]
    assert format_inline("今天[MASK]很好，去[MASK]！", preds) == "今天[天气||天||阳光]很好，去[玩]！"
    assert token_text("##气") == "气" and token_text("##") == "##"
    with pytest.raises(RotaryError, match="has 1 \\[MASK\\] but the model predicted 2"):
        format_inline("今天[MASK]很好", preds)


def test_cli_inline_and_json(mlm_run, capsys):
    run, _ = mlm_run
    pre = rotary.load(run, device="cpu")
    texts = TEXTS[:3]
    assert cli.main(["fill-mask", str(run), *sum((["--text", t] for t in texts), []), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [format_inline(t, pre.fill_mask(t, top_k=3)) for t in texts]
    first = [token_text(t) for t, _ in pre.fill_mask(texts[0], top_k=3)[0]]
    assert lines[0] == "今天[" + "||".join(first) + "]很好，我想去公园玩！"

    assert cli.main(["fill-mask", str(run), "--text", texts[2], "--json", "--top-k", "2"]) == 0
    obj = json.loads(capsys.readouterr().out)
    expected = pre.fill_mask(texts[2], top_k=2)
    assert obj["text"] == texts[2] and len(obj["masks"]) == 2
    for row, exp in zip(obj["masks"], expected):
        assert [c["token"] for c in row] == [t for t, _ in exp]
        assert [c["probability"] for c in row] == pytest.approx([p for _, p in exp], abs=1e-7)
        assert all(pre.tokenizer.id_to_token(c["token_id"]) == c["token"] for c in row)


def test_cli_batch_input_keeps_one_row_per_line(mlm_run, tmp_path, capsys):
    run, _ = mlm_run
    pre = rotary.load(run, device="cpu")
    src = tmp_path / "in.txt"
    src.write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n", encoding="utf-8")
    assert cli.main(["fill-mask", str(run), "--input", str(src), "--top-k", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.split("\n") == [format_inline(TEXTS[0], pre.fill_mask(TEXTS[0], top_k=2)), "",
                                format_inline(TEXTS[1], pre.fill_mask(TEXTS[1], top_k=2)), ""]
    assert "1 blank line" in err
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"id": "x", "text": TEXTS[1]}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli.main(["fill-mask", str(run), "--input", str(jsonl), "--output", str(tmp_path / "o.jsonl")]) == 0
    (row,) = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["id"] == "x" and row["text"] == TEXTS[1]
    assert [c["token"] for c in row["masks"][0]] == [t for t, _ in pre.fill_mask(TEXTS[1], top_k=5)[0]]
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{TEXTS[0]}\n没有\n", encoding="utf-8")
    one_line_error(capsys, ["fill-mask", str(run), "--input", str(bad)], "bad.txt:2: text '没有' has no [MASK]")


def one_line_error(capsys, argv: list[str], match: str) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("rotary: error: "), err
    assert match in err, err


def test_cli_errors_are_one_line(mlm_run, tmp_path, capsys, data_bpe_dir):
    run, _ = mlm_run
    one_line_error(capsys, ["fill-mask", str(run), "--text", "今天天气很好"], "has no [MASK]: write [MASK]")
    # no output at all when the second text is bad: every text is checked first
    one_line_error(capsys, ["fill-mask", str(run), "--text", TEXTS[0], "--text", "没有"], "has no [MASK]")
    one_line_error(capsys, ["fill-mask", str(run), "--text", "[MASK]" + "好" * 80],
                   "more than the model's max_seq_len 64")
    one_line_error(capsys, ["fill-mask", str(run), "--text", TEXTS[0], "--top-k", "0"], "top_k must be a positive")
    torch.manual_seed(0)
    causal = CausalLM(ModelConfig(vocab_size=load_tokenizer(data_bpe_dir).vocab_size, max_seq_len=32, n_layer=1,
                                  n_head=2, d_model=16, d_ff=32))
    causal_run = write_run(causal, data_bpe_dir, tmp_path / "causal", task="causal_lm")
    one_line_error(capsys, ["fill-mask", str(causal_run), "--text", TEXTS[0]],
                   "fill-mask needs a masked LM (task masked_lm); this run is a causal_lm: use `rotary generate`")
    one_line_error(capsys, ["fill-mask", str(tmp_path / "nothing"), "--text", TEXTS[0]], "no such run")


# ---------------------------------------------------------------------------------------------
# the published roformer_chinese_* layout: config.json with embedding_size and rotary_value,
# vocab.txt, pytorch_model.bin, no tokenizer.json
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["vocab-only", "tokenizer_config"])
def published_layout(request, tmp_path_factory, data_wordpiece_jieba_dir):
    vocab = (data_wordpiece_jieba_dir / "vocab.txt").read_text(encoding="utf-8")
    hfc = transformers.RoFormerConfig(
        vocab_size=len(vocab.splitlines()), embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0, rotary_value=False,
        architectures=["RoFormerForMaskedLM"])
    torch.manual_seed(0)
    hf = randomize(transformers.RoFormerForMaskedLM(hfc), 2)
    out = tmp_path_factory.mktemp("published") / "roformer_chinese_tiny"
    # transformers 5 always writes safetensors: the published .bin is a torch.save'd state dict
    hf.config.save_pretrained(out)
    torch.save(hf.state_dict(), out / "pytorch_model.bin")
    (out / "vocab.txt").write_text(vocab, encoding="utf-8")
    if request.param == "tokenizer_config":
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RoFormerTokenizer",
                                                              "do_lower_case": True}))
    files = sorted(p.name for p in out.iterdir())
    assert "pytorch_model.bin" in files and "tokenizer.json" not in files and "model.safetensors" not in files
    config = json.loads((out / "config.json").read_text())
    assert config["embedding_size"] != config["hidden_size"] and config["rotary_value"] is False
    return out


def test_convert_the_published_layout_then_fill_mask_equals_transformers(published_layout, tmp_path, capsys):
    out = tmp_path / "rotary-run"
    assert cli.main(["convert", str(published_layout), "--from-hf", str(out)]) == 0
    assert "(masked_lm)" in capsys.readouterr().out
    pre = rotary.load(out, device="cpu")
    assert pre.model.config.embedding_size == 16 and pre.tokenizer.jieba and pre.tokenizer.kind == "wordpiece"
    # The tokenizer segments as transformers' RoFormerTokenizer built on the directory's
    # vocabulary. (AutoTokenizer on a vocab.txt-only directory is not that tokenizer in
    # transformers 5.x: it hands jieba the vocabulary's *path*, so `word in vocab` tests
    # substrings of a file name and every word falls apart into characters. Resaved with a
    # tokenizer.json, as `convert --to hf` writes, it is right again.)
    lines = (published_layout / "vocab.txt").read_text(encoding="utf-8").splitlines()
    hf_tok = transformers.RoFormerTokenizer(vocab={t: i for i, t in enumerate(lines)}, do_lower_case=True)
    assert hf_tok.tokenize("今天很好") == ["今天", "很", "好"]  # words kept whole: the case that matters
    texts = (*TEXTS, "我们试试看！Hello World 123", "ÀÉ café 北京欢迎你")  # lowercased, accents stripped
    for text in texts:
        assert pre.tokenizer.encode_for_model([text])[0].ids == hf_tok(text)["input_ids"], text
    for text in TEXTS:
        assert_same(pre.fill_mask(text, top_k=5), pipeline_top_k(published_layout, text, 5, hf_tok))
    # and back to transformers: the export (tokenizer.json included) encodes and predicts the same
    back = tmp_path / "hf-again"
    assert cli.main(["convert", str(out), "--to", "hf", str(back)]) == 0
    exported = transformers.AutoTokenizer.from_pretrained(str(back))
    for text in texts:
        assert exported(text)["input_ids"] == hf_tok(text)["input_ids"], text
    for text in TEXTS[:2]:
        assert_same(pipeline_top_k(back, text, 5), pipeline_top_k(published_layout, text, 5, hf_tok))


class _Payload:
    """A pickled object that would run code when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_convert_reads_pytorch_model_bin_with_weights_only(published_layout, tmp_path, capsys):
    bad = tmp_path / "pickled-code"
    bad.mkdir()
    for name in ("config.json", "vocab.txt"):
        (bad / name).write_bytes((published_layout / name).read_bytes())
    state = torch.load(published_layout / "pytorch_model.bin", weights_only=True)
    marker = tmp_path / "code-ran"
    torch.save({**state, "payload": _Payload(marker)}, bad / "pytorch_model.bin")
    one_line_error(capsys, ["convert", str(bad), "--from-hf", str(tmp_path / "out")], "transformers cannot load it")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_refuses_an_unsupported_architecture(tmp_path, capsys):
    hf = transformers.RoFormerForTokenClassification(transformers.RoFormerConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        architectures=["RoFormerForTokenClassification"]))
    hf.save_pretrained(tmp_path / "tok-cls")
    capsys.readouterr()  # transformers' progress bar
    one_line_error(capsys, ["convert", str(tmp_path / "tok-cls"), "--from-hf", str(tmp_path / "out")],
                   "architecture RoFormerForTokenClassification is not convertible")
    assert not (tmp_path / "out").exists()
