"""What an HF family adapter is, and the generic code that converts along one.

A family (``llama.py``, ``roformer.py``) is data: a config mapping in each direction, and a
state-dict name map from rotary names to HF names (torchtitan's ``state_dict_adapter`` style),
with the few tensor transforms (RoFormer's Q/K row permutation) stated next to it. This module
renames, fuses, splits and transforms tensors along such a map; it knows no family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rotary.errors import RotaryError
from rotary.model.config import ModelConfig

if TYPE_CHECKING:
    from rotary.model.heads import RotaryModel

NameMap = dict[str, "str | tuple[str, ...]"]
"""rotary name -> HF name, where ``{}`` stands for the layer index. A tuple names the HF tensors
that rotary fuses into one, concatenated along dim 0 in that order (W_q | W_k | W_v, gate | up)."""


@dataclass(frozen=True)
class Transform:
    """A change of a tensor's layout that goes with its rename; ``to_hf`` undoes ``from_hf``."""

    from_hf: Callable[[torch.Tensor, ModelConfig], torch.Tensor]
    to_hf: Callable[[torch.Tensor, ModelConfig], torch.Tensor]


def _no_copies(cfg: ModelConfig) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Architecture:
    """One HF model class of a family and the rotary model it converts to."""

    hf_class: str  # the transformers class, e.g. "RoFormerForMaskedLM"
    rotary_class: type[RotaryModel]
    # (rotary config, HF config) -> a rotary model with the right head, weights to be loaded
    build: Callable[[ModelConfig, Any], RotaryModel]
    # rotary model -> HF config; RotaryError when the model cannot be expressed in this class
    hf_config: Callable[[RotaryModel], Any]
    # the name map for a config (a tied head maps differently from an untied one)
    names: Callable[[ModelConfig], NameMap]
    # HF tensors that repeat a mapped one, which to_hf fills too: HF name -> rotary name
    hf_copies: Callable[[ModelConfig], dict[str, str]] = _no_copies
    # whether this architecture expresses a rotary model of rotary_class (one class, two layouts:
    # a classifier pooling the last token is Llama's, one pooling [CLS] is RoFormer's)
    accepts: Callable[[RotaryModel], bool] = lambda model: True


