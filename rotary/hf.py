"""Conversion to and from HF transformers checkpoints: Llama (causal LM) and RoFormer (MLM, classifier).

    from_hf(hf_model_or_dir)        LlamaForCausalLM            -> CausalLM
                                    RoFormerForMaskedLM         -> MaskedLM
                                    RoFormerForSequenceClassification -> SequenceClassifier(pooling="cls")
    to_hf(model)                    the way back (a transformers model instance)
    save_hf(model, out_dir)         config.json + model.safetensors via save_pretrained, loadable by
                                    AutoModelForCausalLM / AutoModelForMaskedLM / ...ForSequenceClassification
    copy_hf_tokenizer(src, dst)     an HF checkpoint's tokenizer into a rotary checkpoint's tokenizer/
    config_from_hf / config_to_hf   the configs alone

Every conversion is exact (same logits up to float rounding) or refused with a ``RotaryError``
that names the setting which cannot be expressed on the other side; nothing is approximated.

Layouts. rotary fuses the attention projections (``qkv_proj`` rows = [q heads | k heads | v
heads]) and SwiGLU's ``up_proj`` (rows = [gate | up]); transformers keeps them separate.
rotary and HF Llama both rotate *halves* (x_i, x_{i+d/2}); RoFormer rotates *adjacent pairs*
(x_{2i}, x_{2i+1}) with frequency i. The two are the same function after reordering, per head,
the rows of W_q and W_k (and their biases) by ``pairs_to_halves`` (inverse on the way back);
q·k is unchanged by a permutation applied to both, and V is not rotated so it is not permuted.

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
* RoFormer always has linear biases and a token-type embedding. A rotary encoder without them
  is written with zero biases / one all-zero token type, which computes the same function.
* rotary's residual/embedding ``dropout`` has no Llama field: ``to_hf`` drops it with a warning
  (inference is unaffected; training in transformers would run without it).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rotary.config import ModelConfig
from rotary.errors import RotaryError
from rotary.model.rope import base_inv_freq, yarn_attention_scale
from rotary.model.transformer import CausalLM, MaskedLM, RotaryModel, SequenceClassifier

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

HFKind = Literal["llama", "roformer"]

# HF activation names that are exactly rotary's MLP activations (RoFormer uses one for all).
_ROFORMER_ACTS = {"gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
_LLAMA_ACTS = ("silu", "swish")
_FROM_HF = ("LlamaForCausalLM", "RoFormerForMaskedLM", "RoFormerForSequenceClassification")
_ROFORMER_THETA = 10000.0  # fixed in HF RoFormer's sinusoidal table
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "rotary_tokenizer.json",  # rotary's pre-tokenizer record (jieba), which tokenizer.json cannot hold
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise RotaryError("HF conversion needs transformers: pip install 'rotary[hf]'") from None
    return transformers


# ---------------------------------------------------------------------------------------------
# RoPE layout
# ---------------------------------------------------------------------------------------------


def pairs_to_halves(head_dim: int) -> torch.Tensor:
    """Row order that turns a head in the adjacent-pairs layout into the rotate-half layout.

    ``W_half = W_pairs[perm]``: rotary row i (i < d/2) is RoFormer row 2i and rotary row
    i + d/2 is RoFormer row 2i+1, so each rotated pair keeps its frequency i.
    """
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def _permute_heads(t: torch.Tensor, n_heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the rows of every head of a (n_heads*hd, ...) weight or (n_heads*hd,) bias."""
    hd = t.shape[0] // n_heads
    return t.reshape(n_heads, hd, *t.shape[1:])[:, perm].reshape(t.shape)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _rope_params(hfc: Any) -> dict[str, Any]:
    """The RoPE settings of a Llama config: v5 ``rope_parameters``, or v4 ``rope_scaling`` + ``rope_theta``."""
    params = dict(getattr(hfc, "rope_parameters", None) or getattr(hfc, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(hfc, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor") is None and getattr(hfc, "partial_rotary_factor", None) is not None:
        params["partial_rotary_factor"] = hfc.partial_rotary_factor
    return params


def _hf_yarn_attention_factor(params: dict[str, Any], factor: float) -> float:
    """transformers' YaRN attention factor (explicit, or from mscale/mscale_all_dim, or the default)."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m, m_all = params.get("mscale"), params.get("mscale_all_dim")
    if m and m_all:
        return mscale(factor, m) / mscale(factor, m_all)
    return mscale(factor)


def _llama_rope_from_hf(hfc: Any) -> dict[str, Any]:
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
                "Llama config uses dynamic RoPE with factor 1: transformers still rescales the base "
                "past max_position_embeddings there, while rotary's dynamic_ntk is plain RoPE at "
                "factor 1; set rope_type 'default' (same outputs within the context) or a factor > 1"
            )
        # transformers measures the context against max_position_embeddings, not original_*.
        return fields | {"rope_scaling": "dynamic_ntk", "rope_scaling_factor": factor}
    if rtype == "yarn":
        orig = int(params.get("original_max_position_embeddings") or mpe)
        factor = params.get("factor")
        factor = float(factor) if factor is not None else mpe / orig
        if params.get("truncate", True) is False:
            raise RotaryError("YaRN with truncate=False is not supported: rotary rounds the correction range as the paper does")
        hf_scale = _hf_yarn_attention_factor(params, factor)
        if abs(hf_scale - yarn_attention_scale(factor)) > 1e-9:
            raise RotaryError(
                f"YaRN attention factor {hf_scale:g} (from attention_factor/mscale) differs from the "
                f"paper's 0.1*ln(factor)+1 = {yarn_attention_scale(factor):g} that rotary uses"
            )
        return fields | {
            "rope_scaling": "yarn",
            "rope_scaling_factor": factor,
            "rope_original_max_seq_len": orig,
            "yarn_beta_fast": float(params.get("beta_fast") or 32.0),
            "yarn_beta_slow": float(params.get("beta_slow") or 1.0),
        }
    raise RotaryError(
        f"Llama rope_type '{rtype}' has no rotary equivalent (supported: default, linear, dynamic, yarn)"
    )


def _llama_config_from_hf(hfc: Any) -> ModelConfig:
    if hfc.hidden_act not in _LLAMA_ACTS:
        raise RotaryError(
            f"Llama hidden_act '{hfc.hidden_act}' is not representable: rotary's SwiGLU gates with SiLU"
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
        vocab_size=hfc.vocab_size,
        max_seq_len=hfc.max_position_embeddings,
        n_layer=hfc.num_hidden_layers,
        n_head=n_head,
        n_kv_head=None if n_kv == n_head else n_kv,
        d_model=hfc.hidden_size,
        d_ff=hfc.intermediate_size,
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=float(hfc.rms_norm_eps),
        pre_norm=True,
        bias=attn_bias,
        dropout=0.0,
        attention_dropout=float(hfc.attention_dropout or 0.0),
        causal=True,
        position="rope",
        tie_embeddings=bool(hfc.tie_word_embeddings),
        type_vocab_size=0,
        pad_token_id=hfc.pad_token_id,
        initializer_range=float(hfc.initializer_range),
        **_llama_rope_from_hf(hfc),
    )


def _roformer_config_from_hf(hfc: Any) -> ModelConfig:
    if hfc.rotary_value:
        raise RotaryError("RoFormer with rotary_value=True rotates the values too, which rotary does not do")
    if hfc.embedding_size != hfc.hidden_size:
        raise RotaryError(
            f"RoFormer embedding_size {hfc.embedding_size} != hidden_size {hfc.hidden_size}: rotary "
            "has no embedding projection"
        )
    if getattr(hfc, "is_decoder", False) or getattr(hfc, "add_cross_attention", False):
        raise RotaryError("only RoFormer encoders convert (is_decoder=False, no cross-attention)")
    act = hfc.hidden_act if isinstance(hfc.hidden_act, str) else None
    if act not in _ROFORMER_ACTS:
        raise RotaryError(
            f"RoFormer hidden_act {hfc.hidden_act!r} is not representable: rotary's MLP is "
            f"{' or '.join(sorted(set(_ROFORMER_ACTS)))} (exact erf GELU or ReLU)"
        )
    act = _ROFORMER_ACTS[act]
    return ModelConfig(
        vocab_size=hfc.vocab_size,
        max_seq_len=hfc.max_position_embeddings,
        n_layer=hfc.num_hidden_layers,
        n_head=hfc.num_attention_heads,
        n_kv_head=None,
        d_model=hfc.hidden_size,
        d_ff=hfc.intermediate_size,
        mlp=act,
        norm="layernorm",
        norm_eps=float(hfc.layer_norm_eps),
        pre_norm=False,
        bias=True,
        dropout=float(hfc.hidden_dropout_prob),
        attention_dropout=float(hfc.attention_probs_dropout_prob),
        causal=False,
        position="rope",
        rope_theta=_ROFORMER_THETA,
        rope_scaling="none",
        tie_embeddings=bool(hfc.tie_word_embeddings),
        type_vocab_size=hfc.type_vocab_size,
        pad_token_id=hfc.pad_token_id,
        initializer_range=float(hfc.initializer_range),
        hidden_act=act,
    )


def config_from_hf(hf_config: PretrainedConfig) -> ModelConfig:
    """The rotary ``ModelConfig`` of a transformers Llama or RoFormer config (RotaryError if none)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type == "llama":
        return _llama_config_from_hf(hf_config)
    if model_type == "roformer":
        return _roformer_config_from_hf(hf_config)
    raise RotaryError(f"cannot convert HF model_type '{model_type}': rotary converts llama and roformer")


def _require(ok: bool, family: str, msg: str) -> None:
    if not ok:
        raise RotaryError(f"cannot express this model as HF {family}: {msg}")


def _llama_rope_to_hf(cfg: ModelConfig) -> tuple[dict[str, Any], int]:
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
        return {"rope_type": "dynamic", "factor": factor, "rope_theta": theta}, cfg.original_max_seq_len
    return {
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": cfg.original_max_seq_len,
        "beta_fast": cfg.yarn_beta_fast,
        "beta_slow": cfg.yarn_beta_slow,
        "rope_theta": theta,
    }, cfg.max_seq_len


def _llama_config_to_hf(cfg: ModelConfig) -> Any:
    tf = _transformers()
    fam = "Llama"
    _require(cfg.causal, fam, "the model is bidirectional (causal=False)")
    _require(cfg.position == "rope", fam, f"Llama has only RoPE positions, this model uses position={cfg.position}")
    _require(cfg.pre_norm, fam, "Llama is pre-norm, this model is post-norm (pre_norm=False)")
    _require(cfg.norm == "rmsnorm", fam, f"Llama uses RMSNorm, this model uses norm={cfg.norm}")
    _require(cfg.mlp == "swiglu", fam, f"Llama uses a SwiGLU MLP, this model uses mlp={cfg.mlp}")
    _require(
        cfg.rotary_fraction == 1.0, fam,
        f"partial rotary (rotary_fraction={cfg.rotary_fraction}) is not supported by HF Llama, which rotates whole heads",
    )
    _require(cfg.type_vocab_size == 0, fam, f"Llama has no token-type embeddings (type_vocab_size={cfg.type_vocab_size})")
    if cfg.dropout:
        warnings.warn(
            f"Llama has no residual/embedding dropout: dropout={cfg.dropout} is not exported "
            "(inference outputs are unaffected)",
            stacklevel=3,
        )
    rope, mpe = _llama_rope_to_hf(cfg)
    kwargs: dict[str, Any] = {}
    if hasattr(tf.LlamaConfig, "rope_parameters"):  # transformers >= 5
        kwargs["rope_parameters"] = rope
    else:  # transformers 4: rope_theta outside, scaling in rope_scaling
        kwargs["rope_theta"] = rope.pop("rope_theta")
        kwargs["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    return tf.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ff_dim,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=mpe,
        initializer_range=cfg.initializer_range,
        rms_norm_eps=cfg.norm_eps,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=None,  # rotary's config does not know the tokenizer: save_hf fills these in
        eos_token_id=None,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.bias,
        mlp_bias=cfg.bias,
        attention_dropout=cfg.attention_dropout,
        architectures=["LlamaForCausalLM"],
        **kwargs,
    )


def _roformer_config_to_hf(cfg: ModelConfig, num_labels: int | None) -> Any:
    tf = _transformers()
    fam = "RoFormer"
    _require(not cfg.causal, fam, "RoFormer is an encoder, this model is causal")
    _require(cfg.position == "rope", fam, f"RoFormer has only RoPE positions, this model uses position={cfg.position}")
    _require(not cfg.pre_norm, fam, "RoFormer is post-norm, this model is pre-norm (pre_norm=True)")
    _require(cfg.norm == "layernorm", fam, f"RoFormer uses LayerNorm, this model uses norm={cfg.norm}")
    _require(cfg.mlp in ("gelu", "relu"), fam, f"RoFormer's MLP is gelu or relu, this model uses mlp={cfg.mlp}")
    _require(
        cfg.head_act == cfg.mlp, fam,
        f"RoFormer uses one hidden_act for the MLP and the heads, this model has mlp={cfg.mlp} but head activation {cfg.head_act}",
    )
    _require(cfg.kv_heads == cfg.n_head, fam, f"RoFormer has no grouped K/V heads (n_kv_head={cfg.n_kv_head})")
    _require(cfg.rotary_fraction == 1.0, fam, f"RoFormer rotates whole heads (rotary_fraction={cfg.rotary_fraction})")
    _require(cfg.rope_theta == _ROFORMER_THETA, fam, f"RoFormer's RoPE base is fixed at 10000, this model uses {cfg.rope_theta:g}")
    _require(cfg.rope_scaling == "none", fam, f"RoFormer has no RoPE scaling (rope_scaling={cfg.rope_scaling})")
    extra = {} if num_labels is None else {"num_labels": num_labels}
    architectures = ["RoFormerForMaskedLM" if num_labels is None else "RoFormerForSequenceClassification"]
    return tf.RoFormerConfig(
        vocab_size=cfg.vocab_size,
        embedding_size=cfg.d_model,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.ff_dim,
        hidden_act=cfg.mlp,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_seq_len,
        # HF always adds a token-type embedding: one all-zero type stands for "none".
        type_vocab_size=max(cfg.type_vocab_size, 1),
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.norm_eps,
        pad_token_id=cfg.pad_token_id,
        rotary_value=False,
        is_decoder=False,
        tie_word_embeddings=cfg.tie_embeddings,
        architectures=architectures,
        **extra,
    )


def config_to_hf(cfg: ModelConfig, kind: HFKind, num_labels: int | None = None) -> PretrainedConfig:
    """A transformers config for ``cfg``: ``kind="llama"`` (causal LM) or ``"roformer"``
    (masked LM, or a sequence classifier when ``num_labels`` is given). RotaryError when
    ``cfg`` uses something that family cannot express."""
    if kind == "llama":
        if num_labels is not None:
            raise RotaryError("Llama conversion covers the causal LM only (no num_labels)")
        return _llama_config_to_hf(cfg)
    if kind == "roformer":
        return _roformer_config_to_hf(cfg, num_labels)
    raise RotaryError(f"unknown HF kind '{kind}' (choose llama or roformer)")


# ---------------------------------------------------------------------------------------------
# Weights: HF -> rotary
# ---------------------------------------------------------------------------------------------


def _llama_state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"backbone.embed_tokens.weight": sd["model.embed_tokens.weight"]}
    for i in range(cfg.n_layer):
        h, r = f"model.layers.{i}.", f"backbone.layers.{i}."
        for p in ("weight", "bias") if cfg.bias else ("weight",):
            out[r + f"attn.qkv_proj.{p}"] = torch.cat(
                [sd[h + f"self_attn.{n}_proj.{p}"] for n in ("q", "k", "v")]
            )
            out[r + f"attn.o_proj.{p}"] = sd[h + f"self_attn.o_proj.{p}"]
            out[r + f"mlp.up_proj.{p}"] = torch.cat([sd[h + f"mlp.{n}_proj.{p}"] for n in ("gate", "up")])
            out[r + f"mlp.down_proj.{p}"] = sd[h + f"mlp.down_proj.{p}"]
        out[r + "attn_norm.weight"] = sd[h + "input_layernorm.weight"]
        out[r + "mlp_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
    out["backbone.final_norm.weight"] = sd["model.norm.weight"]
    lm_head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    if cfg.tie_embeddings and not torch.equal(lm_head, out["backbone.embed_tokens.weight"]):
        raise RotaryError("config says tie_word_embeddings=True but lm_head differs from the embedding")
    out["lm_head.weight"] = lm_head
    return out


def _roformer_backbone_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    e = "roformer.embeddings."
    out = {
        "backbone.embed_tokens.weight": sd[e + "word_embeddings.weight"],
        "backbone.embed_types.weight": sd[e + "token_type_embeddings.weight"],
        "backbone.embed_norm.weight": sd[e + "LayerNorm.weight"],
        "backbone.embed_norm.bias": sd[e + "LayerNorm.bias"],
    }
    perm = pairs_to_halves(cfg.head_dim)
    for i in range(cfg.n_layer):
        h, r = f"roformer.encoder.layer.{i}.", f"backbone.layers.{i}."
        for p in ("weight", "bias"):
            q = _permute_heads(sd[h + f"attention.self.query.{p}"], cfg.n_head, perm)
            k = _permute_heads(sd[h + f"attention.self.key.{p}"], cfg.n_head, perm)
            out[r + f"attn.qkv_proj.{p}"] = torch.cat([q, k, sd[h + f"attention.self.value.{p}"]])
            out[r + f"attn.o_proj.{p}"] = sd[h + f"attention.output.dense.{p}"]
            out[r + f"attn_norm.{p}"] = sd[h + f"attention.output.LayerNorm.{p}"]
            out[r + f"mlp.up_proj.{p}"] = sd[h + f"intermediate.dense.{p}"]
            out[r + f"mlp.down_proj.{p}"] = sd[h + f"output.dense.{p}"]
            out[r + f"mlp_norm.{p}"] = sd[h + f"output.LayerNorm.{p}"]
    return out


def _check_roformer_positions(hf_model: Any, cfg: ModelConfig) -> None:
    """HF RoFormer's RoPE lives in a stored table: make sure it is the standard one."""
    weight = hf_model.roformer.encoder.embed_positions.weight
    if weight.device.type == "meta":
        return
    angles = torch.arange(weight.shape[0], dtype=torch.float64)[:, None] * base_inv_freq(cfg.head_dim, _ROFORMER_THETA)
    expected = torch.cat((angles.sin(), angles.cos()), dim=-1)
    if weight.shape != expected.shape or (weight.double().cpu() - expected).abs().max() > 1e-4:
        raise RotaryError("this RoFormer's sinusoidal position table is not the standard base-10000 one")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards" bars, off: they say nothing about
    a conversion that takes a second."""
    hf_logging = _transformers().utils.logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _load_hf_dir(path: str | os.PathLike[str]) -> Any:
    tf = _transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RotaryError(f"{path}: not an HF checkpoint directory (no config.json)")
    hfc = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (getattr(hfc, "architectures", None) or [None])[0]
    if arch is None:  # an old or hand-written config: the family's usual head
        arch = {"llama": "LlamaForCausalLM", "roformer": "RoFormerForMaskedLM"}.get(hfc.model_type)
    if arch not in _FROM_HF:
        raise RotaryError(f"{path}: architecture {arch} is not convertible (supported: {', '.join(_FROM_HF)})")
    with _no_progress_bars():
        return getattr(tf, arch).from_pretrained(path, local_files_only=True)


def from_hf(hf_model: PreTrainedModel | str | os.PathLike[str]) -> RotaryModel:
    """The rotary model computing the same function as a transformers model (or local checkpoint dir).

    ``LlamaForCausalLM`` -> CausalLM, ``RoFormerForMaskedLM`` -> MaskedLM,
    ``RoFormerForSequenceClassification`` -> SequenceClassifier(pooling="cls"). The result is in
    eval mode, on the HF model's device and dtype.
    """
    if isinstance(hf_model, (str, os.PathLike)):
        hf_model = _load_hf_dir(hf_model)
    arch = type(hf_model).__name__
    if arch not in _FROM_HF:
        raise RotaryError(f"cannot convert {arch}: rotary converts {', '.join(_FROM_HF)}")
    cfg = config_from_hf(hf_model.config)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    if arch == "LlamaForCausalLM":
        model: RotaryModel = CausalLM(cfg)
        state = _llama_state_from_hf(sd, cfg)
    else:
        _check_roformer_positions(hf_model, cfg)
        state = _roformer_backbone_from_hf(sd, cfg)
        if arch == "RoFormerForMaskedLM":
            model = MaskedLM(cfg)
            c = "cls.predictions."
            state |= {
                "head.dense.weight": sd[c + "transform.dense.weight"],
                "head.dense.bias": sd[c + "transform.dense.bias"],
                "head.norm.weight": sd[c + "transform.LayerNorm.weight"],
                "head.norm.bias": sd[c + "transform.LayerNorm.bias"],
            }
            if cfg.tie_embeddings:
                # decoder.weight/bias are the embedding and predictions.bias
                state["head.bias"] = sd[c + "bias"]
            else:
                # untied, HF's forward uses decoder.bias (predictions.bias is then unused)
                state["head.bias"] = sd[c + "decoder.bias"]
                state["head.decoder.weight"] = sd[c + "decoder.weight"]
        else:
            model = SequenceClassifier(cfg, num_labels=hf_model.config.num_labels, pooling="cls")
            for n in ("dense", "out_proj"):
                for p in ("weight", "bias"):
                    state[f"{n}.{p}"] = sd[f"classifier.{n}.{p}"]
    if cfg.tie_embeddings and isinstance(model, CausalLM):
        state["lm_head.weight"] = state["backbone.embed_tokens.weight"]
    ref = next(iter(sd.values()))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model.to(device=ref.device, dtype=ref.dtype).eval()


# ---------------------------------------------------------------------------------------------
# Weights: rotary -> HF
# ---------------------------------------------------------------------------------------------


def _llama_state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    hd, nh, nkv, ff = cfg.head_dim, cfg.n_head, cfg.kv_heads, cfg.ff_dim
    out = {"model.embed_tokens.weight": sd["backbone.embed_tokens.weight"]}
    for i in range(cfg.n_layer):
        h, r = f"model.layers.{i}.", f"backbone.layers.{i}."
        for p in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = sd[r + f"attn.qkv_proj.{p}"].split([nh * hd, nkv * hd, nkv * hd])
            out |= {h + f"self_attn.q_proj.{p}": q, h + f"self_attn.k_proj.{p}": k, h + f"self_attn.v_proj.{p}": v}
            out[h + f"self_attn.o_proj.{p}"] = sd[r + f"attn.o_proj.{p}"]
            gate, up = sd[r + f"mlp.up_proj.{p}"].split(ff)
            out |= {h + f"mlp.gate_proj.{p}": gate, h + f"mlp.up_proj.{p}": up}
            out[h + f"mlp.down_proj.{p}"] = sd[r + f"mlp.down_proj.{p}"]
        out[h + "input_layernorm.weight"] = sd[r + "attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[r + "mlp_norm.weight"]
    out["model.norm.weight"] = sd["backbone.final_norm.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _roformer_backbone_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    d, nh, hd = cfg.d_model, cfg.n_head, cfg.head_dim
    emb = sd["backbone.embed_tokens.weight"]
    types = sd.get("backbone.embed_types.weight", emb.new_zeros(1, d))  # none = one zero type
    e = "roformer.embeddings."
    out = {
        e + "word_embeddings.weight": emb,
        e + "token_type_embeddings.weight": types,
        e + "LayerNorm.weight": sd["backbone.embed_norm.weight"],
        e + "LayerNorm.bias": sd["backbone.embed_norm.bias"],
    }
    inv = torch.argsort(pairs_to_halves(hd))

    def bias(key: str, n: int) -> torch.Tensor:  # HF RoFormer always has biases: absent = zero
        return sd[key] if key in sd else emb.new_zeros(n)

    for i in range(cfg.n_layer):
        h, r = f"roformer.encoder.layer.{i}.", f"backbone.layers.{i}."
        qkv_w = sd[r + "attn.qkv_proj.weight"]
        qkv_b = bias(r + "attn.qkv_proj.bias", qkv_w.shape[0])
        for p, t in (("weight", qkv_w), ("bias", qkv_b)):
            q, k, v = t.split(d)
            out[h + f"attention.self.query.{p}"] = _permute_heads(q, nh, inv)
            out[h + f"attention.self.key.{p}"] = _permute_heads(k, nh, inv)
            out[h + f"attention.self.value.{p}"] = v
        out[h + "attention.output.dense.weight"] = sd[r + "attn.o_proj.weight"]
        out[h + "attention.output.dense.bias"] = bias(r + "attn.o_proj.bias", d)
        out[h + "intermediate.dense.weight"] = sd[r + "mlp.up_proj.weight"]
        out[h + "intermediate.dense.bias"] = bias(r + "mlp.up_proj.bias", cfg.ff_dim)
        out[h + "output.dense.weight"] = sd[r + "mlp.down_proj.weight"]
        out[h + "output.dense.bias"] = bias(r + "mlp.down_proj.bias", d)
        for p in ("weight", "bias"):
            out[h + f"attention.output.LayerNorm.{p}"] = sd[r + f"attn_norm.{p}"]
            out[h + f"output.LayerNorm.{p}"] = sd[r + f"mlp_norm.{p}"]
    return out


def _assign(hf_model: Any, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into the HF model's parameters, checking that every parameter is covered."""
    params = dict(hf_model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise RuntimeError(f"converter produced names the HF model lacks: {unknown[:5]}")
    covered = set()
    with torch.no_grad():
        for name, value in state.items():
            param = params[name]
            if param.shape != value.shape:
                raise RuntimeError(f"{name}: shape {tuple(value.shape)} != HF {tuple(param.shape)}")
            param.copy_(value)
            covered.add(id(param))
    missed = [n for n, p in params.items() if id(p) not in covered and not n.startswith(skip)]
    if missed:
        raise RuntimeError(f"HF parameters left unconverted: {missed[:5]}")


def to_hf(model: RotaryModel) -> PreTrainedModel:
    """The transformers model computing the same function as ``model`` (eval mode, same device/dtype).

    CausalLM -> ``LlamaForCausalLM``; MaskedLM -> ``RoFormerForMaskedLM``;
    SequenceClassifier(pooling="cls") -> ``RoFormerForSequenceClassification``.
    """
    tf = _transformers()
    cfg = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    skip: tuple[str, ...] = ()
    if isinstance(model, CausalLM):
        hf = tf.LlamaForCausalLM(config_to_hf(cfg, "llama"))
        state = _llama_state_to_hf(sd, cfg)
    elif isinstance(model, (MaskedLM, SequenceClassifier)):
        if isinstance(model, SequenceClassifier) and model.pooling != "cls":
            raise RotaryError(
                f"cannot express this model as HF RoFormer: RoFormerForSequenceClassification pools "
                f"the first token, this classifier uses pooling={model.pooling}"
            )
        num_labels = model.num_labels if isinstance(model, SequenceClassifier) else None
        hfc = config_to_hf(cfg, "roformer", num_labels=num_labels)
        state = _roformer_backbone_to_hf(sd, cfg)
        skip = ("roformer.encoder.embed_positions.",)  # the fixed sinusoidal table HF builds itself
        if isinstance(model, MaskedLM):
            hf = tf.RoFormerForMaskedLM(hfc)
            c = "cls.predictions."
            state |= {
                c + "transform.dense.weight": sd["head.dense.weight"],
                c + "transform.dense.bias": sd["head.dense.bias"],
                c + "transform.LayerNorm.weight": sd["head.norm.weight"],
                c + "transform.LayerNorm.bias": sd["head.norm.bias"],
                c + "bias": sd["head.bias"],
                c + "decoder.bias": sd["head.bias"],
                c + "decoder.weight": sd["backbone.embed_tokens.weight" if cfg.tie_embeddings else "head.decoder.weight"],
            }
        else:
            hf = tf.RoFormerForSequenceClassification(hfc)
            for n in ("dense", "out_proj"):
                for p in ("weight", "bias"):
                    state[f"classifier.{n}.{p}"] = sd[f"{n}.{p}"]
    else:
        raise RotaryError(f"cannot convert {type(model).__name__} to HF (CausalLM, MaskedLM or SequenceClassifier)")
    _assign(hf, state, skip)
    ref = next(model.parameters())
    return hf.to(device=ref.device, dtype=ref.dtype).eval()


def tokenizer_special_ids(tokenizer_dir: str | os.PathLike[str]) -> dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` of an HF tokenizer directory, from
    its tokenizer_config.json / special_tokens_map.json and tokenizer.json (those it defines)."""
    import json

    d = Path(tokenizer_dir)
    names: dict[str, str] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        f = d / fname
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise RotaryError(f"{f}: invalid JSON ({err.msg})") from None
            for key in ("bos_token", "eos_token", "pad_token"):
                value = data.get(key)
                if isinstance(value, dict):  # AddedToken as saved by transformers
                    value = value.get("content")
                if isinstance(value, str):
                    names[key] = value
    if not names or not (d / "tokenizer.json").is_file():
        return {}
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(d / "tokenizer.json"))
    out = {}
    for key, token in names.items():
        i = backend.token_to_id(token)
        if i is not None:
            out[f"{key}_id"] = i
    return out


def copy_hf_tokenizer(src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> Path | None:
    """Copy the tokenizer of an HF checkpoint directory into ``dst_dir`` (a rotary checkpoint's
    ``tokenizer/``) so that ``rotary.tokenizer.load_tokenizer`` and ``rotary generate`` use it.

    A directory with only a slow tokenizer's files (``vocab.txt``, ``tokenizer.model``) also
    gets the ``tokenizer.json`` that transformers converts them to. Returns ``dst_dir``, or None
    when ``src_dir`` holds no tokenizer. ``dst_dir`` appears complete or not at all.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    files = [src / n for n in _TOKENIZER_FILES if (src / n).is_file()]
    if not files:
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / "tokenizer"
        staged.mkdir()
        for f in files:
            shutil.copy2(f, staged / f.name)
        if not (staged / "tokenizer.json").is_file():
            tf = _transformers()
            try:
                tok = tf.AutoTokenizer.from_pretrained(src, use_fast=True, local_files_only=True)
            except Exception as err:  # transformers raises many types for an unusable directory
                raise RotaryError(f"{src}: transformers cannot load its tokenizer ({str(err).splitlines()[0]})") from None
            if not getattr(tok, "is_fast", False):
                raise RotaryError(f"{src}: its tokenizer has no fast (tokenizer.json) form, which rotary needs")
            tok.backend_tokenizer.save(str(staged / "tokenizer.json"))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(staged, dst)
    return dst


def save_hf(model: RotaryModel, out_dir: str | os.PathLike[str], tokenizer_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``model`` as an HF checkpoint (config.json + model.safetensors, via save_pretrained).

    ``tokenizer_dir``'s HF tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt, ...)
    are copied beside it, and its BOS/EOS/PAD tokens go into config.json and
    generation_config.json (so ``generate`` in transformers stops at EOS). Files appear under
    their final names only when complete.
    """
    out = Path(out_dir)
    hf = to_hf(model)
    tok_files: list[Path] = []
    if tokenizer_dir is not None:
        tok_files = [Path(tokenizer_dir) / n for n in _TOKENIZER_FILES if (Path(tokenizer_dir) / n).is_file()]
        if not tok_files:
            raise RotaryError(f"{tokenizer_dir}: no HF tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...)")
        special = tokenizer_special_ids(tokenizer_dir)
        if model.config.pad_token_id is not None:  # the model's own padding id stays
            special.pop("pad_token_id", None)
        for key, value in special.items():
            setattr(hf.config, key, value)
            if getattr(hf, "generation_config", None) is not None:
                setattr(hf.generation_config, key, value)
    out.mkdir(parents=True, exist_ok=True)
    # save_pretrained writes in place: write to a temp dir beside out_dir, then rename each file.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        with _no_progress_bars():
            hf.save_pretrained(tmp)
        for f in tok_files:
            shutil.copy2(f, Path(tmp) / f.name)
        for f in sorted(Path(tmp).iterdir()):
            os.replace(f, out / f.name)
    return out


__all__ = ["config_from_hf", "config_to_hf", "copy_hf_tokenizer", "from_hf", "pairs_to_halves", "save_hf",
           "to_hf", "tokenizer_special_ids"]
