"""HF RoFormer <-> rotary MaskedLM / SequenceClassifier: the config mapping and the name map.

RoFormer rotates adjacent pairs, rotary rotates halves (the two layouts are written out at the
end of ``rotary/model/rope.py``): the rows of W_q and W_k, and of their biases, are reordered
per head by ``pairs_to_halves`` on the way in and by its inverse on the way out. rotary fuses
the attention projections into ``qkv_proj`` (rows = [q | k | v]).

Decisions where the two sides differ:

* RoFormer always has linear biases and a token-type embedding. A rotary encoder without them
  is written with zero biases / one all-zero token type, which computes the same function.
* HF RoFormer's RoPE is a stored sinusoidal table: ``from_hf`` checks it is the standard
  base-10000 one, ``to_hf`` leaves it to HF, which builds it itself.
* ``embedding_size`` != ``hidden_size`` (HF's ``embeddings_project``) is rotary's
  ``embedding_size`` with ``backbone.embed_project``; ``rotary_value`` has the same name. Rotated
  values change layout with Q and K, so the output projection's columns are permuted with them.
"""

from __future__ import annotations

from typing import Any

import torch

from rotary.errors import RotaryError
from rotary.hf.adapter import (
    Architecture,
    Family,
    NameMap,
    Transform,
    bert_style_fields_from_hf,
    bert_style_fields_to_hf,
    fused,
    labelled,
    permute_heads,
    require,
    require_rope_softmax,
    transformers_module,
    with_labels,
)
from rotary.model.classifier import SequenceClassifier
from rotary.model.config import ModelConfig
from rotary.model.heads import MaskedLM, RotaryModel
from rotary.model.rope import base_inv_freq, halves_to_pairs, pairs_to_halves

