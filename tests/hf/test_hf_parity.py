"""HF transformers parity for rotary.hf: Llama (causal LM) and RoFormer (masked LM, classifier).

litgpt's shape: build a tiny HF model, re-randomise every weight (so nothing is 1 or 0 and a
wrong permutation shows), convert, compare logits in fp32 — HF -> rotary, rotary -> HF with
``to_hf``, and rotary -> directory with ``save_hf`` -> ``from_pretrained``. Padded batches
compare real-token positions only: pad positions legitimately differ (rotary lets a pad query
attend to itself; with left padding rotary counts positions from the first real token).
Run with ``-s`` to see the max differences per family.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    RoFormerConfig,
    RoFormerForMaskedLM,
    RoFormerForSequenceClassification,
)
from transformers.activations import ACT2FN  # noqa: E402

import rotary.hf as rhf  # noqa: E402
from rotary.errors import RotaryError  # noqa: E402
from rotary.hf import config_from_hf, config_to_hf, from_hf, save_hf, to_hf  # noqa: E402
from rotary.model import CausalLM, MaskedLM, SequenceClassifier  # noqa: E402
from rotary.model.config import ModelConfig  # noqa: E402
from rotary.model.rope import apply_rope, base_inv_freq, cos_sin  # noqa: E402

TOL = 1e-4
VOCAB = 97
PAD = 0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every weight with a fixed seed: matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.5),
    norm gains ~ 1 + N(0, 0.5). HF RoFormer's sinusoidal table is RoPE itself, so it stays."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue
            std = p.shape[-1] ** -0.5 if p.ndim == 2 else 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
            if p.ndim == 1 and "norm" in name.lower() and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor, what: str, mask: torch.Tensor | None = None) -> float:
    """Max |a - b| (over real-token positions when ``mask`` is given), printed and checked."""
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    assert a.shape == b.shape and a.numel() > 0
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    diff = (a.float() - b.float()).abs().max().item()
    print(f"[hf parity] {what}: max |diff| = {diff:.2e} (max |logit| {a.abs().max().item():.2f})")
    assert diff <= TOL, f"{what}: max |diff| {diff:.3e} > {TOL}"
    return diff


def batch(T: int, seed: int, types: int = 0, pad: str | None = None) -> dict[str, torch.Tensor]:
    """Three sequences of length T; with ``pad`` the last two are padded (left or right)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    if pad is not None:
        for row, n_pad in ((1, 3), (2, T // 2)):
            sl = slice(0, n_pad) if pad == "left" else slice(T - n_pad, T)
            mask[row, sl] = 0
        ids = ids.masked_fill(mask == 0, PAD)
    out = {"input_ids": ids, "attention_mask": mask}
    if types:
        out["token_type_ids"] = torch.randint(0, types, (3, T), generator=g)
    return out


def hf_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def rot_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def tiny_llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    base = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=PAD,
        attn_implementation="eager",
    )
    base.update(kw)
    torch.manual_seed(seed)
    return randomize(LlamaForCausalLM(LlamaConfig(**base)), seed)


def tiny_roformer_config(**kw) -> RoFormerConfig:
    base = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-6, pad_token_id=PAD,
    )
    base.update(kw)
    return RoFormerConfig(**base)


def rotary_model(cls: type, seed: int, pooling: str = "cls", **cfg_kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, **cfg_kw)
    model = cls(cfg) if cls is not SequenceClassifier else cls(cfg, num_labels=3, pooling=pooling)
    return randomize(model, seed)


def check_rotary_to_hf(model: torch.nn.Module, auto: type, tmp_path, what: str, inputs_list) -> None:
    """rotary -> HF (to_hf), -> directory (save_hf + from_pretrained), and back (from_hf(dir))."""
    hf = to_hf(model)
    out = tmp_path / "hf"
    save_hf(model, out)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    loaded = auto.from_pretrained(out).eval()
    assert type(loaded) is type(hf)
    back = from_hf(out)
    assert type(back) is type(model)
    for name, inputs in inputs_list:
        ref = rot_logits(model, inputs)
        mask = inputs["attention_mask"] if ref.dim() == 3 else None  # per-token logits only
        max_diff(hf_logits(hf, inputs), ref, f"{what} rotary->HF to_hf [{name}]", mask)
        max_diff(hf_logits(loaded, inputs), ref, f"{what} rotary->HF save_hf+from_pretrained [{name}]", mask)
        max_diff(rot_logits(back, inputs), ref, f"{what} round trip via dir [{name}]", mask)


# ---------------------------------------------------------------------------------------------
# Llama
# ---------------------------------------------------------------------------------------------

LLAMA_HF_CASES = [
    pytest.param(dict(num_key_value_heads=4, num_hidden_layers=1, tie_word_embeddings=True), id="mha-1layer-tied"),
    pytest.param(
        dict(num_key_value_heads=2, num_hidden_layers=3, attention_bias=True, mlp_bias=True,
             attn_implementation="sdpa"),
        id="gqa2-3layers-bias-sdpa",
    ),
    pytest.param(
        dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=1, intermediate_size=40,
             rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
        id="mqa-theta500",
    ),
]


