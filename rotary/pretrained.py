"""Loading a run or checkpoint directory: ``rotary.load("runs/x").generate("To be")``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rotary.errors import RotaryError
from rotary.model import RotaryModel


class Pretrained:
    """A trained model with its tokenizer, ready to use."""

    def __init__(self, model: RotaryModel, tokenizer: Any, path: Path, config: dict[str, Any]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.config = config

    @property
    def task(self) -> str:
        return self.config.get("task", "")

    def check_generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """RotaryError for anything :meth:`generate` would refuse, before any output; returns the
        encoded prompts."""
        from rotary.generate import check_generation

        check_generation(self.model, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [self.tokenizer.encode(p) for p in prompts]
        for p, ids in zip(prompts, encoded):
            if not ids:
                raise RotaryError(f"prompt {p!r} encodes to no tokens: give at least one character of text")
        cfg = self.model.config
        longest = max(len(ids) for ids in encoded) + max_new_tokens
        if cfg.position == "learned" and longest > cfg.max_seq_len:
            raise RotaryError(f"prompt + max_new_tokens = {longest} tokens, more than the model's "
                              f"{cfg.max_seq_len} learned positions: lower --max-new-tokens")
        return encoded

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> str | list[str]:
        """Continue ``prompt`` (or each of a list of prompts); returns the continuation text."""
        from rotary.generate import generate

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = self.check_generate(prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        eos = self.tokenizer.eos_id if stop_at_eos else None
        rows = generate(self.model, encoded, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, eos_id=eos, pad_id=self.tokenizer.pad_id, seed=seed)
        texts = [self.tokenizer.decode([t for t in r if t != eos]) for r in rows]
        return texts[0] if isinstance(prompt, str) else texts

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> Iterator[str]:
        """Continue ``prompt``, yielding the text as it is generated (``for piece in
        pre.stream("ROMEO:"): print(piece, end="")``). The pieces join to :meth:`generate`'s text
        with the same arguments; a multi-byte character is held back until it is complete."""
        from rotary.generate import iter_tokens

        # checked before the first piece: a stream never stops half-way on a bad setting
        (encoded,) = self.check_generate([prompt], max_new_tokens, temperature=temperature, top_k=top_k,
                                         top_p=top_p)
        eos = self.tokenizer.eos_id if stop_at_eos else None
        emitted: list[int] = []
        shown = ""
        for nxt in iter_tokens(self.model, [encoded], max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, eos_id=eos, pad_id=self.tokenizer.pad_id, seed=seed):
            token = int(nxt[0])
            if token == eos:
                break
            emitted.append(token)
            text = self.tokenizer.decode(emitted)
            if not text.endswith("\ufffd"):  # wait for a multi-byte character to complete
                yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(emitted)
        if text != shown:
            yield text[len(shown):]

    def classify(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
                 batch_size: int = 32) -> list[dict[str, Any]]:
        """The label and the class probabilities of each text (or text pair)."""
        from rotary.classify import classify

        return classify(self, texts, text_pairs, batch_size=batch_size)

    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each [MASK] in ``text``, in order, the ``top_k`` (token, probability) pairs, as
        transformers' fill-mask pipeline computes them (``rotary.fill_mask``)."""
        from rotary.fill_mask import fill_mask

        return fill_mask(self.model, self.tokenizer, text, top_k)


def load(path: str | Path, device: str = "auto", which: str = "best", *, verify: bool = True) -> Pretrained:
    """Load a run directory (its best checkpoint, else the latest) or a checkpoint directory.

    The checkpoint is checked against its manifest first; ``verify=False`` skips the sha256
    sums (for very large models), sizes are still checked.
    """
    from rotary import checkpoint as ckpt
    from rotary.device import pick_device
    from rotary.tokenizer import load_tokenizer

    model, ckpt_dir = ckpt.load_model(path, pick_device(device), which, verify=verify)
    config = ckpt.read_json(ckpt_dir / "config.json")
    tok_dir = ckpt_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise RotaryError(f"{ckpt_dir} has no tokenizer/ directory: copy the tokenizer the model was "
                          "trained with into it (a directory with tokenizer.json)")
    return Pretrained(model, load_tokenizer(tok_dir), ckpt_dir, config)