# HF activation names that are exactly rotary's MLP activations (RoFormer uses one for all).
_ACTS = {"gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
_THETA = 10000.0  # fixed in HF RoFormer's sinusoidal table

# ---------------------------------------------------------------------------------------------
# State-dict names: rotary -> HF ("{}" = layer index; a tuple = fused along dim 0, in order)
# ---------------------------------------------------------------------------------------------

_E, _R, _H = "roformer.embeddings.", "backbone.layers.{}.", "roformer.encoder.layer.{}."
BACKBONE: NameMap = {
    "backbone.embed_tokens.weight": _E + "word_embeddings.weight",
    "backbone.embed_types.weight": _E + "token_type_embeddings.weight",
    "backbone.embed_norm.weight": _E + "LayerNorm.weight",
    "backbone.embed_norm.bias": _E + "LayerNorm.bias",
    _R + "attn.qkv_proj.weight": fused(_H + "attention.self.*.weight", "query", "key", "value"),
    _R + "attn.qkv_proj.bias": fused(_H + "attention.self.*.bias", "query", "key", "value"),
    _R + "attn.o_proj.weight": _H + "attention.output.dense.weight",
    _R + "attn.o_proj.bias": _H + "attention.output.dense.bias",
    _R + "attn_norm.weight": _H + "attention.output.LayerNorm.weight",  # post-norm
    _R + "attn_norm.bias": _H + "attention.output.LayerNorm.bias",
    _R + "mlp.up_proj.weight": _H + "intermediate.dense.weight",
    _R + "mlp.up_proj.bias": _H + "intermediate.dense.bias",
    _R + "mlp.down_proj.weight": _H + "output.dense.weight",
    _R + "mlp.down_proj.bias": _H + "output.dense.bias",
    _R + "mlp_norm.weight": _H + "output.LayerNorm.weight",
    _R + "mlp_norm.bias": _H + "output.LayerNorm.bias",
}

# Only when the embeddings are narrower than the blocks (HF creates embeddings_project then).
EMBED_PROJECT: NameMap = {
    "backbone.embed_project.weight": "roformer.embeddings_project.weight",
    "backbone.embed_project.bias": "roformer.embeddings_project.bias",
}

# Q and K change RoPE layout (pairs <-> halves) per head; V is not rotated, so it stays, unless
# rotary_value rotates it too. pairs_to_halves is looked up at call time: the parity test
# switches it off to show it matters.
ROPE_LAYOUT = Transform(
    from_hf=lambda t, cfg: permute_heads(t, cfg.n_head, pairs_to_halves(cfg.head_dim)),
    to_hf=lambda t, cfg: permute_heads(t, cfg.n_head, halves_to_pairs(cfg.head_dim)),
)
# rotary_value: V's rows change layout like Q's and K's, and so the attention output's features,
# which W_o's columns read: W_o' = W_o P^T keeps W_o' (P y) = W_o y.
VALUE_LAYOUT = Transform(
    from_hf=lambda t, cfg: ROPE_LAYOUT.from_hf(t, cfg) if cfg.rotary_value else t,
    to_hf=lambda t, cfg: ROPE_LAYOUT.to_hf(t, cfg) if cfg.rotary_value else t,
)
OUTPUT_COLUMNS = Transform(
    from_hf=lambda t, cfg: ROPE_LAYOUT.from_hf(t.T, cfg).T.contiguous() if cfg.rotary_value else t,
    to_hf=lambda t, cfg: ROPE_LAYOUT.to_hf(t.T, cfg).T.contiguous() if cfg.rotary_value else t,
)
TRANSFORMS = {
    **{_H + f"attention.self.{proj}.{p}": ROPE_LAYOUT for proj in ("query", "key") for p in ("weight", "bias")},
    **{_H + f"attention.self.value.{p}": VALUE_LAYOUT for p in ("weight", "bias")},
    _H + "attention.output.dense.weight": OUTPUT_COLUMNS,
}

_P = "cls.predictions."
_MLM_TRANSFORM: NameMap = {
    "head.dense.weight": _P + "transform.dense.weight",
    "head.dense.bias": _P + "transform.dense.bias",
    "head.norm.weight": _P + "transform.LayerNorm.weight",
    "head.norm.bias": _P + "transform.LayerNorm.bias",
}
# Tied: the decoder is the word embedding and its bias is predictions.bias. Untied: HF's forward
# uses decoder.bias (predictions.bias is then unused).
MLM_HEAD_TIED: NameMap = _MLM_TRANSFORM | {"head.bias": _P + "bias"}
MLM_HEAD_UNTIED: NameMap = _MLM_TRANSFORM | {
    "head.bias": _P + "decoder.bias",
    "head.decoder.weight": _P + "decoder.weight",
}
# The HF tensors that repeat a mapped one, written by to_hf too: HF name -> rotary name.
MLM_COPIES_TIED = {
    _P + "decoder.bias": "head.bias",
    _P + "decoder.weight": "backbone.embed_tokens.weight",
}
MLM_COPIES_UNTIED = {_P + "bias": "head.bias"}

CLASSIFIER_HEAD: NameMap = {
    "dense.weight": "classifier.dense.weight",
    "dense.bias": "classifier.dense.bias",
    "out_proj.weight": "classifier.out_proj.weight",
    "out_proj.bias": "classifier.out_proj.bias",
}


def _check_positions(hf_model: Any, hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """HF RoFormer's RoPE lives in a stored table: make sure it is the standard one."""
    weight = hf_model.roformer.encoder.embed_positions.weight
    if weight.device.type == "meta":
        return
    positions = torch.arange(weight.shape[0], dtype=torch.float64)[:, None]
    angles = positions * base_inv_freq(cfg.head_dim, _THETA)  # (max_pos, hd/2)
    expected = torch.cat((angles.sin(), angles.cos()), dim=-1)  # HF's [sin | cos] table
    if weight.shape != expected.shape or (weight.double().cpu() - expected).abs().max() > 1e-4:
        raise RotaryError(
            "this RoFormer's sinusoidal position table is not the standard base-10000 one"
        )


# ---------------------------------------------------------------------------------------------
# Config mapping
# ---------------------------------------------------------------------------------------------


def config_from_hf(hfc: Any) -> ModelConfig:
    """The rotary config of a transformers ``RoFormerConfig`` (RotaryError if not reproducible)."""
    if getattr(hfc, "is_decoder", False) or getattr(hfc, "add_cross_attention", False):
        raise RotaryError("only RoFormer encoders convert (is_decoder=False, no cross-attention)")
    act = hfc.hidden_act if isinstance(hfc.hidden_act, str) else None
    if act not in _ACTS:
        raise RotaryError(
            f"RoFormer hidden_act {hfc.hidden_act!r} is not representable: rotary's MLP is "
            f"{' or '.join(sorted(set(_ACTS)))} (exact erf GELU or ReLU)"
        )
    act = _ACTS[act]
    return ModelConfig(
        **bert_style_fields_from_hf(hfc),
        n_kv_head=None,
        # None when equal: a plain config round-trips to itself
        embedding_size=None if hfc.embedding_size == hfc.hidden_size else hfc.embedding_size,
        mlp=act,
        norm="layernorm",
        norm_eps=float(hfc.layer_norm_eps),
        pre_norm=False,
        bias=True,
        dropout=float(hfc.hidden_dropout_prob),
        attention_dropout=float(hfc.attention_probs_dropout_prob),
        causal=False,
        rope_theta=_THETA,
        rope_scaling="none",
        rotary_value=bool(hfc.rotary_value),
        type_vocab_size=hfc.type_vocab_size,
        hidden_act=act,
    )


def config_to_hf(cfg: ModelConfig, num_labels: int | None = None) -> Any:
    """A transformers ``RoFormerConfig`` for ``cfg``: a masked LM's, or a sequence classifier's
    when ``num_labels`` is given (RotaryError naming what RoFormer cannot express)."""
    tf = transformers_module()
    fam = "RoFormer"
    require(not cfg.causal, fam, "RoFormer is an encoder, this model is causal")
    require_rope_softmax(cfg, fam)
    require(not cfg.pre_norm, fam, "RoFormer is post-norm, this model is pre-norm (pre_norm=True)")
    require(cfg.norm == "layernorm", fam,
            f"RoFormer uses LayerNorm, this model uses norm={cfg.norm}")
    require(cfg.mlp in ("gelu", "relu"), fam,
            f"RoFormer's MLP is gelu or relu, this model uses mlp={cfg.mlp}")
    require(
        cfg.head_act == cfg.mlp, fam,
        f"RoFormer uses one hidden_act for the MLP and the heads, this model has mlp={cfg.mlp} "
        f"but head activation {cfg.head_act}",
    )
    require(cfg.kv_heads == cfg.n_head, fam,
            f"RoFormer has no grouped K/V heads (n_kv_head={cfg.n_kv_head})")
    require(cfg.rotary_fraction == 1.0, fam,
            f"RoFormer rotates whole heads (rotary_fraction={cfg.rotary_fraction})")
    require(cfg.rope_theta == _THETA, fam,
            f"RoFormer's RoPE base is fixed at 10000, this model uses {cfg.rope_theta:g}")
    require(cfg.rope_scaling == "none", fam,
            f"RoFormer has no RoPE scaling (rope_scaling={cfg.rope_scaling})")
    extra = {} if num_labels is None else {"num_labels": num_labels}
    head = "RoFormerForMaskedLM" if num_labels is None else "RoFormerForSequenceClassification"
    return tf.RoFormerConfig(
        **bert_style_fields_to_hf(cfg),
        embedding_size=cfg.embed_dim,
        hidden_act=cfg.mlp,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        # HF always adds a token-type embedding: one all-zero type stands for "none".
        type_vocab_size=max(cfg.type_vocab_size, 1),
        layer_norm_eps=cfg.norm_eps,
        rotary_value=cfg.rotary_value,
        is_decoder=False,
        architectures=[head],
        **extra,
    )


# ---------------------------------------------------------------------------------------------
# The two heads
# ---------------------------------------------------------------------------------------------


def _backbone(cfg: ModelConfig) -> NameMap:
    return BACKBONE | (EMBED_PROJECT if cfg.embed_dim != cfg.d_model else {})


def _masked_lm_hf_config(model: RotaryModel) -> Any:
    return config_to_hf(model.config)


def _classifier_hf_config(model: RotaryModel) -> Any:
    assert isinstance(model, SequenceClassifier)
    if model.pooling != "cls":
        raise RotaryError(
            "cannot express this model as HF RoFormer: RoFormerForSequenceClassification pools "
            f"the first token, this classifier uses pooling={model.pooling}"
        )
    return with_labels(config_to_hf(model.config, num_labels=model.num_labels), model)


MASKED_LM = Architecture(
    hf_class="RoFormerForMaskedLM",
    rotary_class=MaskedLM,
    build=lambda cfg, hfc: MaskedLM(cfg),
    hf_config=_masked_lm_hf_config,
    names=lambda cfg: _backbone(cfg) | (MLM_HEAD_TIED if cfg.tie_embeddings else MLM_HEAD_UNTIED),
    hf_copies=lambda cfg: MLM_COPIES_TIED if cfg.tie_embeddings else MLM_COPIES_UNTIED,
)
SEQUENCE_CLASSIFIER = Architecture(
    hf_class="RoFormerForSequenceClassification",
    rotary_class=SequenceClassifier,
    build=lambda cfg, hfc: labelled(SequenceClassifier(cfg, num_labels=hfc.num_labels, pooling="cls"), hfc),
    hf_config=_classifier_hf_config,
    names=lambda cfg: _backbone(cfg) | CLASSIFIER_HEAD,
    accepts=lambda model: getattr(model, "pooling", None) != "last",
)
FAMILY = Family(
    model_type="roformer",
    architectures=(MASKED_LM, SEQUENCE_CLASSIFIER),
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    transforms=TRANSFORMS,
    zero_fill=True,
    hf_generated=("roformer.encoder.embed_positions.",),  # the fixed sinusoidal table
    prepare_from_hf=_check_positions,
)