@pytest.mark.parametrize("kw", LLAMA_HF_CASES)
def test_llama_hf_to_rotary(kw):
    hf = tiny_llama(seed=1, **kw)
    rot = from_hf(hf)
    assert isinstance(rot, CausalLM) and not rot.training
    assert rot.config.kv_heads == hf.config.num_key_value_heads
    for pad in (None, "right", "left"):
        inputs = batch(T=20, seed=2, pad=pad)
        # left padding: HF numbers positions 0..T-1 through the pads, rotary from the first real
        # token; RoPE is relative, so real-token logits still agree.
        max_diff(hf_logits(hf, inputs), rot_logits(rot, inputs), f"Llama HF->rotary [{pad}]",
                 inputs["attention_mask"])
    # With explicit position ids both count from the first real token: same logits again.
    inputs = batch(T=20, seed=3, pad="left")
    pos = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(**inputs, position_ids=pos).logits
    max_diff(ref, rot_logits(rot, inputs), "Llama HF->rotary [left, HF position_ids]", inputs["attention_mask"])


LLAMA_ROTARY_CASES = [
    pytest.param(dict(n_kv_head=1, n_layer=1, tie_embeddings=True), id="mqa-1layer-tied"),
    pytest.param(dict(n_kv_head=2, n_layer=3, bias=True, tie_embeddings=False), id="gqa2-3layers-bias"),
    pytest.param(dict(n_kv_head=None, n_layer=2, rope_theta=300.0, norm_eps=1e-6), id="mha-theta300"),
]


@pytest.mark.parametrize("kw", LLAMA_ROTARY_CASES)
def test_llama_rotary_to_hf(kw, tmp_path):
    model = rotary_model(CausalLM, seed=4, d_model=32, n_head=4, d_ff=40, max_seq_len=64, **kw)
    inputs = [(p or "nopad", batch(T=17, seed=5, pad=p)) for p in (None, "right", "left")]
    check_rotary_to_hf(model, AutoModelForCausalLM, tmp_path, "Llama", inputs)
    assert to_hf(model).config.tie_word_embeddings == model.config.tie_embeddings


SCALING_CASES = [
    pytest.param({"rope_type": "linear", "factor": 2.5}, 64, id="linear"),
    # dynamic measures the context against max_position_embeddings: 16 here, sequences are 40.
    pytest.param({"rope_type": "dynamic", "factor": 3.0}, 16, id="dynamic"),
    pytest.param(
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
         "beta_fast": 8.0, "beta_slow": 2.0},
        64, id="yarn",
    ),
]


@pytest.mark.parametrize("rope, mpe", SCALING_CASES)
def test_llama_rope_scaling_both_ways(rope, mpe, tmp_path):
    rope = {**rope, "rope_theta": 1000.0}
    hf = tiny_llama(seed=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=mpe, rope_parameters=dict(rope))
    pristine = copy.deepcopy(hf)
    rot = from_hf(hf)
    expected = {"linear": "linear", "dynamic": "dynamic_ntk", "yarn": "yarn"}[rope["rope_type"]]
    assert rot.config.rope_scaling == expected
    assert rot.config.rope_scaling_factor == rope["factor"]
    full = batch(T=40, seed=7)
    ref = hf_logits(hf, full)
    max_diff(ref, rot_logits(rot, full), f"Llama {expected} HF->rotary [T=40]")
    # Padded rows are compared with HF running each row alone: rotary's dynamic NTK takes a
    # row's base from its real length, HF's from the batch's longest position. Each in a fresh
    # copy, since HF's dynamic RoPE keeps the longest base it has seen.
    padded = batch(T=40, seed=8, pad="right")
    rows = rot_logits(rot, padded)
    for row, n in enumerate(padded["attention_mask"].sum(-1).tolist()):
        alone = hf_logits(copy.deepcopy(pristine), {"input_ids": padded["input_ids"][row : row + 1, :n]})
        max_diff(alone[0], rows[row, :n], f"Llama {expected} HF->rotary [right-padded row, {n} tokens]")
    # Teeth: the same weights with plain RoPE must give visibly different logits at T=40.
    plain = CausalLM(rot.config.replace(rope_scaling="none"))
    plain.load_state_dict(rot.state_dict())
    gap = (rot_logits(plain.eval(), full) - ref).abs().max().item()
    assert gap > 1e-2, f"{expected} scaling does not change logits at T=40 (gap {gap:.1e})"
    # ... and back: to_hf, save_hf + from_pretrained, from_hf(dir): fresh HF models, one call each.
    cases = [("nopad", full)] if expected == "dynamic_ntk" else [("nopad", full), ("right", padded)]
    check_rotary_to_hf(rot, AutoModelForCausalLM, tmp_path, f"Llama {expected}", cases)
    back = to_hf(rot).config.rope_parameters
    assert back["rope_type"] == rope["rope_type"] and back["factor"] == rope["factor"]


