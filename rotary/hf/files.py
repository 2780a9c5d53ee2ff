"""An HF checkpoint directory on disk: ``save_hf`` writes one, and the tokenizer files go in
and out of a rotary checkpoint (``copy_hf_tokenizer``, ``tokenizer_special_ids``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import no_grad

from rotary.errors import RotaryError
from rotary.hf.adapter import no_progress_bars, transformers_module
from rotary.hf.convert import to_hf
from rotary.model.heads import RotaryModel

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    # rotary's pre-tokenizer record (jieba), which tokenizer.json cannot hold
    "rotary_tokenizer.json",
)


def tokenizer_special_ids(tokenizer_dir: str | os.PathLike[str]) -> dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` of an HF tokenizer directory, from
    its tokenizer_config.json / special_tokens_map.json and tokenizer.json (those it defines)."""
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


def copy_hf_tokenizer(
    src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str]
) -> Path | None:
    """Copy the tokenizer of an HF checkpoint directory into ``dst_dir`` (a rotary checkpoint's
    ``tokenizer/``) so that ``rotary.tokenizer.load_tokenizer`` and ``rotary generate`` use it.

    A directory with only a slow tokenizer's files (``vocab.txt``, ``tokenizer.model``) also
    gets the ``tokenizer.json`` that transformers converts them to. A RoFormer tokenizer (the
    published ``roformer_chinese_*`` checkpoints: ``vocab.txt`` and jieba) becomes a rotary
    jieba WordPiece tokenizer that segments as transformers' ``RoFormerTokenizer``. Returns
    ``dst_dir``, or None when ``src_dir`` holds no tokenizer. ``dst_dir`` appears complete or not
    at all.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    files = [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not files:
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / "tokenizer"
        if _is_roformer_tokenizer(src):
            _roformer_tokenizer(src).save(staged)
            files = []
        else:
            staged.mkdir()
        for f in files:
            shutil.copy2(f, staged / f.name)
        if not (staged / "tokenizer.json").is_file():
            tf = transformers_module()
            try:
                tok = tf.AutoTokenizer.from_pretrained(src, use_fast=True, local_files_only=True)
            except Exception as err:  # transformers raises many types for an unusable directory
                first_line = str(err).splitlines()[0]
                msg = f"{src}: transformers cannot load its tokenizer ({first_line})"
                raise RotaryError(msg) from None
            if not getattr(tok, "is_fast", False):
                raise RotaryError(
                    f"{src}: its tokenizer has no fast (tokenizer.json) form, which rotary needs"
                )
            tok.backend_tokenizer.save(str(staged / "tokenizer.json"))
        _drop_the_exported_eos_template(staged / "tokenizer.json")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(staged, dst)
    return dst


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RotaryError(f"{path}: invalid JSON") from None
    return data if isinstance(data, dict) else {}


def _is_roformer_tokenizer(src: Path) -> bool:
    """Whether transformers would load ``src``'s tokenizer as ``RoFormerTokenizer`` (jieba words
    over ``vocab.txt``), which no tokenizer.json can express. A folder that rotary wrote says
    so in its own record and is copied as it is."""
    from rotary.tokenizer import RECORD

    if (src / RECORD).is_file() or not (src / "vocab.txt").is_file():
        return False
    declared = _read_json(src / "tokenizer_config.json").get("tokenizer_class")
    if declared:
        return declared in ("RoFormerTokenizer", "RoFormerTokenizerFast")
    return _read_json(src / "config.json").get("model_type") == "roformer"


def _roformer_tokenizer(src: Path) -> Any:
    """The rotary jieba WordPiece tokenizer of a RoFormer checkpoint: transformers builds the
    backend from ``vocab.txt`` and the tokenizer_config (normaliser, template); rotary applies
    the jieba step itself, as its own jieba tokenizers do."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    from rotary.tokenizer import Tokenizer

    tf = transformers_module()
    try:
        hf_tok = tf.AutoTokenizer.from_pretrained(src, local_files_only=True)
    except Exception as err:  # transformers raises many types for an unusable directory
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RotaryError(f"{src}: transformers cannot load its RoFormer tokenizer ({first})") from None
    backend = hf_tok.backend_tokenizer
    shown = backend.pre_tokenizer
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # jieba (custom) cannot be serialised
    try:
        text = backend.to_str()
    finally:
        backend.pre_tokenizer = shown
    ours = HFTokenizer.from_str(text)
    specials = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if ours.token_to_id(t) is not None]
    ours.add_special_tokens(specials)  # cut out before jieba, as transformers' added tokens are
    lowercase = bool(json.loads(text).get("normalizer", {}).get("lowercase"))
    return Tokenizer(ours, "wordpiece", jieba=True, lowercase=lowercase,
                     meta={"converted_from": type(hf_tok).__name__})


