"""HF Marian (``MarianMTModel``) <-> rotary ``Seq2SeqLM``: the original Transformer's family
(post-LN, sinusoidal positions, shared embeddings), the config mapping and the name map.

Where Marian differs from rotary's other post-LN models, the config says so rather than the
converter: its sinusoidal table is [all sines | all cosines] (``sinusoidal_layout: halves``),
it has no embedding LayerNorm (``embed_norm: false``), it scales token embeddings by sqrt(d)
(``scale_embeddings``), it always has biases, and it adds ``final_logits_bias`` to the logits
(``logits_bias``; a buffer on both sides). rotary fuses q/k/v of self-attention into
``qkv_proj`` and k/v of cross-attention into ``kv_proj`` (rows in that order).

Decisions where the two sides differ:

* Marian's positions ignore padding (it pads on the right); rotary counts real tokens under
  left padding. Right-padded batches, Marian's convention, give the same function.
* HF builds the sinusoidal tables itself: ``from_hf`` checks they are the standard ones,
  ``to_hf`` leaves them to HF.
* Marian's ``activation_dropout`` (inside the MLP) has no rotary counterpart: nonzero is refused.
* A rotary model without biases or without a logits bias is written with zeros, which computes
  the same function.
"""

from __future__ import annotations

from typing import Any

import torch

from rotary.errors import RotaryError
from rotary.hf.adapter import Architecture, Family, NameMap, Transform, require, transformers_module
from rotary.model.config import ModelConfig
from rotary.model.positions import sinusoidal_table
from rotary.model.seq2seq import Seq2SeqLM

_ACTS = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "swish": "silu", "silu": "silu"}
_EPS = 1e-5  # Marian's LayerNorms use torch's default epsilon


def _attention(rotary: str, hf: str, fused_self: bool) -> NameMap:
    proj = ("q_proj", "k_proj", "v_proj") if fused_self else ("k_proj", "v_proj")
    fused = "qkv_proj" if fused_self else "kv_proj"
    out = {f"{rotary}.{fused}.{p}": tuple(f"{hf}.{n}.{p}" for n in proj) for p in ("weight", "bias")}
    out |= {f"{rotary}.o_proj.{p}": f"{hf}.out_proj.{p}" for p in ("weight", "bias")}
    if not fused_self:
        out |= {f"{rotary}.q_proj.{p}": f"{hf}.q_proj.{p}" for p in ("weight", "bias")}
    return out


def _layer(rotary: str, hf: str, cross: bool) -> NameMap:
    names = _attention(f"{rotary}.attn", f"{hf}.self_attn", fused_self=True)
    names |= {f"{rotary}.attn_norm.{p}": f"{hf}.self_attn_layer_norm.{p}" for p in ("weight", "bias")}
    if cross:
        names |= _attention(f"{rotary}.cross_attn", f"{hf}.encoder_attn", fused_self=False)
        names |= {f"{rotary}.cross_norm.{p}": f"{hf}.encoder_attn_layer_norm.{p}" for p in ("weight", "bias")}
    names |= {f"{rotary}.mlp.up_proj.{p}": f"{hf}.fc1.{p}" for p in ("weight", "bias")}
    names |= {f"{rotary}.mlp.down_proj.{p}": f"{hf}.fc2.{p}" for p in ("weight", "bias")}
    names |= {f"{rotary}.mlp_norm.{p}": f"{hf}.final_layer_norm.{p}" for p in ("weight", "bias")}
    return names


def names(cfg: ModelConfig) -> NameMap:
    """rotary -> HF names, every layer written out (the encoder and decoder depths may differ)."""
    shared = cfg.share_embeddings
    out: NameMap = {
        "backbone.embed_tokens.weight": "model.shared.weight" if shared else "model.encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight": "model.shared.weight" if shared else "model.decoder.embed_tokens.weight",
        "lm_head.weight": "lm_head.weight",
        "final_logits_bias": "final_logits_bias",
    }
    for i in range(cfg.n_layer):
        out |= _layer(f"backbone.layers.{i}", f"model.encoder.layers.{i}", cross=False)
    for i in range(cfg.decoder_layers):
        out |= _layer(f"decoder.layers.{i}", f"model.decoder.layers.{i}", cross=True)
    return out


# final_logits_bias is (1, vocab) in HF, (vocab,) in rotary
TRANSFORMS = {"final_logits_bias": Transform(from_hf=lambda t, cfg: t.reshape(-1),
                                             to_hf=lambda t, cfg: t.reshape(1, -1))}


