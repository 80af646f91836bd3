"""Typed configuration helpers: dataclass <-> dict/JSON and dotted ``key=value`` overrides.

Concrete configs live beside the code they configure (``ZigMaConfig`` in ``zigma.models``);
this module only knows how to (de)serialise and override any dataclass, strictly.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_INT_LIMIT = 2**63


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages must stay one short line
    whatever the user passed (a YAML alias bomb expands to gigabytes when printed)."""
    if isinstance(value, (dict, list, tuple, set)) and _too_big(value, limit):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_big(value: Any, budget: int) -> bool:
    """Whether printing ``value`` would exceed ``budget`` items, without walking it all."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set)):
            stack.extend(v)
    return False


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'a', 'b'?)`` for the choices close to ``name``, else ""."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a (possibly nested) dataclass; tuples become lists."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON/CLI value to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {short_repr(value)} does not fit {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {short_repr(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {short_repr(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {short_repr(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {short_repr(value)}")
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {short_repr(value)}")
        return from_dict(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_LIMIT <= value < _INT_LIMIT:  # torch, numpy and JSON readers need int64
                raise ConfigError(f"{where} must fit in 64 bits, got {short_repr(value, 30)}")
            return value
        raise ConfigError(f"{where} must be an integer, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value}")
            return float(value)
        raise ConfigError(f"{where} must be a number, got {short_repr(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {short_repr(value)}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        full = f"{where}.{k}" if where else k
        raise ConfigError(
            f"unknown {cls.__name__} key {full!r}{suggest(k, fields)}; "
            f"valid keys: {', '.join(fields)}"
        )
    kwargs = {
        k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def parse_value(text: str) -> Any:
    """Parse a command-line override value: JSON if it parses (numbers, bools, lists), else str."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _admits_literal(hint: Any, value: str) -> bool:
    """Whether the annotation ``hint`` lists ``value`` in a Literal (inside a union too)."""
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    return any(_admits_literal(arg, value) for arg in typing.get_args(hint))


def apply_overrides(cfg: T, overrides: typing.Iterable[str]) -> T:
    """Return a copy of dataclass ``cfg`` with dotted ``key=value`` overrides applied.

    Example: ``apply_overrides(cfg, ["model.depth=12", "optim.lr=3e-4"])``. Values are
    type-checked against the field annotations; unknown keys raise ConfigError with suggestions.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node: Any = data
        sub_cls: Any = type(cfg)
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(sub_cls)] if sub_cls else list(node)
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown config key {key!r}{suggest(part, names)}")
            if depth == len(parts) - 1:
                value = parse_value(raw)
                hint = typing.get_type_hints(sub_cls).get(part) if sub_cls else None
                # "none" is a value of its own for fields such as pos_embed, where None means
                # "keep the preset's": there the word is the string, not null
                if value is None and raw.strip() == "none" and _admits_literal(hint, "none"):
                    value = "none"
                node[part] = value
            else:
                hint = typing.get_type_hints(sub_cls).get(part) if sub_cls else None
                sub_cls = hint if dataclasses.is_dataclass(hint) else None
                node = node[part]
    return from_dict(type(cfg), data)


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, json.loads(Path(path).read_text()))
