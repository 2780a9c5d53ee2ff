"""HF Llama <-> rotary CausalLM: the config mapping and the state-dict name map.

rotary and HF Llama both rotate halves, so no tensor is permuted; rotary only fuses
``qkv_proj`` (rows = [q heads | k heads | v heads]) and SwiGLU's ``up_proj`` (rows = [gate | up]).

Decisions where the two sides differ:

* Dynamic NTK at factor 1: rotary's is plain RoPE (the base changes only when factor > 1), but
  transformers rescales the base past ``max_position_embeddings`` even at factor 1. ``to_hf``
  therefore writes rotary's dynamic-at-factor-1 as ``rope_type="default"`` (identical
  behaviour), and ``from_hf`` refuses HF's dynamic-at-factor-1 (rotary cannot reproduce it).
* Dynamic NTK measures the context against ``max_position_embeddings`` in transformers and
  against ``original_max_seq_len`` in rotary, so ``to_hf`` writes the latter there.
  Two behaviours differ past the original context and are not conversion errors: rotary
  takes each padded row's base from that row's real length (HF: the batch's longest
  position), and HF keeps the longest base it has seen until a call shorter than the
  original context resets it (rotary recomputes it every call). Unpadded batches, and each
  row run alone in a fresh HF model, give the same logits.
* A decoder classifier pools its last real token: rotary finds it from ``attention_mask``,
  transformers from ``input_ids != pad_token_id``. The two agree when the padding id never
  occurs in real text (rotary's tokenizers pad with an id of their own, or 0 with a mask). A
  classifier on a byte-level BPE vocabulary (no padding token; each text ends in
  ``<|endoftext|>``) is exported by ``save_hf`` with a tokenizer that appends that EOS and a
  ``<|pad|>`` token of its own (``rotary.hf.files``), so padded batches agree too.
* rotary's residual/embedding ``dropout`` has no Llama field: ``to_hf`` drops it with a warning
  (inference is unaffected; training in transformers would run without it).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from rotary.errors import RotaryError
from rotary.hf.adapter import (
    Architecture,
    Family,
    NameMap,
    bert_style_fields_from_hf,
    bert_style_fields_to_hf,
    fused,
    labelled,
    require,
    require_rope_softmax,
    transformers_module,
    with_labels,
)
from rotary.model.classifier import SequenceClassifier
from rotary.model.config import ModelConfig
from rotary.model.heads import CausalLM, RotaryModel
from rotary.model.rope import yarn_attention_scale

_ACTS = ("silu", "swish")  # HF activation names that are exactly SwiGLU's SiLU gate

# ---------------------------------------------------------------------------------------------
# State-dict names: rotary -> HF ("{}" = layer index; a tuple = fused along dim 0, in order)
# ---------------------------------------------------------------------------------------------

_R, _H = "backbone.layers.{}.", "model.layers.{}."
NAMES: NameMap = {
    "backbone.embed_tokens.weight": "model.embed_tokens.weight",
    _R + "attn_norm.weight": _H + "input_layernorm.weight",
    _R + "attn.qkv_proj.weight": fused(_H + "self_attn.*_proj.weight", "q", "k", "v"),
    _R + "attn.qkv_proj.bias": fused(_H + "self_attn.*_proj.bias", "q", "k", "v"),
    _R + "attn.o_proj.weight": _H + "self_attn.o_proj.weight",
    _R + "attn.o_proj.bias": _H + "self_attn.o_proj.bias",
    _R + "mlp_norm.weight": _H + "post_attention_layernorm.weight",
    _R + "mlp.up_proj.weight": (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"),
    _R + "mlp.up_proj.bias": (_H + "mlp.gate_proj.bias", _H + "mlp.up_proj.bias"),
    _R + "mlp.down_proj.weight": _H + "mlp.down_proj.weight",
    _R + "mlp.down_proj.bias": _H + "mlp.down_proj.bias",
    "backbone.final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def _prepare_from_hf(hf_model: Any, hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """A state dict that stores a tied head once gets it back; a tied head must be the embedding."""
    if "score.weight" in hf_state:  # a sequence classifier: no LM head
        return
    embedding = hf_state["model.embed_tokens.weight"]
    lm_head = hf_state.setdefault("lm_head.weight", embedding)
    if cfg.tie_embeddings and not torch.equal(lm_head, embedding):
        raise RotaryError(
            "config says tie_word_embeddings=True but lm_head differs from the embedding"
        )


# ---------------------------------------------------------------------------------------------
# Config: HF -> rotary
# ---------------------------------------------------------------------------------------------


def _rope_params(hfc: Any) -> dict[str, Any]:
    """The RoPE settings of a Llama config: v5 ``rope_parameters``, or v4 ``rope_scaling`` +
    ``rope_theta``."""
    params = dict(getattr(hfc, "rope_parameters", None) or getattr(hfc, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(hfc, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    partial = getattr(hfc, "partial_rotary_factor", None)
    if params.get("partial_rotary_factor") is None and partial is not None:
        params["partial_rotary_factor"] = partial
    return params


def _hf_yarn_attention_factor(params: dict[str, Any], factor: float) -> float:
    """transformers' YaRN attention factor (explicit, or from mscale/mscale_all_dim, or the
    default)."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m, m_all = params.get("mscale"), params.get("mscale_all_dim")
    if m and m_all:
        return mscale(factor, m) / mscale(factor, m_all)
    return mscale(factor)