def save_hf(
    model: RotaryModel,
    out_dir: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Path:
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
        tok_files = [Path(tokenizer_dir) / n for n in TOKENIZER_FILES]
        tok_files = [f for f in tok_files if f.is_file()]
        if not tok_files:
            known = ", ".join(TOKENIZER_FILES[:3])
            raise RotaryError(f"{tokenizer_dir}: no HF tokenizer files ({known}, ...)")
        special = tokenizer_special_ids(tokenizer_dir)
        if model.config.pad_token_id is not None:  # the model's own padding id stays
            special.pop("pad_token_id", None)
        if type(model).__name__ == "Seq2SeqLM":  # rotary's own EOS convention ([SEP] or <|endoftext|>)
            from rotary.data.seq2seq import special_ids
            from rotary.tokenizer import load_tokenizer

            _, eos = special_ids(load_tokenizer(tokenizer_dir))
            special |= {"eos_token_id": eos, "forced_eos_token_id": eos}
        for key, value in special.items():
            setattr(hf.config, key, value)
            if getattr(hf, "generation_config", None) is not None:
                setattr(hf.generation_config, key, value)
        _stop_at_end_of_turn(hf, Path(tokenizer_dir))
    out.mkdir(parents=True, exist_ok=True)
    # save_pretrained writes in place: write to a temp dir beside out_dir, then rename each file.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        for f in tok_files:
            shutil.copy2(f, Path(tmp) / f.name)
        if tokenizer_dir is not None:
            _encode_as_a_decoder_classifier(model, hf, Path(tokenizer_dir), Path(tmp))
        with no_progress_bars():
            hf.save_pretrained(tmp)
        for f in sorted(Path(tmp).iterdir()):
            os.replace(f, out / f.name)
    return out


def _stop_at_end_of_turn(hf: Any, tokenizer_dir: Path) -> None:
    """A tokenizer with a chat template: transformers' ``generate`` stops at its end-of-turn
    token as well as at EOS (generation_config's list of eos ids), as rotary's chat does."""
    from rotary.tokenizer import load_tokenizer

    generation = getattr(hf, "generation_config", None)
    tok = load_tokenizer(tokenizer_dir) if (tokenizer_dir / "tokenizer.json").is_file() else None
    if generation is None or tok is None or tok.chat_template is None or tok.end_of_turn_id == tok.eos_id:
        return
    generation.eos_token_id = [tok.eos_id, tok.end_of_turn_id]


def _drop_the_exported_eos_template(tokenizer_json: Path) -> None:
    """The way back from :func:`_encode_as_a_decoder_classifier`: rotary appends the
    classifier's ``<|endoftext|>`` itself, so the template that appends it goes (else twice)."""
    from rotary.tokenizer.tokenizer import EOT

    data = _read_json(tokenizer_json)
    post = data.get("post_processor") or {}
    steps = post.get("processors") if post.get("type") == "Sequence" else None
    if not (isinstance(steps, list) and len(steps) == 2 and steps[0].get("type") == "ByteLevel"
            and steps[1].get("type") == "TemplateProcessing"):
        return
    single = [next(iter(piece.values())).get("id") for piece in steps[1].get("single", [])]
    if single != ["A", EOT]:
        return
    data["post_processor"] = steps[0]
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


PAD_TOKEN = "<|pad|>"  # a decoder classifier's padding token in transformers, never in text


def _encode_as_a_decoder_classifier(model: RotaryModel, hf: Any, tokenizer_dir: Path, out: Path) -> None:
    """A decoder classifier on a byte-level BPE (``<|endoftext|>``) vocabulary reads each text,
    and each text of a pair, followed by ``<|endoftext|>`` and pools the last real token
    (``rotary.data.classification``). In transformers the tokenizer must append the same EOS, and
    ``LlamaForSequenceClassification`` finds the last real token as the last one that is not
    ``pad_token_id``: a padding token of its own (never EOS, never in text) is added, with a
    zero embedding row when the vocabulary has no spare id. Other models are left as they are."""
    from rotary.model.classifier import SequenceClassifier
    from rotary.tokenizer import load_tokenizer
    from rotary.tokenizer.tokenizer import EOT

    if not (isinstance(model, SequenceClassifier) and model.pooling == "last" and (out / "tokenizer.json").is_file()):
        return
    if not load_tokenizer(tokenizer_dir).is_causal:
        return
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos = backend.token_to_id(EOT)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"$A:0 {EOT}:0", pair=f"$A:0 {EOT}:0 $B:1 {EOT}:1",
                                      special_tokens=[(EOT, eos)]),
    ])
    if model.config.pad_token_id is None:
        backend.add_special_tokens([PAD_TOKEN])
        pad = backend.token_to_id(PAD_TOKEN)
        if pad >= hf.config.vocab_size:  # no spare id: one more embedding row, zero (it is never attended to)
            hf.resize_token_embeddings(pad + 1, mean_resizing=False)
            with no_grad():
                hf.get_input_embeddings().weight[pad:].zero_()
        hf.config.pad_token_id = pad
        config = _read_json(out / "tokenizer_config.json")
        config["pad_token"] = PAD_TOKEN
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    backend.save(str(out / "tokenizer.json"))
    # rotary's record of the tokenizer.json it trained (a hash) no longer describes this one
    (out / "rotary_tokenizer.json").unlink(missing_ok=True)
