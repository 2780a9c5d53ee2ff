"""A pretraining mix of corpora with weights: ``mix:peoples-daily=1,labelled:chinese-sentiment=2``.

A recipe writes it as a mapping, ``data.corpus: {peoples-daily: 1, sanguo: 0.5}``. A weight is
the passes over that corpus's train split per pass of the mix: 2 repeats every document twice,
0.5 takes a hash-chosen half (the same half every time). The validation split is every part's
validation documents, once each, so the evaluation does not change with the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rotary.data.sources.base import CORPUS_FORMAT_VERSION, Corpus, hash_fraction
from rotary.errors import RotaryError

PREFIX = "mix:"


def mixture_spec(parts: dict[str, Any]) -> str:
    """``{"a": 1, "b": 2}`` -> ``"mix:a=1,b=2"`` (what load_corpus reads), weights checked."""
    if not parts:
        raise RotaryError("recipe: data.corpus as a mapping needs at least one corpus: {name: weight, ...}")
    items = []
    for name, weight in parts.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise RotaryError(f"recipe: data.corpus weight of {name} must be a positive number, got {weight!r}")
        if "," in str(name) or "=" in str(name):
            raise RotaryError(f"recipe: data.corpus mixes corpora by name or path without ',' or '=': {name!r}")
        items.append(f"{name}={weight:g}")
    return PREFIX + ",".join(items)


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """``"mix:a=1,b=0.5"`` -> ``[("a", 1.0), ("b", 0.5)]``."""
    parts = []
    for item in spec[len(PREFIX):].split(","):
        name, eq, weight = item.strip().rpartition("=")
        if not eq or not name:
            name, weight = item.strip(), "1"
        try:
            w = float(weight)
        except ValueError:
            raise RotaryError(f"{spec}: weight of {name} is not a number: {weight!r}") from None
        if not w > 0:
            raise RotaryError(f"{spec}: weight of {name} must be positive, got {weight}")
        parts.append((name, w))
    if not parts or not all(name for name, _ in parts):
        raise RotaryError(f"{spec}: write a mix as mix:CORPUS=WEIGHT,CORPUS=WEIGHT")
    return parts


class MixtureCorpus(Corpus):
    """Several corpora as one: train documents repeated (or sampled) by weight, val ones once."""

    def __init__(self, parts: list[tuple[Corpus, float]], *, max_documents: int | None = None) -> None:
        super().__init__(max_documents=max_documents)
        self.parts = parts
        self.name = PREFIX + ",".join(f"{c.name}={w:g}" for c, w in parts)
        self.description = "a mix of " + ", ".join(f"{c.name} (x{w:g})" for c, w in parts)

    def _documents(self, split: str) -> Iterator[tuple[str, int]]:
        for corpus, weight in self.parts:
            if split != "train":
                yield from ((text, 0) for text in corpus.documents(split))
                continue
            for _ in range(int(weight)):
                yield from ((text, 0) for text in corpus.documents(split))
            share = weight - int(weight)
            if share > 0:  # salted: a corpus split by hash would otherwise lose the share next to its val
                yield from ((t, 0) for t in corpus.documents(split) if hash_fraction("mix\x00" + t) < share)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "format": CORPUS_FORMAT_VERSION, "max_documents": self.max_documents,
                "parts": [[c.fingerprint(), w] for c, w in self.parts]}

    def size_hint(self) -> int | None:
        sizes = [c.size_hint() for c, _ in self.parts]
        if any(s is None for s in sizes):
            return None
        return int(sum(s * (w + 0.1) for s, (_, w) in zip(sizes, self.parts)))  # ~ train x weight + val


def load_mixture(spec: str, load: Callable[[str], Corpus], **opts: Any) -> MixtureCorpus:
    """The mix ``spec`` names, each part by ``load`` (load_corpus with its defaults)."""
    unknown = set(opts) - {"max_documents"}
    if unknown:
        raise RotaryError(f"{spec}: a mix takes no corpus options ({', '.join(sorted(unknown))}); "
                          "give each part its defaults, or prepare it apart")
    return MixtureCorpus([(load(name), w) for name, w in parse_mixture(spec)], **opts)