def _rope_from_hf(hfc: Any) -> dict[str, Any]:
    params = _rope_params(hfc)
    partial = params.get("partial_rotary_factor") or 1.0
    if partial != 1.0:
        raise RotaryError(
            f"Llama config has partial_rotary_factor={partial}: HF Llama rotates whole heads, "
            "so such a checkpoint is not a Llama that rotary can reproduce"
        )
    fields: dict[str, Any] = {"rope_theta": float(params["rope_theta"])}
    rtype = params["rope_type"]
    mpe = hfc.max_position_embeddings
    if rtype == "default":
        return fields | {"rope_scaling": "none"}
    if rtype == "linear":
        fields |= {"rope_scaling": "linear", "rope_scaling_factor": float(params["factor"])}
        if params.get("original_max_position_embeddings"):
            fields["rope_original_max_seq_len"] = int(params["original_max_position_embeddings"])
        return fields
    if rtype == "dynamic":
        factor = float(params["factor"])
        if factor == 1.0:
            raise RotaryError(
                "Llama config uses dynamic RoPE with factor 1: transformers still rescales the "
                "base past max_position_embeddings there, while rotary's dynamic_ntk is plain RoPE "
                "at factor 1; set rope_type 'default' (same outputs within the context) or a "
                "factor > 1"
            )
        # transformers measures the context against max_position_embeddings, not original_*.
        return fields | {"rope_scaling": "dynamic_ntk", "rope_scaling_factor": factor}
    if rtype == "yarn":
        orig = int(params.get("original_max_position_embeddings") or mpe)
        factor = params.get("factor")
        factor = float(factor) if factor is not None else mpe / orig
        if params.get("truncate", True) is False:
            raise RotaryError(
                "YaRN with truncate=False is not supported: rotary rounds the correction range "
                "as the paper does"
            )
        hf_scale = _hf_yarn_attention_factor(params, factor)
        if abs(hf_scale - yarn_attention_scale(factor)) > 1e-9:
            raise RotaryError(
                f"YaRN attention factor {hf_scale:g} (from attention_factor/mscale) differs from "
                f"the paper's 0.1*ln(factor)+1 = {yarn_attention_scale(factor):g} that rotary uses"
            )
        return fields | {
            "rope_scaling": "yarn",
            "rope_scaling_factor": factor,
            "rope_original_max_seq_len": orig,
            "yarn_beta_fast": float(params.get("beta_fast") or 32.0),
            "yarn_beta_slow": float(params.get("beta_slow") or 1.0),
        }
    raise RotaryError(
        f"Llama rope_type '{rtype}' has no rotary equivalent (supported: default, linear, "
        "dynamic, yarn)"
    )


def config_from_hf(hfc: Any) -> ModelConfig:
    """The rotary config of a transformers ``LlamaConfig`` (RotaryError if not reproducible)."""
    if hfc.hidden_act not in _ACTS:
        raise RotaryError(
            f"Llama hidden_act '{hfc.hidden_act}' is not representable: rotary's SwiGLU gates "
            "with SiLU"
        )
    n_head = hfc.num_attention_heads
    head_dim = getattr(hfc, "head_dim", None) or hfc.hidden_size // n_head
    if head_dim * n_head != hfc.hidden_size:
        raise RotaryError(
            f"Llama head_dim {head_dim} x {n_head} heads != hidden_size {hfc.hidden_size}: rotary "
            "derives head_dim as d_model / n_head"
        )
    attn_bias, mlp_bias = bool(hfc.attention_bias), bool(getattr(hfc, "mlp_bias", False))
    if attn_bias != mlp_bias:
        raise RotaryError(
            f"Llama has attention_bias={attn_bias} but mlp_bias={mlp_bias}: rotary has one `bias` "
            "setting for all linear layers"
        )
    n_kv = hfc.num_key_value_heads or n_head
    return ModelConfig(
        **bert_style_fields_from_hf(hfc),
        n_kv_head=None if n_kv == n_head else n_kv,
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=float(hfc.rms_norm_eps),
        pre_norm=True,
        bias=attn_bias,
        dropout=0.0,
        attention_dropout=float(hfc.attention_dropout or 0.0),
        causal=True,
        type_vocab_size=0,
        **_rope_from_hf(hfc),
    )


# ---------------------------------------------------------------------------------------------
# Config: rotary -> HF
# ---------------------------------------------------------------------------------------------


