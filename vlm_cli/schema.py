"""Typed loading of nested dataclasses from YAML-like dicts, with ``key=value`` overrides.

The recipe schema (:mod:`vlm_cli.recipe`) is plain dataclasses; this module turns a parsed YAML
mapping into them and rejects anything else, in the spirit of torchtune's ``tune validate``:

- an unknown key is an error naming the valid keys at that level;
- a wrong type names the dotted key and the expected type;
- ``a.b.c=value`` overrides (the value parsed as YAML, so ``2e-4``, ``true``, ``null``, ``[1, 2]``
  work) are applied to the mapping before validation, with the same errors.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Literal[...]``,
``X | None``, ``list[X]``, ``dict[str, Any]`` (free-form, e.g. a transformers config) and nested
dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from vlm_cli.errors import RecipeError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (nested dataclasses built)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:  # X | None: report X's own error (it names the nested key)
            return _convert(value, concrete[0], key)
        for arg in concrete:
            try:
                return _convert(value, arg, key)
            except RecipeError:
                continue
        raise RecipeError(f"recipe key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise RecipeError(f"recipe key {key!r}: expected one of {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"recipe key {key!r}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"recipe key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 (PyYAML) reads 2e-4 and 1E5 as strings: accept the usual float spellings.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported schema type {tp!r} at {key}")
    raise RecipeError(f"recipe key {key!r}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating keys and types recursively.

    Raises:
        RecipeError: ``data`` is not a mapping, has a key ``cls`` does not define (the message lists
            the valid keys), misses a required key, or holds a value of the wrong type.
    """
    where = prefix or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe key {where!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise RecipeError(f"unknown recipe key {name!r}; valid keys"
                          f"{' under ' + repr(prefix) if prefix else ''}: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(f"recipe key {key!r} is required ({_type_name(hints[name])})")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-dict form of a schema object (what is saved as the resolved recipe)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with libyaml's C parser when PyYAML has it (the same safe loader,
    ~10x faster; recipes and overrides are parsed on every command), else the Python one.

    Raises:
        yaml.YAMLError: the text is not YAML.
    """
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a nested mapping (in place; also returned).

    The value is parsed as YAML (``2e-4`` -> float, ``true`` -> bool, ``null`` -> None). Missing
    intermediate mappings are created, so validation afterwards reports an unknown key by name.

    Raises:
        RecipeError: an override without ``=`` or with an empty key, or one that descends into a
            value that is not a mapping.
    """
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise RecipeError(f"override {item!r}: expected KEY=VALUE, e.g. data.frames=16")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML: keep the text
        if isinstance(value, str) and value.lower() in {"nan", ".nan"}:
            value = raw
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override {item!r}: {'.'.join(parts[:depth + 1])!r} "
                                  "is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data