def test_llama_dynamic_factor_one():
    """rotary's dynamic NTK at factor 1 is plain RoPE: exported as 'default'. HF's rescales past
    max_position_embeddings even at factor 1, which rotary cannot express: refused."""
    hf = tiny_llama(seed=9, max_position_embeddings=16, rope_parameters={"rope_type": "dynamic", "factor": 1.0})
    with pytest.raises(RotaryError, match="factor 1"):
        from_hf(hf)
    model = rotary_model(CausalLM, seed=9, d_model=32, n_head=4, n_kv_head=2, d_ff=40, max_seq_len=16,
                         rope_scaling="dynamic_ntk", rope_scaling_factor=1.0)
    hf = to_hf(model)
    assert hf.config.rope_parameters["rope_type"] == "default"
    inputs = batch(T=40, seed=10)  # past the 16-token context
    max_diff(hf_logits(hf, inputs), rot_logits(model, inputs), "Llama dynamic factor 1 rotary->HF [T=40]")


def test_llama_from_checkpoint_dir(tmp_path):
    hf = tiny_llama(seed=11, num_hidden_layers=1)
    hf.save_pretrained(tmp_path)
    rot = from_hf(str(tmp_path))
    inputs = batch(T=12, seed=12, pad="right")
    max_diff(hf_logits(hf, inputs), rot_logits(rot, inputs), "Llama HF dir->rotary", inputs["attention_mask"])


def test_save_hf_copies_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}')
    model = rotary_model(CausalLM, seed=25, d_model=32, n_head=4, d_ff=40, n_layer=1)
    out = save_hf(model, tmp_path / "out", tokenizer_dir=tok_dir)
    ids = transformers.AutoTokenizer.from_pretrained(out)("w5 w7 w11")["input_ids"]
    assert ids == [5, 7, 11]
    with pytest.raises(RotaryError, match="no HF tokenizer files"):
        save_hf(model, tmp_path / "out2", tokenizer_dir=tmp_path / "out2")


@pytest.mark.parametrize("ignored", [False, True])
def test_causal_lm_labels_give_hfs_loss(ignored):
    # transformers' idiom: labels aligned with input_ids, shifted inside the model
    hf = tiny_llama(seed=31)
    rot = from_hf(hf)
    ids = batch(T=20, seed=32)["input_ids"]
    labels = ids.clone()
    if ignored:
        labels[0, 5:9] = labels[2, -3:] = -100
    with torch.no_grad():
        want = hf(input_ids=ids, labels=labels).loss
        got = rot(ids, labels=labels)
    assert abs(got.item() - want.item()) <= 1e-5, (got.item(), want.item())


def test_save_hf_takes_bos_eos_pad_from_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "eos_token": "w3", '
        '"bos_token": {"content": "w1", "special": true}, "pad_token": "w2"}')
    model = rotary_model(CausalLM, seed=26, d_model=32, n_head=4, d_ff=40, n_layer=1)
    out = save_hf(model, tmp_path / "out", tokenizer_dir=tok_dir)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((out / name).read_text())
        assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 3, 2), name
    # a model that has its own padding id keeps it
    model = rotary_model(CausalLM, seed=26, d_model=32, n_head=4, d_ff=40, n_layer=1, pad_token_id=5)
    out = save_hf(model, tmp_path / "out2", tokenizer_dir=tok_dir)
    assert AutoModelForCausalLM.from_pretrained(out).config.pad_token_id == 5


def test_copy_hf_tokenizer_makes_a_tokenizer_rotary_loads(tmp_path):
    from rotary.tokenizer import load_tokenizer

    # a BERT directory with only the slow tokenizer's vocab.txt: tokenizer.json is made for it
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat",
                                               "sat", "##s", "on"]) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    dst = rhf.copy_hf_tokenizer(bert, tmp_path / "ckpt" / "tokenizer")
    assert dst == tmp_path / "ckpt" / "tokenizer" and (dst / "tokenizer.json").is_file()
    want = transformers.AutoTokenizer.from_pretrained(bert)("the cats sat on", add_special_tokens=False)["input_ids"]
    assert load_tokenizer(dst).encode("the cats sat on") == want == [5, 6, 8, 7, 9]
    # an export of rotary's own: the files come back as they were
    again = rhf.copy_hf_tokenizer(dst, tmp_path / "ckpt2" / "tokenizer")
    assert (again / "tokenizer.json").read_text() == (dst / "tokenizer.json").read_text()
    assert rhf.copy_hf_tokenizer(tmp_path / "ckpt", tmp_path / "none") is None  # no tokenizer files
    assert not (tmp_path / "none").exists()


def test_llama_dropout_is_dropped_with_a_warning():
    model = rotary_model(CausalLM, seed=13, d_model=32, n_head=4, d_ff=40, n_layer=1, dropout=0.1)
    with pytest.warns(UserWarning, match="dropout"):
        to_hf(model)


