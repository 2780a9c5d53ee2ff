"""The dispatch tables (HF architecture or rotary model class -> family adapter) and the
conversions that use them: ``from_hf``, ``to_hf``, ``config_from_hf``, ``config_to_hf``.

A new family is one module with a ``FAMILY`` and one entry in ``FAMILIES``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rotary.errors import RotaryError
from rotary.hf import llama, marian, roformer
from rotary.hf.adapter import (
    Architecture,
    Family,
    assign,
    no_progress_bars,
    state_from_hf,
    state_to_hf,
    transformers_module,
)
from rotary.model.config import ModelConfig
from rotary.model.heads import RotaryModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

HFKind = Literal["llama", "roformer", "marian"]

# HF model_type -> family
FAMILIES: dict[str, Family] = {f.model_type: f for f in (llama.FAMILY, roformer.FAMILY, marian.FAMILY)}
# HF class name ("RoFormerForMaskedLM") -> (family, architecture)
ARCHITECTURES: dict[str, tuple[Family, Architecture]] = {
    a.hf_class: (f, a) for f in FAMILIES.values() for a in f.architectures
}
# rotary model class -> the (family, architecture) pairs that may express it: the way back
TO_HF: dict[type, list[tuple[Family, Architecture]]] = {}
for _pair in ARCHITECTURES.values():
    TO_HF.setdefault(_pair[1].rotary_class, []).append(_pair)


def config_from_hf(hf_config: PretrainedConfig) -> ModelConfig:
    """The rotary ``ModelConfig`` of a transformers Llama or RoFormer config (RotaryError if
    none)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in FAMILIES:
        raise RotaryError(
            f"cannot convert HF model_type '{model_type}': rotary converts {' and '.join(FAMILIES)}"
        )
    return FAMILIES[model_type].config_from_hf(hf_config)


def config_to_hf(cfg: ModelConfig, kind: HFKind, num_labels: int | None = None) -> PretrainedConfig:
    """A transformers config for ``cfg``: ``kind="llama"`` (causal LM) or ``"roformer"``
    (masked LM, or a sequence classifier when ``num_labels`` is given). RotaryError when
    ``cfg`` uses something that family cannot express."""
    if kind not in FAMILIES:
        raise RotaryError(f"unknown HF kind '{kind}' (choose {' or '.join(FAMILIES)})")
    return FAMILIES[kind].config_to_hf(cfg, num_labels)


def load_hf_dir(path: str | os.PathLike[str]) -> Any:
    """The transformers model saved in a local HF checkpoint directory, if rotary converts it."""
    tf = transformers_module()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RotaryError(f"{path}: not an HF checkpoint directory (no config.json)")
    hfc = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (getattr(hfc, "architectures", None) or [None])[0]
    if arch is None and hfc.model_type in FAMILIES:  # an old or hand-written config
        arch = FAMILIES[hfc.model_type].architectures[0].hf_class  # the family's usual head
    if arch not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        what = f"architecture {arch}" if arch is not None else f"a {hfc.model_type} model (model_type)"
        raise RotaryError(f"{path}: {what} is not convertible (supported: {supported})")
    with no_progress_bars():
        # weights_only: a pytorch_model.bin (the published RoFormers') is unpickled without running code
        return getattr(tf, arch).from_pretrained(path, local_files_only=True, weights_only=True)


def from_hf(hf_model: PreTrainedModel | str | os.PathLike[str]) -> RotaryModel:
    """The rotary model computing the same function as a transformers model (or a local HF
    checkpoint directory).

    ``LlamaForCausalLM`` -> CausalLM, ``RoFormerForMaskedLM`` -> MaskedLM,
    ``RoFormerForSequenceClassification`` -> SequenceClassifier(pooling="cls"),
    ``LlamaForSequenceClassification`` -> SequenceClassifier(pooling="last"). The result is in
    eval mode, on the HF model's device and dtype.
    """
    if isinstance(hf_model, (str, os.PathLike)):
        hf_model = load_hf_dir(hf_model)
    name = type(hf_model).__name__
    if name not in ARCHITECTURES:
        raise RotaryError(f"cannot convert {name}: rotary converts {', '.join(ARCHITECTURES)}")
    family, arch = ARCHITECTURES[name]
    cfg = family.config_from_hf(hf_model.config)
    hf_state = {k: v.detach() for k, v in hf_model.state_dict().items()}
    family.prepare_from_hf(hf_model, hf_state, cfg)
    model = arch.build(cfg, hf_model.config)
    expected = model.state_dict().keys()
    state = state_from_hf(hf_state, arch.names(cfg), family, cfg, expected)
    ref = next(iter(hf_state.values()))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model.to(device=ref.device, dtype=ref.dtype).eval()


def _architecture_of(model: RotaryModel) -> tuple[Family, Architecture]:
    for cls in type(model).__mro__:  # a subclass converts as its base
        for family, arch in TO_HF.get(cls, []):
            if arch.accepts(model):
                return family, arch
    names = [c.__name__ for c in TO_HF]
    raise RotaryError(
        f"cannot convert {type(model).__name__} to HF ({', '.join(names[:-1])} or {names[-1]})"
    )


def to_hf(model: RotaryModel) -> PreTrainedModel:
    """The transformers model computing the same function as ``model`` (eval mode, on its
    device and dtype).

    CausalLM -> ``LlamaForCausalLM``; MaskedLM -> ``RoFormerForMaskedLM``;
    SequenceClassifier(pooling="cls") -> ``RoFormerForSequenceClassification``;
    SequenceClassifier(pooling="last", a decoder) -> ``LlamaForSequenceClassification``.
    """
    family, arch = _architecture_of(model)
    cfg = model.config
    hf_config = arch.hf_config(model)  # RotaryError first: nothing is built for a refused model
    hf = getattr(transformers_module(), arch.hf_class)(hf_config)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    params = dict(hf.named_parameters(remove_duplicate=False))
    buffers = {n: b for n, b in hf.named_buffers() if n not in params}  # Marian's final_logits_bias
    state = state_to_hf(sd, arch.names(cfg), family, cfg, params | buffers)
    state |= {hf_name: sd[rotary_name] for hf_name, rotary_name in arch.hf_copies(cfg).items()}
    with torch.no_grad():
        for name in [n for n in state if n in buffers]:
            buffers[name].copy_(state.pop(name))
    assign(hf, state, family.hf_generated)
    ref = next(model.parameters())
    return hf.to(device=ref.device, dtype=ref.dtype).eval()
