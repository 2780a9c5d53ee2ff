"""Typed, strict configuration: ``ModelConfig``, named presets, YAML and ``--key value`` overrides.

Every dataclass field carries its documentation in ``metadata["help"]``, so ``--help`` and
generated YAML can explain it. Unknown keys are errors that name the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from rotary.errors import RotaryError

T = TypeVar("T")


def doc(default: Any, help: str) -> Any:
    """A dataclass field with its documentation next to it."""
    return field(default=default, metadata={"help": help})


# ---------------------------------------------------------------------------------------------
# Generic strict (de)serialisation for config dataclasses
# ---------------------------------------------------------------------------------------------


def closest_key_hint(key: str, valid: typing.Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, or a list of the valid keys when nothing is close."""
    valid = sorted(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{match[0]}'?)"
    return f" (valid keys: {', '.join(valid)})"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation, converting strings from the command line."""
    origin = get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        options = get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, where)
            except RotaryError as err:
                errors.append(str(err))
        raise RotaryError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise RotaryError(
                f"{where}: {value!r} is not one of {', '.join(map(str, choices))}{extra}"
            )
        return value
    if origin in (list, tuple):
        (inner, *_) = get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise RotaryError(f"{where}: expected a list, got {value!r}")
        return origin(_coerce(v, inner, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise RotaryError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise RotaryError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise RotaryError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    as_float = float(value)  # "1e4"
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
        raise RotaryError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise RotaryError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise RotaryError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RotaryError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise RotaryError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where=where)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build the dataclass ``cls`` from a mapping, refusing unknown keys and bad types."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise RotaryError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise RotaryError(f"{where}: unknown key '{key}'{closest_key_hint(key, names)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise RotaryError(f"{where}: {err}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def parse_overrides(pairs: typing.Sequence[str]) -> dict[str, Any]:
    """``["--max-steps", "10", "--model.n_layer=2"]`` -> ``{"max_steps": "10", "model.n_layer": "2"}``.

    Dashes in key names become underscores; values stay strings and are coerced by the schema
    (YAML scalars are parsed so ``null``, ``[1, 2]`` and ``1e-3`` work).
    """
    out: dict[str, Any] = {}
    i = 0
    pairs = list(pairs)
    while i < len(pairs):
        item = pairs[i]
        if not item.startswith("--"):
            raise RotaryError(f"unexpected argument '{item}': overrides look like --key value")
        key = item[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(pairs) or pairs[i + 1].startswith("--"):
                value = "true"  # a bare flag
                i += 1
            else:
                value = pairs[i + 1]
                i += 2
        key = key.replace("-", "_")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out[key] = value if isinstance(parsed, (dict,)) else parsed
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge dotted-key overrides (``model.n_layer``) into a nested mapping, returning a copy."""
    merged = _deep_copy(data)
    for key, value in overrides.items():
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return merged


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise RotaryError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RotaryError(f"{path}: invalid YAML{at}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RotaryError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write YAML atomically (temp file + rename)."""
    from rotary.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

MLPKind = Literal["swiglu", "gelu", "relu"]
NormKind = Literal["rmsnorm", "layernorm"]
PositionKind = Literal["rope", "learned", "sinusoidal", "none"]
RopeScaling = Literal["none", "linear", "dynamic_ntk", "yarn"]


@dataclass
class ModelConfig:
    """One description for every rotary model: encoder or decoder, MHA/GQA/MQA, any position scheme.

    The head (causal LM, masked LM, classifier) is chosen by the model class, not here.
    """

    vocab_size: int = doc(32768, "number of token ids the embedding holds")
    max_seq_len: int = doc(1024, "longest sequence trained on; learned positions are capped here, RoPE is not")
    n_layer: int = doc(6, "number of Transformer blocks")
    n_head: int = doc(8, "attention heads for queries")
    n_kv_head: int | None = doc(None, "heads for keys/values: None = n_head (MHA), 1 = MQA, else GQA")
    d_model: int = doc(512, "hidden width")
    d_ff: int | None = doc(None, "MLP inner width; None = 4*d_model (gelu/relu) or 8/3*d_model rounded to 64 (swiglu)")
    mlp: MLPKind = doc("swiglu", "MLP kind: swiglu (Llama), gelu (BERT/RoFormer) or relu")
    norm: NormKind = doc("rmsnorm", "normalisation: rmsnorm (Llama) or layernorm (BERT/RoFormer)")
    norm_eps: float = doc(1e-5, "epsilon inside the norm")
    pre_norm: bool = doc(True, "pre-LN blocks with a final norm; False = post-LN as in BERT/RoFormer")
    bias: bool = doc(False, "biases in the linear layers")
    dropout: float = doc(0.0, "dropout on embeddings, residual branches and MLP")
    attention_dropout: float = doc(0.0, "dropout on attention probabilities")
    causal: bool = doc(True, "causal (decoder) attention; False = bidirectional (encoder)")
    position: PositionKind = doc("rope", "position scheme: rope, or the learned/sinusoidal/none baselines")
    rope_theta: float = doc(10000.0, "RoPE base")
    rope_scaling: RopeScaling = doc("none", "context extension: none, linear, dynamic_ntk or yarn")
    rope_scaling_factor: float = doc(1.0, "context extension factor for rope_scaling")
    rope_original_max_seq_len: int | None = doc(None, "context length the model was trained at (default: max_seq_len)")
    yarn_beta_fast: float = doc(32.0, "YaRN: rotations above which dimensions are not interpolated")
    yarn_beta_slow: float = doc(1.0, "YaRN: rotations below which dimensions are fully interpolated")
    rotary_fraction: float = doc(1.0, "fraction of each head's dimensions that RoPE rotates (partial rotary)")
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
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

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
        def bad(msg: str) -> None:
            raise RotaryError(f"ModelConfig: {msg}")

        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            bad(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.kv_heads <= 0 or self.n_head % self.kv_heads:
            bad(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.kv_heads})")
        if self.d_ff is not None and self.d_ff <= 0:
            bad(f"d_ff must be positive, got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attention_dropout < 1.0:
            bad("dropout and attention_dropout must be in [0, 1)")
        if not 0.0 < self.rotary_fraction <= 1.0:
            bad(f"rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        if self.position == "rope":
            if self.rotary_dim % 2 or self.rotary_dim == 0:
                bad(
                    f"RoPE rotates pairs of dimensions: rotary dims = head_dim ({self.head_dim}) "
                    f"x rotary_fraction ({self.rotary_fraction}) = {self.head_dim * self.rotary_fraction:g} must be a positive even integer"
                )
            if abs(self.head_dim * self.rotary_fraction - self.rotary_dim) > 1e-6:
                bad(f"head_dim x rotary_fraction must be an integer, got {self.head_dim * self.rotary_fraction:g}")
            if self.rope_theta <= 0:
                bad(f"rope_theta must be positive, got {self.rope_theta}")
            if self.rope_scaling != "none" and self.rope_scaling_factor < 1.0:
                bad(f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}")
            if self.rope_scaling == "dynamic_ntk" and self.rotary_dim <= 2:
                # the NTK base exponent rotary_dim / (rotary_dim - 2) is undefined
                bad(f"rope_scaling=dynamic_ntk needs more than 2 rotary dims, got {self.rotary_dim}")
        elif self.rope_scaling != "none":
            bad(f"rope_scaling={self.rope_scaling} needs position=rope (got position={self.position})")
        if self.position == "sinusoidal" and self.d_model % 2:
            bad(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.type_vocab_size < 0:
            bad("type_vocab_size must be >= 0")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            bad(f"pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")

    # -- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Strict construction: ``preset`` may name a base that the other keys override."""
        data = dict(data)
        preset = data.pop("preset", None)
        if preset is not None:
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
            per_layer += (self.n_head + 2 * self.kv_heads) * hd + d + self.ff_dim * (2 if self.mlp == "swiglu" else 1) + d
        emb = self.vocab_size * d + self.type_vocab_size * d
        if self.position == "learned":
            emb += self.max_seq_len * d
        out = 0 if self.tie_embeddings else self.vocab_size * d
        return self.n_layer * per_layer + emb + out + d * (2 if self.norm == "layernorm" else 1)


# Named presets are plain ModelConfig values.
PRESETS: dict[str, ModelConfig] = {
    # RoFormer paper / HF junnyu/roformer_chinese_base: BERT-base shape, post-LN, GELU, LayerNorm.
    "roformer-base": ModelConfig(
        vocab_size=50000, max_seq_len=1536, n_layer=12, n_head=12, d_model=768, d_ff=3072,
        mlp="gelu", norm="layernorm", norm_eps=1e-12, pre_norm=False, bias=True, dropout=0.1,
        attention_dropout=0.1, causal=False, type_vocab_size=2, pad_token_id=0,
        tie_embeddings=True,
    ),
    "roformer-small": ModelConfig(
        vocab_size=50000, max_seq_len=1536, n_layer=6, n_head=6, d_model=384, d_ff=1536,
        mlp="gelu", norm="layernorm", norm_eps=1e-12, pre_norm=False, bias=True, dropout=0.1,
        attention_dropout=0.1, causal=False, type_vocab_size=2, pad_token_id=0,
    ),
    # A ~100M Llama-style decoder: GQA + SwiGLU + RMSNorm.
    "llama-small": ModelConfig(
        vocab_size=32768, max_seq_len=2048, n_layer=12, n_head=12, n_kv_head=4, d_model=768,
        d_ff=2048, mlp="swiglu", norm="rmsnorm", norm_eps=1e-5, tie_embeddings=True,
        rope_theta=10000.0,
    ),
    # The shape PERF.md measures and the demo trains: 6 layers, d=384, 6 heads, 2 KV heads.
    "llama-mini": ModelConfig(
        vocab_size=8192, max_seq_len=256, n_layer=6, n_head=6, n_kv_head=2, d_model=384,
        d_ff=1024, mlp="swiglu", norm="rmsnorm",
    ),
    "tiny": ModelConfig(
        vocab_size=256, max_seq_len=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128,
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise RotaryError(f"unknown model preset '{name}'{closest_key_hint(name, PRESETS)}")
    return dataclasses.replace(PRESETS[name])
