"""Typed, strict configuration: config dataclasses <-> YAML and ``--key value`` overrides.

The machinery only; the configs live with their owners (``rotary.model.config.ModelConfig``,
``rotary.train.config.TrainConfig``). Every dataclass field carries its documentation in
``metadata["help"]`` (see ``doc``), so ``--help`` and generated YAML can explain it. Unknown keys
are errors that name the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import field
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


def _mapping_expected(where: str, value: Any) -> str:
    """'expected a mapping' with how to give one key of it on the command line."""
    key = where.removeprefix("recipe.")
    name, _, given = str(value).partition("=")
    example = f"--{key}.{name.strip()} {given.strip()}" if given else f"--{key}.KEY VALUE"
    return f"{where}: expected a mapping, got {value!r} (on the command line set one key at a time: {example})"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation, converting strings from the command line."""
    origin = get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return _coerce_union(value, get_args(annotation), where)
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
            raise RotaryError(_mapping_expected(where, value))
        return dict(value)
    if annotation is Any:
        return value
    if annotation in _SCALARS:
        converted = _SCALARS[annotation][0](value)
        if converted is None:
            raise RotaryError(f"{where}: expected {_SCALARS[annotation][1]}, got {value!r}")
        return converted
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise RotaryError(_mapping_expected(where, value))
        return from_dict(annotation, value, where=where)
    return value


def _coerce_union(value: Any, options: tuple[Any, ...], where: str) -> Any:
    """The first option ``value`` fits (``null`` / ``none`` for an optional one)."""
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
    words = [w for opt in options for w in (("true", "false") if opt is bool else
                                               get_args(opt) if get_origin(opt) is Literal else ())]
    if len(errors) > 1 and all(opt is bool or get_origin(opt) is Literal for opt in options):
        raise RotaryError(f"{where}: {value!r} is not one of {', '.join(map(str, words))}")
    raise RotaryError(errors[0] if errors else f"{where}: invalid value {value!r}")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    word = value.lower() if isinstance(value, str) else None
    return True if word in ("true", "yes", "1", "on") else False if word in ("false", "no", "0", "off") else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = _as_float(value)  # "1e4"
    return int(value) if isinstance(value, float) and value.is_integer() else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _as_str(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


# annotation -> (converter returning None when the value does not fit, what the error says was expected)
_SCALARS: dict[Any, tuple[Callable[[Any], Any], str]] = {
    bool: (_as_bool, "true or false"), int: (_as_int, "an integer"), float: (_as_float, "a number"),
    str: (_as_str, "a string"),
}


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build the dataclass ``cls`` from a mapping, refusing unknown keys and bad types."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise RotaryError(
            f"{where}: expected a mapping of keys to values, got {type(data).__name__}"
        )
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
    """``["--max-steps", "10", "--model.n_layer=2"]`` -> ``{"max_steps": 10, "model.n_layer": 2}``.

    Dashes in key names become underscores; values are read as YAML scalars (so ``null``,
    ``[1, 2]`` and ``1e-3`` work; a mapping stays a string) and checked later by the schema.
    A bare ``--no-progress`` is ``progress: false``, the spelling the other verbs' flags use.
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
                if key.startswith("no-") or key.startswith("no_"):
                    key, value = key[3:], "false"
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: later keys override it, as YAML says
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader reports an unhashable key itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise RotaryError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as err:
        raise RotaryError(f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
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