# ---------------------------------------------------------------------------------------------
# RoFormer: the RoPE layout itself
# ---------------------------------------------------------------------------------------------


def test_pairs_layout_equals_halves_layout_after_permutation():
    """HF RoFormer's adjacent-pairs rotation of x equals rotary's rotate-half of x[perm],
    permuted: f_pairs(x)[perm] == f_half(x[perm]). So permuting W_q/W_k rows is exact."""
    from transformers.models.roformer.modeling_roformer import RoFormerSelfAttention

    hd, T = 16, 12
    hf = RoFormerForMaskedLM(tiny_roformer_config(hidden_size=32, num_attention_heads=2))
    sinusoidal = hf.roformer.encoder.embed_positions(torch.Size([1, T]))[None, None]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 2, T, hd, generator=g)
    q_hf, k_hf = RoFormerSelfAttention.apply_rotary_position_embeddings(sinusoidal, q, k)
    perm = rhf.pairs_to_halves(hd)
    cos, sin = cos_sin(torch.arange(T), base_inv_freq(hd, 10000.0))
    torch.testing.assert_close(apply_rope(q[..., perm], cos, sin), q_hf[..., perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_rope(k[..., perm], cos, sin), k_hf[..., perm], atol=1e-5, rtol=0)
    # and scores are the same with or without the permutation
    torch.testing.assert_close(
        apply_rope(q[..., perm], cos, sin) @ apply_rope(k[..., perm], cos, sin).transpose(-1, -2),
        q_hf @ k_hf.transpose(-1, -2), atol=1e-4, rtol=0,
    )


def test_roformer_without_permutation_does_not_match(monkeypatch):
    """Teeth: with the permutation switched off, conversion must visibly fail parity."""
    torch.manual_seed(0)
    hf = randomize(RoFormerForMaskedLM(tiny_roformer_config()), 14)
    monkeypatch.setattr(rhf.roformer, "pairs_to_halves", lambda d: torch.arange(d))
    rot = from_hf(hf)
    inputs = batch(T=16, seed=15, types=2)
    gap = (hf_logits(hf, inputs) - rot_logits(rot, inputs)).abs().max().item()
    assert gap > 1e-2, f"unpermuted conversion still matches (gap {gap:.1e}): the test has no teeth"


# ---------------------------------------------------------------------------------------------
# RoFormer masked LM
# ---------------------------------------------------------------------------------------------

ROFORMER_HF_CASES = [
    pytest.param(dict(num_hidden_layers=1, type_vocab_size=2), id="gelu-1layer-tied"),
    pytest.param(
        dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=4, hidden_act="relu",
             type_vocab_size=3, tie_word_embeddings=False),
        id="relu-3layers-untied-3types",
    ),
    pytest.param(dict(num_hidden_layers=2, num_attention_heads=2, layer_norm_eps=1e-12), id="gelu-2heads-hd16"),
]


@pytest.mark.parametrize("kw", ROFORMER_HF_CASES)
def test_roformer_mlm_hf_to_rotary(kw):
    torch.manual_seed(16)
    hf = randomize(RoFormerForMaskedLM(tiny_roformer_config(**kw)), 16)
    rot = from_hf(hf)
    assert isinstance(rot, MaskedLM) and rot.config.tie_embeddings == hf.config.tie_word_embeddings
    types = hf.config.type_vocab_size
    for pad in (None, "right", "left"):
        inputs = batch(T=24, seed=17, types=types, pad=pad)
        max_diff(hf_logits(hf, inputs), rot_logits(rot, inputs), f"RoFormer MLM HF->rotary [{pad}]",
                 inputs["attention_mask"])


ROFORMER_ROTARY_CASES = [
    pytest.param(dict(n_layer=1, type_vocab_size=2), id="gelu-1layer-tied"),
    pytest.param(dict(n_layer=3, mlp="relu", type_vocab_size=3, tie_embeddings=False), id="relu-3layers-untied"),
    # HF RoFormer always has biases and token types: written as zeros, same function.
    pytest.param(dict(n_layer=2, bias=False, type_vocab_size=0, pad_token_id=None), id="nobias-notypes"),
]


@pytest.mark.parametrize("kw", ROFORMER_ROTARY_CASES)
def test_roformer_mlm_rotary_to_hf(kw, tmp_path):
    base = dict(d_model=32, n_head=4, d_ff=48, max_seq_len=64, mlp="gelu", norm="layernorm",
                norm_eps=1e-6, pre_norm=False, bias=True, causal=False, pad_token_id=PAD)
    model = rotary_model(MaskedLM, seed=18, **(base | kw))
    types = model.config.type_vocab_size
    inputs = [(p or "nopad", batch(T=21, seed=19, types=types, pad=p)) for p in (None, "right", "left")]
    check_rotary_to_hf(model, AutoModelForMaskedLM, tmp_path, "RoFormer MLM", inputs)


# ---------------------------------------------------------------------------------------------
# RoFormer sequence classifier
# ---------------------------------------------------------------------------------------------