def _nothing_to_check(hf_model: Any, hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    return None


@dataclass(frozen=True)
class Family:
    """An HF ``model_type`` that rotary converts, with its architectures and conversions."""

    model_type: str  # "llama", "roformer"
    architectures: tuple[Architecture, ...]  # the first is the head of a config that names none
    config_from_hf: Callable[[Any], ModelConfig]
    config_to_hf: Callable[[ModelConfig, int | None], Any]  # (config, num_labels)
    # HF name template -> the transform its tensor goes through
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    # HF tensors that a rotary model may lack (biases, token types) are written as zeros, which
    # computes the same function; otherwise a missing tensor is a conversion bug
    zero_fill: bool = False
    hf_generated: tuple[str, ...] = ()  # prefixes of HF parameters that HF builds itself
    # checks the HF model and completes its state dict before renaming (RotaryError if refused)
    prepare_from_hf: Callable[[Any, dict[str, torch.Tensor], ModelConfig], None] = _nothing_to_check


def with_labels(hf_config: Any, model: Any) -> Any:
    """A classifier's label names as transformers keeps them (id2label / label2id), so that HF
    pipelines print names, not LABEL_0."""
    names = getattr(model, "label_names", None)
    if names:
        hf_config.id2label = {i: str(n) for i, n in enumerate(names)}
        hf_config.label2id = {str(n): i for i, n in enumerate(names)}
    return hf_config


def labelled(model: Any, hf_config: Any) -> Any:
    """The way back: a converted classifier keeps the HF config's label names (transformers'
    LABEL_i placeholders become rotary's default "i")."""
    id2label = getattr(hf_config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(model.num_labels)]
    model.label_names = [str(i) if n == f"LABEL_{i}" else n for i, n in enumerate(names)]
    return model


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise RotaryError("HF conversion needs transformers: pip install 'rotary[hf]'") from None
    return transformers


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards" bars, off: they say nothing about
    a conversion that takes a second."""
    hf_logging = transformers_module().utils.logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def require(ok: bool, family: str, msg: str) -> None:
    """Refuse a conversion with a message that names the setting HF ``family`` cannot express."""
    if not ok:
        raise RotaryError(f"cannot express this model as HF {family}: {msg}")


def fused(template: str, *parts: str) -> tuple[str, ...]:
    """The HF names of the tensors rotary fuses into one, in order: ``template`` with its ``*``
    replaced by each part (``fused("attn.*_proj.weight", "q", "k", "v")``)."""
    return tuple(template.replace("*", part) for part in parts)


def require_rope_softmax(cfg: ModelConfig, family: str) -> None:
    """Refuse what no HF family rotary converts can express: other positions than RoPE, other
    attention than softmax."""
    require(cfg.position == "rope", family,
            f"{family} has only RoPE positions, this model uses position={cfg.position}")
    require(cfg.attention == "softmax", family,
            f"{family} has softmax attention, this model uses attention={cfg.attention}")


def bert_style_fields_from_hf(hfc: Any) -> dict[str, Any]:
    """The ModelConfig fields of the settings that Llama's and RoFormer's configs both name as
    BERT does (hidden_size, num_hidden_layers, ...); a RoPE model's."""
    return {"vocab_size": hfc.vocab_size, "max_seq_len": hfc.max_position_embeddings,
            "n_layer": hfc.num_hidden_layers, "n_head": hfc.num_attention_heads, "d_model": hfc.hidden_size,
            "d_ff": hfc.intermediate_size, "tie_embeddings": bool(hfc.tie_word_embeddings),
            "pad_token_id": hfc.pad_token_id, "initializer_range": float(hfc.initializer_range),
            "position": "rope"}


def bert_style_fields_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The inverse of :func:`bert_style_fields_from_hf`: those settings under their HF names."""
    return {"vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ff_dim, "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": cfg.pad_token_id, "initializer_range": cfg.initializer_range}


def permute_heads(t: torch.Tensor, n_heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the rows of every head of a (n_heads*hd, ...) weight or (n_heads*hd,) bias."""
    hd = t.shape[0] // n_heads
    return t.reshape(n_heads, hd, *t.shape[1:])[:, perm].reshape(t.shape)  # (n_heads, hd, ...)


def expand(names: NameMap, n_layer: int) -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every concrete entry of ``names``: (rotary name, ((HF name, HF template), ...)), with a
    ``{}`` template once per layer."""
    for rotary_name, hf in names.items():
        templates = (hf,) if isinstance(hf, str) else hf
        layers = [str(i) for i in range(n_layer)] if "{}" in rotary_name else [""]
        for i in layers:
            yield rotary_name.replace("{}", i), tuple((t.replace("{}", i), t) for t in templates)


def state_from_hf(
    hf_state: dict[str, torch.Tensor],
    names: NameMap,
    family: Family,
    cfg: ModelConfig,
    expected: Collection[str],
) -> dict[str, torch.Tensor]:
    """The rotary state dict for the ``expected`` names (a bias-free model has no bias entries)."""
    out = {}
    for rotary_name, parts in expand(names, cfg.n_layer):
        if rotary_name not in expected:
            continue
        tensors = []
        for hf_name, template in parts:
            t = hf_state[hf_name]
            if template in family.transforms:
                t = family.transforms[template].from_hf(t, cfg)
            tensors.append(t)
        out[rotary_name] = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
    return out


def state_to_hf(
    state: dict[str, torch.Tensor],
    names: NameMap,
    family: Family,
    cfg: ModelConfig,
    hf_params: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The HF tensors for a rotary state dict; a fused tensor splits by the HF tensors' sizes."""
    out = {}
    for rotary_name, parts in expand(names, cfg.n_layer):
        hf_names = [n for n, _ in parts]
        if rotary_name not in state:  # e.g. the biases of a bias-free model
            if family.zero_fill:
                out |= {n: torch.zeros(hf_params[n].shape) for n in hf_names if n in hf_params}
            continue
        lacking = [n for n in hf_names if n not in hf_params]
        if lacking:
            raise RuntimeError(f"converter produced names the HF model lacks: {lacking[:5]}")
        t = state[rotary_name]
        pieces = [t] if len(parts) == 1 else t.split([hf_params[n].shape[0] for n in hf_names])
        for (hf_name, template), t in zip(parts, pieces):
            if template in family.transforms:
                t = family.transforms[template].to_hf(t, cfg)
            out[hf_name] = t
    return out


def assign(hf_model: Any, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
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
