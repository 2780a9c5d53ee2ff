"""``ModelConfig``: one description of every rotary model, and the named presets.

Every field carries its documentation (``doc``), so ``--help`` and generated YAML can explain it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from rotary.config import doc, from_dict, load_yaml, save_yaml, to_dict
from rotary.errors import RotaryError

MLPKind = Literal["swiglu", "gelu", "relu", "silu"]
NormKind = Literal["rmsnorm", "layernorm"]
PositionKind = Literal["rope", "learned", "sinusoidal", "alibi", "none"]
AttentionKind = Literal["softmax", "linear"]
RopeScaling = Literal["none", "linear", "dynamic_ntk", "yarn"]


def _bad(msg: str) -> NoReturn:
    raise RotaryError(f"model.{msg}" if re.match(r"[a-z_]+ ", msg) else f"model: {msg}")


@dataclass
class ModelConfig:
    """One description for every rotary model: encoder or decoder, MHA/GQA/MQA, any position scheme.

    The head (causal LM, masked LM, classifier) is chosen by the model class, not here.
    """

    vocab_size: int = doc(32768, "number of token ids the embedding holds")
    max_seq_len: int = doc(
        1024, "longest sequence trained on; learned positions are capped here, RoPE is not"
    )
    n_layer: int = doc(6, "number of Transformer blocks (an encoder-decoder's encoder blocks)")
    n_decoder_layer: int | None = doc(None, "encoder-decoder (seq2seq): decoder blocks; None = n_layer")
    n_head: int = doc(8, "attention heads for queries")
    n_kv_head: int | None = doc(
        None, "heads for keys/values: None = n_head (MHA), 1 = MQA, else GQA"
    )
    d_model: int = doc(512, "hidden width")
    embedding_size: int | None = doc(
        None, "width of the token embeddings; None = d_model, else projected to d_model (RoFormer, ALBERT)"
    )
    d_ff: int | None = doc(
        None, "MLP inner width; None = 4*d_model (gelu/relu) or 8/3*d_model rounded to 64 (swiglu)"
    )
    mlp: MLPKind = doc("swiglu", "MLP kind: swiglu (Llama), gelu (BERT/RoFormer), relu (Vaswani et al.) or "
                                 "silu (Marian's swish)")
    norm: NormKind = doc("rmsnorm", "normalisation: rmsnorm (Llama) or layernorm (BERT/RoFormer)")
    norm_eps: float = doc(1e-5, "epsilon inside the norm")
    pre_norm: bool = doc(
        True, "pre-LN blocks with a final norm; False = post-LN as in BERT/RoFormer"
    )
    bias: bool = doc(False, "biases in the linear layers")
    dropout: float = doc(0.0, "dropout on embeddings, residual branches and MLP")
    attention_dropout: float = doc(0.0, "dropout on attention probabilities")
    causal: bool = doc(True, "causal (decoder) attention; False = bidirectional (encoder)")
    position: PositionKind = doc(
        "rope", "position scheme: rope, or the learned/sinusoidal/alibi/none baselines"
    )
    attention: AttentionKind = doc(
        "softmax", "softmax attention, or linear: RoFormer section 3.3's kernelised attention (elu+1 features)"
    )
    sinusoidal_layout: Literal["interleaved", "halves"] = doc(
        "interleaved", "sinusoidal positions: sin/cos interleaved (Vaswani et al.), or halves: all sines "
        "then all cosines (Marian, fairseq)")
    embed_norm: bool | None = doc(
        None, "a norm on the embeddings; None = post-LN models have one (BERT/RoFormer), pre-LN ones do not")
    scale_embeddings: bool = doc(False, "multiply token embeddings by sqrt(d_model) (the original Transformer)")
    logits_bias: bool = doc(False, "a bias on the output logits (Marian's final_logits_bias)")
    output_bias: bool = doc(
        False, "causal LM: a trained bias on the logits, which `rotary train` starts at the log unigram of the "
        "training tokens, so the embeddings need not carry the unigram (copying forms far sooner: "
        "experiments/passkey.py)")
    share_embeddings: bool = doc(True, "encoder-decoder: one token embedding for source and target")
    decoder_vocab_size: int | None = doc(
        None, "encoder-decoder with one vocabulary per side: the target's size (vocab_size is the source's); "
        "None = one joint vocabulary")
    decoder_start_token_id: int | None = doc(
        None, "encoder-decoder: the first decoder input; None = pad_token_id (the transformers convention)")
    rope_theta: float = doc(10000.0, "RoPE base")
    rope_scaling: RopeScaling = doc("none", "context extension: none, linear, dynamic_ntk or yarn")
    rope_scaling_factor: float = doc(1.0, "context extension factor for rope_scaling")
    rope_original_max_seq_len: int | None = doc(
        None, "context length the model was trained at (default: max_seq_len)"
    )
    yarn_beta_fast: float = doc(32.0, "YaRN: rotations above which dimensions are not interpolated")
    yarn_beta_slow: float = doc(
        1.0, "YaRN: rotations below which dimensions are fully interpolated"
    )
    rotary_fraction: float = doc(
        1.0, "fraction of each head's dimensions that RoPE rotates (partial rotary)"
    )
    rotary_value: bool = doc(False, "RoPE rotates the values too, not only queries and keys (as HF RoFormer's)")
    tie_embeddings: bool = doc(True, "share the input embedding with the output projection")
    type_vocab_size: int = doc(0, "segment (token type) ids, as BERT/RoFormer have; 0 = none")
    pad_token_id: int | None = doc(None, "padding token id")
    initializer_range: float = doc(0.02, "std of the normal initialisation")
    hidden_act: Literal["gelu", "relu", "silu", "gelu_tanh"] | None = doc(
        None, "activation of MLM/classifier heads; None = the MLP's own (gelu for swiglu)"
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- derived values -----------------------------------------------------------------------
    @property
    def decoder_layers(self) -> int:
        return self.n_layer if self.n_decoder_layer is None else self.n_decoder_layer

    @property
    def target_vocab_size(self) -> int:
        """The decoder's vocabulary: its own (``decoder_vocab_size``) or the joint one."""
        return self.vocab_size if self.decoder_vocab_size is None else self.decoder_vocab_size

    @property
    def has_embed_norm(self) -> bool:
        return (not self.pre_norm) if self.embed_norm is None else self.embed_norm

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def embed_dim(self) -> int:
        """Width of the token (and token-type) embeddings, before any projection to d_model."""
        return self.d_model if self.embedding_size is None else self.embedding_size

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (even)."""
        return int(round(self.head_dim * self.rotary_fraction))

    @property
    def original_max_seq_len(self) -> int:
        return self.rope_original_max_seq_len or self.max_seq_len

    @property
    def head_act(self) -> str:
        if self.hidden_act is not None:
            return self.hidden_act
        return "relu" if self.mlp == "relu" else "gelu"

    def validate(self) -> None:
        """A RotaryError naming the first key whose value (alone or with another) cannot build a model."""
        self._check_shapes()
        self._check_positions()
        if self.attention == "linear":
            self._check_linear_attention()

    def _check_shapes(self) -> None:
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                _bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_decoder_layer is not None and self.n_decoder_layer <= 0:
            _bad(f"n_decoder_layer must be positive, got {self.n_decoder_layer}")
        if self.decoder_vocab_size is not None:
            if self.decoder_vocab_size <= 0:
                _bad(f"decoder_vocab_size must be positive, got {self.decoder_vocab_size}")
            if self.share_embeddings:
                _bad("decoder_vocab_size (a target vocabulary of its own) needs share_embeddings false: "
                    "the two sides cannot share one embedding table")
        if self.decoder_start_token_id is not None and not 0 <= self.decoder_start_token_id < self.target_vocab_size:
            _bad(f"decoder_start_token_id {self.decoder_start_token_id} is outside the target vocabulary")
        if self.d_model % self.n_head:
            _bad(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.kv_heads <= 0 or self.n_head % self.kv_heads:
            _bad(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.kv_heads})")
        if self.embedding_size is not None and self.embedding_size <= 0:
            _bad(f"embedding_size must be positive, got {self.embedding_size}")
        if self.embed_dim != self.d_model and self.position in ("learned", "sinusoidal"):
            # absolute positions are added in d_model space; they have no place before the projection
            _bad(f"embedding_size {self.embed_dim} != d_model {self.d_model} needs position=rope or none, "
                f"got position={self.position}")
        if self.d_ff is not None and self.d_ff <= 0:
            _bad(f"d_ff must be positive, got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attention_dropout < 1.0:
            _bad("dropout and attention_dropout must be in [0, 1)")
        if self.type_vocab_size < 0:
            _bad("type_vocab_size must be >= 0")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.target_vocab_size:
            # with a vocabulary per side it is the target's (the decoder's inputs are padded with it)
            _bad(
                f"pad_token_id {self.pad_token_id} is outside the vocabulary "
                f"(size {self.target_vocab_size})"
            )

    def _check_positions(self) -> None:
        if self.rotary_value and (self.position != "rope" or self.rope_scaling == "dynamic_ntk"):
            # dynamic NTK re-rotates cached keys with a new base; values would need the same
            _bad("rotary_value needs position=rope without dynamic_ntk scaling")
        if not 0.0 < self.rotary_fraction <= 1.0:
            _bad(f"rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        if self.position == "rope":
            if self.rotary_dim % 2 or self.rotary_dim == 0:
                _bad(
                    f"RoPE rotates pairs of dimensions: rotary dims = head_dim ({self.head_dim}) "
                    f"x rotary_fraction ({self.rotary_fraction}) = "
                    f"{self.head_dim * self.rotary_fraction:g} must be a positive even integer"
                )
            if abs(self.head_dim * self.rotary_fraction - self.rotary_dim) > 1e-6:
                _bad(
                    "head_dim x rotary_fraction must be an integer, "
                    f"got {self.head_dim * self.rotary_fraction:g}"
                )
            if self.rope_theta <= 0:
                _bad(f"rope_theta must be positive, got {self.rope_theta}")
            if self.rope_scaling != "none" and self.rope_scaling_factor < 1.0:
                _bad(f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}")
            if self.rope_scaling == "dynamic_ntk" and self.rotary_dim <= 2:
                # the NTK base exponent rotary_dim / (rotary_dim - 2) is undefined
                _bad(
                    f"rope_scaling=dynamic_ntk needs more than 2 rotary dims, got {self.rotary_dim}"
                )
        elif self.rope_scaling != "none":
            _bad(
                f"rope_scaling={self.rope_scaling} needs position=rope "
                f"(got position={self.position})"
            )
        if self.position == "sinusoidal" and self.d_model % 2:
            _bad(f"sinusoidal positions need an even d_model, got {self.d_model}")

    def _check_linear_attention(self) -> None:
        if self.position == "alibi":
            _bad("position=alibi is a bias on softmax scores, which linear attention does not form: "
                "use attention=softmax or another position")
        if self.attention_dropout:
            _bad("attention_dropout drops attention probabilities, which linear attention does not form: "
                "set it to 0")
        if self.position == "rope" and self.rope_scaling == "dynamic_ntk":
            # the running key-value state holds keys rotated with the base of their own step
            _bad("rope_scaling=dynamic_ntk re-rotates every cached key, which linear attention's running "
                "state cannot: use linear or yarn scaling")
        if self.rotary_value:
            _bad("rotary_value is not defined for linear attention (the paper rotates queries and keys)")

    # -- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Strict construction: ``preset`` may name a base that the other keys override."""
        data = dict(data)
        preset = data.pop("preset", None)
        if preset is not None:
            from rotary.model.presets import get_preset  # the presets are ModelConfig values

            base = to_dict(get_preset(preset))
            base.update(data)
            data = base
        return from_dict(cls, data, where="model")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(load_yaml(path))

    def to_yaml(self, path: str | Path) -> None:
        save_yaml(self.to_dict(), path)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def estimate_num_parameters(self) -> int:
        """Parameter count without building the model (embeddings included)."""
        d, hd = self.d_model, self.head_dim
        attn = d * (self.n_head * hd) + 2 * d * (self.kv_heads * hd) + (self.n_head * hd) * d
        mlp = (3 if self.mlp == "swiglu" else 2) * d * self.ff_dim
        norms = 2 * d * (2 if self.norm == "layernorm" else 1)
        per_layer = attn + mlp + norms
        if self.bias:
            qkv_bias = (self.n_head + 2 * self.kv_heads) * hd
            mlp_bias = self.ff_dim * (2 if self.mlp == "swiglu" else 1) + d
            per_layer += qkv_bias + d + mlp_bias  # q/k/v, o_proj, up, down
        e = self.embed_dim
        emb = self.vocab_size * e + self.type_vocab_size * e
        if e != d:
            emb += e * d + d  # the projection to d_model, with its bias
        if self.position == "learned":
            emb += self.max_seq_len * d
        out = 0 if self.tie_embeddings else self.vocab_size * d  # a causal LM's output projection
        # the final norm (pre-LN) or the embedding norm (post-LN, at the embeddings' width)
        norm_params = 2 if self.norm == "layernorm" else 1
        last_norm = (d * norm_params if self.pre_norm else 0) + (e * norm_params if self.has_embed_norm else 0)
        total = self.n_layer * per_layer + emb + out + last_norm
        if self.n_decoder_layer is not None:  # an encoder-decoder (Seq2SeqLM): the decoder stack too
            q, kv, o = d * self.n_head * hd, 2 * d * self.kv_heads * hd, self.n_head * hd * d
            cross = q + kv + o + d * norm_params
            if self.bias:
                cross += self.n_head * hd + 2 * self.kv_heads * hd + d
            total += self.decoder_layers * (per_layer + cross) + last_norm
            total += 0 if self.share_embeddings else self.target_vocab_size * e
            if not self.tie_embeddings:
                total += (self.target_vocab_size - self.vocab_size) * d  # the output projection is the target's
            total += self.max_seq_len * d if self.position == "learned" else 0
        return total