CLS_CASES = [
    pytest.param(dict(num_labels=3, num_hidden_layers=1), id="3labels-1layer-gelu"),
    pytest.param(dict(num_labels=1, num_hidden_layers=3, hidden_act="relu", type_vocab_size=3),
                 id="regression-3layers-relu"),
]


@pytest.mark.parametrize("kw", CLS_CASES)
def test_roformer_classifier_hf_to_rotary(kw):
    torch.manual_seed(20)
    hf = randomize(RoFormerForSequenceClassification(tiny_roformer_config(**kw)), 20)
    rot = from_hf(hf)
    assert isinstance(rot, SequenceClassifier) and rot.pooling == "cls"
    assert rot.num_labels == kw["num_labels"]
    types = hf.config.type_vocab_size
    # cls pooling reads position 0, which left padding makes a pad: right padding only.
    for pad in (None, "right"):
        inputs = batch(T=18, seed=21, types=types, pad=pad)
        max_diff(hf_logits(hf, inputs), rot_logits(rot, inputs), f"RoFormer classifier (cls) HF->rotary [{pad}]")

    # Mean pooling has no HF class: compare with HF's own modules applied by hand.
    mean = SequenceClassifier(rot.config, num_labels=rot.num_labels, pooling="mean")
    mean.load_state_dict(rot.state_dict())
    mean.eval()
    head = hf.classifier
    for pad in ("right", "left"):
        inputs = batch(T=18, seed=22, types=types, pad=pad)
        with torch.no_grad():
            h = hf.roformer(**inputs).last_hidden_state
            m = inputs["attention_mask"][..., None].float()
            pooled = (h * m).sum(1) / m.sum(1)
            ref = head.out_proj(ACT2FN[hf.config.hidden_act](head.dense(pooled)))
        max_diff(ref, rot_logits(mean, inputs), f"RoFormer classifier (mean) vs HF modules [{pad}]")


def test_roformer_classifier_rotary_to_hf(tmp_path):
    model = rotary_model(
        SequenceClassifier, seed=23, d_model=32, n_head=4, d_ff=48, n_layer=3, max_seq_len=64,
        mlp="gelu", norm="layernorm", pre_norm=False, bias=True, causal=False, type_vocab_size=2,
        pad_token_id=PAD,
    )
    model.label_names = ["a", "b", "c"]
    inputs = [(p or "nopad", batch(T=15, seed=24, types=2, pad=p)) for p in (None, "right")]
    check_rotary_to_hf(model, AutoModelForSequenceClassification, tmp_path, "RoFormer classifier", inputs)
    assert to_hf(model).config.num_labels == 3
    assert to_hf(model).config.id2label == {0: "a", 1: "b", 2: "c"}  # HF pipelines print the names


def test_llama_classifier_hf_to_rotary():
    """A decoder classifier pools its last real token, as LlamaForSequenceClassification does."""
    torch.manual_seed(25)
    config = tiny_llama(seed=25).config
    config.num_labels = 3
    config.id2label = {0: "sports", 1: "finance", 2: "LABEL_2"}
    hf = randomize(LlamaForSequenceClassification(config), 25)
    rot = from_hf(hf)
    assert isinstance(rot, SequenceClassifier) and rot.pooling == "last" and rot.config.causal
    assert rot.label_names == ["sports", "finance", "2"]  # HF's placeholder becomes rotary's default
    for pad in (None, "right", "left"):
        inputs = batch(T=19, seed=26, pad=pad)
        max_diff(hf_logits(hf, inputs), rot_logits(rot, inputs), f"Llama classifier HF->rotary [{pad}]")


def test_llama_classifier_rotary_to_hf(tmp_path):
    model = rotary_model(SequenceClassifier, seed=27, pooling="last", d_model=32, n_head=4, n_kv_head=2, d_ff=40,
                         n_layer=2, max_seq_len=64, pad_token_id=PAD)
    model.label_names = ["neg", "neu", "pos"]
    inputs = [(p or "nopad", batch(T=15, seed=28, pad=p)) for p in (None, "right", "left")]
    check_rotary_to_hf(model, AutoModelForSequenceClassification, tmp_path, "Llama classifier", inputs)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and hf.config.label2id["pos"] == 2
    assert from_hf(tmp_path / "hf").label_names == ["neg", "neu", "pos"]


def test_classifier_pooling_follows_the_backbone():
    with pytest.raises(RotaryError, match="pooling last"):
        SequenceClassifier(ModelConfig(vocab_size=VOCAB, max_seq_len=32, **_LLAMA), 2, pooling="cls")
    # last-token pooling reads the rightmost real token of each row, wherever the padding is
    model = SequenceClassifier(ModelConfig(vocab_size=VOCAB, max_seq_len=32, **_LLAMA), 2, pooling="last")
    h = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert model.pool(h, mask).flatten().tolist() == [2.0, 9.0]


