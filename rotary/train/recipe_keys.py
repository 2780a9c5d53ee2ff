"""Every recipe key with its type, default and help: what ``rotary train --help`` lists and what
the command line's ``--key value`` parsing reads."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from rotary.train.config import TrainConfig


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin is typing.Union or origin is types.UnionType:
        return "|".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def recipe_keys(cls: type = None, prefix: str = "") -> list[tuple[str, str, Any, str]]:  # type: ignore[assignment]
    """Every recipe key as (dotted key, type, default, help), nested dataclasses flattened and
    ``model`` expanded into ModelConfig's fields (what ``rotary train --help`` lists)."""
    from rotary.model.config import ModelConfig

    cls = cls or TrainConfig
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, str, Any, str]] = []
    for f in dataclasses.fields(cls):
        key, annotation, help_text = prefix + f.name, hints[f.name], f.metadata.get("help", "")
        if dataclasses.is_dataclass(annotation):
            out.extend(recipe_keys(annotation, key + "."))
        elif cls is TrainConfig and f.name == "model":
            out.append((key + ".preset", "str", None,
                        "a model preset (rotary info lists them) the other model keys override"))
            out.extend(recipe_keys(ModelConfig, key + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((key, _type_name(annotation), default, help_text))
    return out


def recipe_keys_help() -> str:
    """The recipe keys as help text: one line per key with its type, default and meaning."""
    rows = recipe_keys()
    width = max(len(k) for k, *_ in rows) + 2
    lines = ["recipe keys (in the YAML, or on the command line as --key value / --key=value;",
             "dashes and underscores are the same, nested keys are dotted: --model.n_layer 4):"]
    for key, type_name, default, help_text in rows:
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        lines.append(f"  {key:<{width}}{type_name} = {shown}  {help_text}")
    return "\n".join(lines)