def config_from_hf(hfc: Any) -> ModelConfig:
    """The rotary config of a transformers ``MarianConfig`` (RotaryError if not reproducible)."""
    act = hfc.activation_function if isinstance(hfc.activation_function, str) else None
    if act not in _ACTS:
        raise RotaryError(f"Marian activation_function {hfc.activation_function!r} is not representable: "
                          f"rotary's MLP takes {', '.join(sorted(_ACTS))}")
    if (hfc.decoder_vocab_size or hfc.vocab_size) != hfc.vocab_size:
        raise RotaryError(f"Marian decoder_vocab_size {hfc.decoder_vocab_size} != vocab_size {hfc.vocab_size}: "
                          "a vocabulary per side does not convert yet (rotary's decoder_vocab_size)")
    if hfc.encoder_attention_heads != hfc.decoder_attention_heads or hfc.encoder_ffn_dim != hfc.decoder_ffn_dim:
        raise RotaryError("Marian encoder and decoder differ in heads or MLP width: rotary's share one shape")
    if not hfc.share_encoder_decoder_embeddings or not hfc.tie_word_embeddings:
        # transformers unties the encoder's, decoder's and output embeddings all together
        raise RotaryError("this Marian has separate encoder, decoder or output embeddings, which rotary does not "
                          "convert yet (share_encoder_decoder_embeddings and tie_word_embeddings must be true)")
    if float(hfc.activation_dropout or 0.0):
        raise RotaryError(f"Marian activation_dropout {hfc.activation_dropout} has no rotary counterpart")
    return ModelConfig(
        vocab_size=hfc.vocab_size, max_seq_len=hfc.max_position_embeddings, n_layer=hfc.encoder_layers,
        n_decoder_layer=None if hfc.decoder_layers == hfc.encoder_layers else hfc.decoder_layers,
        n_head=hfc.encoder_attention_heads, d_model=hfc.d_model, d_ff=hfc.encoder_ffn_dim, mlp=_ACTS[act],
        norm="layernorm", norm_eps=_EPS, pre_norm=False, bias=True, dropout=float(hfc.dropout),
        attention_dropout=float(hfc.attention_dropout), causal=False, position="sinusoidal",
        sinusoidal_layout="halves", embed_norm=False, scale_embeddings=bool(hfc.scale_embedding), logits_bias=True,
        share_embeddings=bool(hfc.share_encoder_decoder_embeddings), tie_embeddings=bool(hfc.tie_word_embeddings),
        pad_token_id=hfc.pad_token_id, decoder_start_token_id=hfc.decoder_start_token_id,
        initializer_range=float(hfc.init_std))


def config_to_hf(cfg: ModelConfig, num_labels: int | None = None) -> Any:
    """A transformers ``MarianConfig`` for ``cfg`` (RotaryError naming what Marian cannot express)."""
    tf = transformers_module()
    fam = "Marian"
    require(num_labels is None, fam, "Marian has no sequence-classification head")
    require(cfg.position == "sinusoidal" and cfg.sinusoidal_layout == "halves", fam,
            f"Marian has sinusoidal positions in the halves layout, this model uses position={cfg.position}"
            + (f" ({cfg.sinusoidal_layout})" if cfg.position == "sinusoidal" else ""))
    require(not cfg.pre_norm, fam, "Marian is post-norm, this model is pre-norm (pre_norm=True)")
    require(not cfg.has_embed_norm, fam, "Marian has no embedding norm (set embed_norm false)")
    require(cfg.norm == "layernorm" and cfg.norm_eps == _EPS, fam,
            f"Marian uses LayerNorm with eps 1e-5, this model uses {cfg.norm} with eps {cfg.norm_eps:g}")
    require(cfg.mlp in ("relu", "gelu", "silu"), fam, f"Marian's MLP is not gated, this model uses mlp={cfg.mlp}")
    require(cfg.kv_heads == cfg.n_head, fam, f"Marian has no grouped K/V heads (n_kv_head={cfg.n_kv_head})")
    require(cfg.attention == "softmax", fam, f"Marian has softmax attention, this model uses {cfg.attention}")
    require(cfg.decoder_vocab_size is None, fam, "a vocabulary per side (decoder_vocab_size) does not convert yet")
    require(cfg.share_embeddings and cfg.tie_embeddings, fam,
            "separate source, target or output embeddings do not convert yet (share_embeddings, tie_embeddings)")
    start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
    return tf.MarianConfig(
        vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_seq_len,
        encoder_layers=cfg.n_layer, decoder_layers=cfg.decoder_layers, encoder_ffn_dim=cfg.ff_dim,
        decoder_ffn_dim=cfg.ff_dim, encoder_attention_heads=cfg.n_head, decoder_attention_heads=cfg.n_head,
        activation_function=cfg.mlp, d_model=cfg.d_model, dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, activation_dropout=0.0, init_std=cfg.initializer_range,
        decoder_start_token_id=start, scale_embedding=cfg.scale_embeddings, pad_token_id=cfg.pad_token_id,
        share_encoder_decoder_embeddings=cfg.share_embeddings, tie_word_embeddings=cfg.tie_embeddings,
        architectures=["MarianMTModel"])


def _check_positions(hf_model: Any, hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    want = sinusoidal_table(cfg.max_seq_len, cfg.d_model, "halves")
    for side in ("encoder", "decoder"):
        table = hf_state[f"model.{side}.embed_positions.weight"].float().cpu()
        if not torch.allclose(table, want, atol=1e-5):
            raise RotaryError(f"this Marian's {side} position table is not the standard sinusoidal one")


SEQ2SEQ = Architecture(
    hf_class="MarianMTModel",
    rotary_class=Seq2SeqLM,
    build=lambda cfg, hfc: Seq2SeqLM(cfg),
    hf_config=lambda model: config_to_hf(model.config),
    names=names,
)
FAMILY = Family(
    model_type="marian",
    architectures=(SEQ2SEQ,),
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    transforms=TRANSFORMS,
    zero_fill=True,
    hf_generated=("model.encoder.embed_positions.", "model.decoder.embed_positions."),
    prepare_from_hf=_check_positions,
)