def test_last_pooling_head_is_the_bare_score_projection_even_in_training():
    # LlamaForSequenceClassification applies no dropout between the last token and `score`; a
    # dropout there changes only training (eval parity tests cannot see it)
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(vocab_size=VOCAB, max_seq_len=32, dropout=0.5, **_LLAMA), 3,
                               pooling="last").train()
    ids = torch.randint(1, VOCAB, (2, 7))
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    torch.manual_seed(1)
    logits = model(ids, attention_mask=mask)
    torch.manual_seed(1)  # the same dropout draws inside the backbone
    h = model.backbone(ids, mask)
    torch.testing.assert_close(logits, model.score(h[torch.arange(2), torch.tensor([6, 6])]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, kw",
    [
        pytest.param("llama", dict(n_kv_head=2, tie_embeddings=False), id="llama-plain"),
        pytest.param("llama", dict(rope_scaling="linear", rope_scaling_factor=2.0), id="llama-linear"),
        pytest.param("llama", dict(rope_scaling="dynamic_ntk", rope_scaling_factor=2.0), id="llama-dynamic"),
        pytest.param(
            "llama",
            dict(rope_scaling="yarn", rope_scaling_factor=8.0, rope_original_max_seq_len=32,
                 yarn_beta_fast=16.0, yarn_beta_slow=2.0, bias=True),
            id="llama-yarn-bias",
        ),
        pytest.param(
            "roformer",
            dict(mlp="relu", hidden_act="relu", norm="layernorm", pre_norm=False, bias=True, causal=False,
                 type_vocab_size=2, norm_eps=1e-12, dropout=0.1, attention_dropout=0.1),
            id="roformer",
        ),
    ],
)
def test_config_round_trip(kind, kw):
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_head=4, d_ff=96, max_seq_len=128, **kw)
    assert config_from_hf(config_to_hf(cfg, kind)) == cfg


# ---------------------------------------------------------------------------------------------
# mappings that cannot hold: clear RotaryErrors
# ---------------------------------------------------------------------------------------------

HF_REFUSED = [
    pytest.param(tiny_roformer_config(hidden_act="gelu_new"), "hidden_act", id="roformer-gelu_new"),
    pytest.param(tiny_roformer_config(hidden_act="silu"), "hidden_act", id="roformer-silu"),
    pytest.param(tiny_roformer_config(is_decoder=True), "encoders", id="roformer-decoder"),
    pytest.param(LlamaConfig(hidden_size=32, num_attention_heads=4, hidden_act="gelu"), "hidden_act", id="llama-gelu"),
    pytest.param(LlamaConfig(hidden_size=32, num_attention_heads=4, head_dim=16), "head_dim", id="llama-head_dim"),
    pytest.param(
        LlamaConfig(hidden_size=32, num_attention_heads=4, attention_bias=True, mlp_bias=False),
        "mlp_bias", id="llama-bias-mismatch",
    ),
    pytest.param(
        LlamaConfig(hidden_size=32, num_attention_heads=4, rope_parameters={
            "rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, max_position_embeddings=128),
        "llama3", id="llama-llama3-rope",
    ),
    pytest.param(
        LlamaConfig(hidden_size=32, num_attention_heads=4,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
        "partial_rotary_factor", id="llama-partial-rotary",
    ),
    pytest.param(
        LlamaConfig(hidden_size=32, num_attention_heads=4,
                    rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 1.0}),
        "factor 1", id="llama-dynamic-factor1",
    ),
    pytest.param(
        LlamaConfig(hidden_size=32, num_attention_heads=4, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "attention_factor": 2.0,
            "original_max_position_embeddings": 16}, max_position_embeddings=64),
        "attention factor", id="llama-yarn-attention-factor",
    ),
    pytest.param(
        LlamaConfig(hidden_size=32, num_attention_heads=4, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "truncate": False,
            "original_max_position_embeddings": 16}, max_position_embeddings=64),
        "truncate", id="llama-yarn-no-truncate",
    ),
]


@pytest.mark.parametrize("hf_config, match", HF_REFUSED)
def test_from_hf_refuses(hf_config, match):
    with pytest.raises(RotaryError, match=match):
        config_from_hf(hf_config)


_LLAMA = dict(d_model=32, n_head=4, d_ff=40, n_layer=1)
_ROFORMER = dict(d_model=32, n_head=4, d_ff=48, n_layer=1, mlp="gelu", norm="layernorm",
                 pre_norm=False, bias=True, causal=False, type_vocab_size=2)

