"""Conversion to and from HF transformers: Llama (causal LM, classifier), RoFormer (masked LM, classifier).

    from_hf(hf_model_or_dir)       LlamaForCausalLM    -> CausalLM
                                   RoFormerForMaskedLM -> MaskedLM
                                   RoFormerForSequenceClassification
                                                       -> SequenceClassifier(pooling="cls")
                                   LlamaForSequenceClassification
                                                       -> SequenceClassifier(pooling="last")
    to_hf(model)                   the way back (a transformers model instance)
    save_hf(model, out_dir)        config.json + model.safetensors via save_pretrained, loadable
                                   by AutoModelForCausalLM / AutoModelForMaskedLM / ...
    copy_hf_tokenizer(src, dst)    an HF checkpoint's tokenizer into a rotary checkpoint's
                                   tokenizer/
    config_from_hf / config_to_hf  the configs alone

Every conversion is exact (same logits up to float rounding) or refused with a ``RotaryError``
that names the setting which cannot be expressed on the other side; nothing is approximated.

One module per family (``llama``, ``roformer``): a config mapping each way and a state-dict
name map written as data, with the decisions where the two sides differ. ``adapter`` converts
along such a map, ``convert`` holds the dispatch tables, ``files`` the directory on disk.
"""

from rotary.hf.convert import config_from_hf, config_to_hf, from_hf, to_hf
from rotary.hf.files import copy_hf_tokenizer, save_hf, tokenizer_special_ids
from rotary.model.rope import pairs_to_halves

__all__ = ["config_from_hf", "config_to_hf", "copy_hf_tokenizer", "from_hf", "pairs_to_halves",
           "save_hf", "to_hf", "tokenizer_special_ids"]