def _rope_to_hf(cfg: ModelConfig) -> tuple[dict[str, Any], int]:
    """(rope_parameters, max_position_embeddings) for a rotary config."""
    theta, factor = cfg.rope_theta, cfg.rope_scaling_factor
    kind = cfg.rope_scaling
    if kind == "none" or (kind == "dynamic_ntk" and factor == 1.0):
        # rotary's dynamic NTK at factor 1 is plain RoPE; HF's dynamic would rescale.
        return {"rope_type": "default", "rope_theta": theta}, cfg.max_seq_len
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor, "rope_theta": theta}, cfg.max_seq_len
    if kind == "dynamic_ntk":
        # transformers' dynamic NTK rescales past max_position_embeddings: rotary's original length.
        rope = {"rope_type": "dynamic", "factor": factor, "rope_theta": theta}
        return rope, cfg.original_max_seq_len
    return {
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": cfg.original_max_seq_len,
        "beta_fast": cfg.yarn_beta_fast,
        "beta_slow": cfg.yarn_beta_slow,
        "rope_theta": theta,
    }, cfg.max_seq_len


def config_to_hf(cfg: ModelConfig, num_labels: int | None = None) -> Any:
    """A transformers ``LlamaConfig`` for ``cfg``: a causal LM's, or a sequence classifier's
    when ``num_labels`` is given (RotaryError naming what Llama cannot express)."""
    tf = transformers_module()
    fam = "Llama"
    require(cfg.causal, fam, "the model is bidirectional (causal=False)")
    require_rope_softmax(cfg, fam)
    require(cfg.pre_norm, fam, "Llama is pre-norm, this model is post-norm (pre_norm=False)")
    require(cfg.norm == "rmsnorm", fam, f"Llama uses RMSNorm, this model uses norm={cfg.norm}")
    require(cfg.mlp == "swiglu", fam, f"Llama uses a SwiGLU MLP, this model uses mlp={cfg.mlp}")
    require(
        cfg.rotary_fraction == 1.0, fam,
        f"partial rotary (rotary_fraction={cfg.rotary_fraction}) is not supported by HF Llama, "
        "which rotates whole heads",
    )
    require(cfg.embed_dim == cfg.d_model, fam,
            f"Llama has no embedding projection (embedding_size={cfg.embed_dim}, d_model={cfg.d_model})")
    require(not cfg.rotary_value, fam, "Llama does not rotate the values (rotary_value=True)")
    require(not cfg.output_bias, fam, "Llama's lm_head has no bias (output_bias=True)")
    require(cfg.type_vocab_size == 0, fam,
            f"Llama has no token-type embeddings (type_vocab_size={cfg.type_vocab_size})")
    if cfg.dropout:
        warnings.warn(
            f"Llama has no residual/embedding dropout: dropout={cfg.dropout} is not exported "
            "(inference outputs are unaffected)",
            stacklevel=3,
        )
    rope, mpe = _rope_to_hf(cfg)
    kwargs: dict[str, Any] = {}
    if hasattr(tf.LlamaConfig, "rope_parameters"):  # transformers >= 5
        kwargs["rope_parameters"] = rope
    else:  # transformers 4: rope_theta outside, scaling in rope_scaling
        kwargs["rope_theta"] = rope.pop("rope_theta")
        kwargs["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    return tf.LlamaConfig(
        **(bert_style_fields_to_hf(cfg) | {"max_position_embeddings": mpe}),
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.norm_eps,
        bos_token_id=None,  # rotary's config does not know the tokenizer: save_hf fills these in
        eos_token_id=None,
        attention_bias=cfg.bias,
        mlp_bias=cfg.bias,
        attention_dropout=cfg.attention_dropout,
        architectures=["LlamaForCausalLM" if num_labels is None else "LlamaForSequenceClassification"],
        **({} if num_labels is None else {"num_labels": num_labels}),
        **kwargs,
    )


# LlamaForSequenceClassification: the backbone and a bias-free ``score`` on the last real token.
CLASSIFIER_NAMES: NameMap = {k: v for k, v in NAMES.items() if k != "lm_head.weight"} | {"score.weight": "score.weight"}


def _classifier_hf_config(model: RotaryModel) -> Any:
    assert isinstance(model, SequenceClassifier)
    return with_labels(config_to_hf(model.config, num_labels=model.num_labels), model)


def _build_classifier(cfg: ModelConfig, hfc: Any) -> SequenceClassifier:
    return labelled(SequenceClassifier(cfg, num_labels=hfc.num_labels, pooling="last"), hfc)


FAMILY = Family(
    model_type="llama",
    architectures=(
        Architecture(
            hf_class="LlamaForCausalLM",
            rotary_class=CausalLM,
            build=lambda cfg, hfc: CausalLM(cfg),
            hf_config=lambda model: config_to_hf(model.config),
            names=lambda cfg: NAMES,
        ),
        Architecture(
            hf_class="LlamaForSequenceClassification",
            rotary_class=SequenceClassifier,
            build=_build_classifier,
            hf_config=_classifier_hf_config,
            names=lambda cfg: CLASSIFIER_NAMES,
            accepts=lambda model: getattr(model, "pooling", None) == "last",
        ),
    ),
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    prepare_from_hf=_prepare_from_hf,
)