TO_HF_REFUSED = [
    pytest.param(CausalLM, _LLAMA | dict(position="learned"), "position=learned", id="llama-learned"),
    pytest.param(CausalLM, _LLAMA | dict(position="sinusoidal"), "position=sinusoidal", id="llama-sinusoidal"),
    pytest.param(CausalLM, _LLAMA | dict(position="none"), "position=none", id="llama-nope"),
    pytest.param(CausalLM, _LLAMA | dict(norm="layernorm"), "RMSNorm", id="llama-layernorm"),
    pytest.param(CausalLM, _LLAMA | dict(mlp="gelu"), "SwiGLU", id="llama-gelu"),
    pytest.param(CausalLM, _LLAMA | dict(rotary_fraction=0.5), "partial rotary", id="llama-partial-rotary"),
    pytest.param(CausalLM, _LLAMA | dict(type_vocab_size=2), "token-type", id="llama-token-types"),
    pytest.param(CausalLM, _LLAMA | dict(pre_norm=False), "post-norm", id="llama-post-norm"),
    pytest.param(CausalLM, _LLAMA | dict(causal=False), "bidirectional", id="llama-bidirectional"),
    pytest.param(MaskedLM, _ROFORMER | dict(norm="rmsnorm"), "LayerNorm", id="roformer-rmsnorm"),
    pytest.param(MaskedLM, _ROFORMER | dict(pre_norm=True), "pre-norm", id="roformer-pre-norm"),
    pytest.param(MaskedLM, _ROFORMER | dict(mlp="swiglu"), "gelu or relu", id="roformer-swiglu"),
    pytest.param(MaskedLM, _ROFORMER | dict(hidden_act="gelu_tanh"), "one hidden_act", id="roformer-head-act"),
    pytest.param(MaskedLM, _ROFORMER | dict(n_kv_head=2), "grouped", id="roformer-gqa"),
    pytest.param(MaskedLM, _ROFORMER | dict(rope_theta=500.0), "10000", id="roformer-theta"),
    pytest.param(MaskedLM, _ROFORMER | dict(rope_scaling="linear", rope_scaling_factor=2.0), "scaling",
                 id="roformer-scaling"),
    pytest.param(MaskedLM, _ROFORMER | dict(position="learned"), "position=learned", id="roformer-learned"),
    pytest.param(MaskedLM, _ROFORMER | dict(causal=True), "encoder", id="roformer-causal"),
    pytest.param(MaskedLM, _ROFORMER | dict(rotary_fraction=0.5), "whole heads", id="roformer-partial-rotary"),
]


@pytest.mark.parametrize("cls, kw, match", TO_HF_REFUSED)
def test_to_hf_refuses(cls, kw, match):
    model = cls(ModelConfig(vocab_size=VOCAB, max_seq_len=32, **kw))
    with pytest.raises(RotaryError, match=match):
        to_hf(model)


def test_to_hf_refuses_mean_pooling():
    model = SequenceClassifier(ModelConfig(vocab_size=VOCAB, max_seq_len=32, **_ROFORMER), 2, pooling="mean")
    with pytest.raises(RotaryError, match="pooling=mean"):
        to_hf(model)


def test_refuses_other_models_and_paths(tmp_path):
    with pytest.raises(RotaryError, match="LlamaForTokenClassification"):
        from_hf(LlamaForTokenClassification(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4)))
    with pytest.raises(RotaryError, match="no config.json"):
        from_hf(tmp_path / "missing")
    with pytest.raises(RotaryError, match="unknown HF kind"):
        config_to_hf(ModelConfig(vocab_size=VOCAB, **_LLAMA), "gpt2")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# RoFormer's embedding_size != hidden_size (embeddings_project) and rotary_value
# ---------------------------------------------------------------------------------------------

ROFORMER_VARIANTS = [
    pytest.param(dict(embedding_size=16), id="embedding16-hidden32-tied"),
    pytest.param(dict(embedding_size=48, tie_word_embeddings=False, num_hidden_layers=1), id="embedding48-untied"),
    pytest.param(dict(rotary_value=True), id="rotary_value"),
    pytest.param(dict(embedding_size=16, rotary_value=True, num_attention_heads=2), id="embedding16-rotary_value"),
]


@pytest.mark.parametrize("kw", ROFORMER_VARIANTS)
@pytest.mark.parametrize("cls", [RoFormerForMaskedLM, RoFormerForSequenceClassification], ids=["mlm", "cls"])
def test_roformer_variants_hf_to_rotary_and_back(kw, cls, tmp_path):
    torch.manual_seed(30)
    hf = randomize(cls(tiny_roformer_config(**kw)), 30)
    if "embedding_size" in kw:
        assert hasattr(hf.roformer, "embeddings_project")  # the case HF builds a projection for
    rot = from_hf(hf)
    assert rot.config.embed_dim == hf.config.embedding_size and rot.config.rotary_value == hf.config.rotary_value
    # left padding: rotary counts positions from the first real token, HF from the first pad;
    # rotated values (unlike scores) see absolute positions, so only the unpadded answer is HF's
    left = cls is RoFormerForMaskedLM and not kw.get("rotary_value")
    pads = (None, "right", "left") if left else (None, "right")
    inputs = [(p or "nopad", batch(T=20, seed=31, types=2, pad=p)) for p in pads]
    for name, inp in inputs:
        mask = inp["attention_mask"] if cls is RoFormerForMaskedLM else None
        max_diff(hf_logits(hf, inp), rot_logits(rot, inp), f"RoFormer {kw} HF->rotary [{name}]", mask)
    auto = AutoModelForMaskedLM if cls is RoFormerForMaskedLM else AutoModelForSequenceClassification
    check_rotary_to_hf(rot, auto, tmp_path, f"RoFormer {kw}", inputs)
    assert config_to_hf(rot.config, "roformer").embedding_size == hf.config.embedding_size


def test_rotary_value_needs_the_output_columns_permuted(monkeypatch):
    """rotary_value rotates V in HF's pairs layout: without permuting W_o's columns with V's rows
    the converted model computes something else (the test above would not be vacuous)."""
    from rotary.hf import roformer

    torch.manual_seed(32)
    hf = randomize(RoFormerForMaskedLM(tiny_roformer_config(rotary_value=True)), 32)
    monkeypatch.setitem(roformer.TRANSFORMS, "roformer.encoder.layer.{}.attention.output.dense.weight",
                        rhf.adapter.Transform(from_hf=lambda t, cfg: t, to_hf=lambda t, cfg: t))
    inp = batch(T=16, seed=33, types=2)
    assert (hf_logits(hf, inp) - rot_logits(from_hf(hf), inp)).abs().max() > 1e-2


def test_embedding_size_model_config_round_trip():
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_head=4, d_ff=96, max_seq_len=128, mlp="gelu",
                      norm="layernorm", pre_norm=False, bias=True, causal=False, type_vocab_size=2,
                      hidden_act="gelu", embedding_size=24, rotary_value=True)
    assert config_from_hf(config_to_hf(cfg, "roformer")) == cfg
    # the parameter estimate counts the projection and the narrower embeddings
    for c in (cfg, cfg.replace(pre_norm=True, norm="rmsnorm")):
        c = c.replace(tie_embeddings=False)  # a causal LM ties only embeddings of width d_model
        assert c.estimate_num_parameters() == CausalLM(c).num_parameters()
    with pytest.raises(RotaryError, match="tie"):
        CausalLM(cfg)


@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(embedding_size=16, tie_embeddings=False), "embedding projection", id="embedding_size"),
    pytest.param(dict(rotary_value=True), "rotary_value", id="rotary_value"),
])
def test_llama_refuses_roformer_only_settings(kw, match):
    with pytest.raises(RotaryError, match=match):
        to_hf(CausalLM(ModelConfig(vocab_size=VOCAB, max_seq_len=32, **_LLAMA, **kw)))


def test_an_exported_bpe_decoder_classifier_reads_and_pools_as_in_rotary(data_bpe_dir, tmp_path):
    """rotary reads each text (and each text of a pair) followed by <|endoftext|> and pools that
    last real token; the exported tokenizer appends the same EOS, and a padding token of its own
    lets LlamaForSequenceClassification find it in a padded batch: the same probabilities."""
    from transformers import AutoTokenizer

    import rotary
    from rotary import checkpoint as ckpt
    from rotary.cli import main
    from rotary.hf.files import PAD_TOKEN
    from rotary.tokenizer import load_tokenizer

    tok = load_tokenizer(data_bpe_dir)
    torch.manual_seed(3)
    model = SequenceClassifier(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=64, **_LLAMA), 3, pooling="last")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.label_names = ["neg", "neu", "pos"]
    run = tmp_path / "run"
    ckpt.write_checkpoint_dir(run / "best", ckpt.CheckpointContent(
        config=ckpt.checkpoint_config("classification", model.config, {"num_labels": 3, "pooling": "last",
                                                                         "label_names": model.label_names}),
        model_state=ckpt.model_state_for_saving(model), trainer_state={"step": 0}, tokenizer_dir=data_bpe_dir))
    assert main(["convert", str(run), "--to", "hf", str(tmp_path / "hf")]) == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.pad_token_id == hf_tok.pad_token_id == hf_tok.convert_tokens_to_ids(PAD_TOKEN)
    pre = rotary.load(run, device="cpu")
    texts = ["To be, or not to be", "a", "Now is the winter of our discontent made glorious summer"]
    ours = pre.classify(texts)
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    assert enc["input_ids"][0, -1] == hf_tok.pad_token_id  # the batch really is padded
    assert enc["input_ids"][2, -1] == tok.eos_id  # ... and each text ends in <|endoftext|>
    with torch.no_grad():
        probs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.softmax(-1)
    for row, theirs in zip(ours, probs):
        got = [row["probabilities"][name] for name in model.label_names]
        assert got == pytest.approx(theirs.tolist(), abs=1e-5), (got, theirs)
    # and back: rotary appends the EOS itself (not twice) and pads with the new token
    assert main(["convert", str(tmp_path / "hf"), "--from-hf", str(tmp_path / "back")]) == 0
    back = rotary.load(tmp_path / "back", device="cpu")
    assert back.tokenizer.encode_for_model(["a"], None, max_len=8)[0].ids == tok.encode_for_model(["a"], None,
                                                                                                   max_len=8)[0].ids
    for a, b in zip(ours, back.classify(texts)):
        assert [a["probabilities"][n] for n in model.label_names] == pytest.approx(
            [b["probabilities"][n] for n in model.label_names], abs=1e-6)
