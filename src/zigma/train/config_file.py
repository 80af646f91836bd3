"""Reading a ``--config`` file (.json, .yaml, .yml) as hostile input: bounded in bytes, nesting
and values (YAML aliases counted as expanded), YAML read with the 1.2 core schema (``1e-3`` is a
number, ``yes`` and ``1:30`` are strings, no Python tags), every failure one line naming the file.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from zigma.artifacts import ArtifactError, read_text
from zigma.config import ConfigError

CONFIG_MAX_BYTES = 1 << 20  # a full TrainConfig is about 2 KB
CONFIG_MAX_VALUES = 10_000  # keys and values, aliases expanded; a full config has about 150
CONFIG_MAX_DEPTH = 32  # a full config is 3 levels deep
_SUFFIXES = (".json", ".yaml", ".yml")
_KINDS = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}

# The YAML 1.2 core schema (what JSON agrees with), in place of PyYAML's YAML 1.1 rules
# that read 1e-3 as a string, and yes/on/1:30/0b1/2024-01-01 as booleans, numbers and dates.
_CORE_SCHEMA = [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("merge", r"^(?:<<)$", "<"),
]


class _TooBig(Exception):
    pass


def _construct_int(loader: Any, node: Any) -> int:
    text = loader.construct_scalar(node)
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits[:2] in ("0o", "0x"):
        return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
    return sign * int(digits, 10)  # YAML 1.2: 012 is twelve, not octal


@functools.cache
def _yaml_loader(yaml: Any) -> type:
    class Loader(yaml.SafeLoader):  # the pure-Python parser: libyaml's crashes on deep nesting
        yaml_implicit_resolvers: dict = {}

        def compose_document(self) -> Any:
            self._nodes, self._depth = 0, 0
            return super().compose_document()

        def compose_node(self, parent: Any, index: Any) -> Any:
            # stop while parsing, long before Python's recursion limit or a slow huge parse
            self._nodes += 1
            self._depth += 1
            if self._depth > CONFIG_MAX_DEPTH:
                raise _TooBig(f"is nested more than {CONFIG_MAX_DEPTH} levels deep")
            if self._nodes > CONFIG_MAX_VALUES:
                raise _TooBig(f"holds more than {CONFIG_MAX_VALUES} values")
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    for tag, pattern, first in _CORE_SCHEMA:
        Loader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), list(first))
    Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
    return Loader


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"reading {path} needs PyYAML: pip install 'zigma[yaml]' (or write the config as .json)"
        ) from None
    try:
        return yaml.load(text, Loader=_yaml_loader(yaml))  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})"
        problem = str(e.problem or e.context or "")
        raise ConfigError(f"config file {path} is not valid YAML: {problem[:200]}{where}") from None
    except (yaml.YAMLError, ValueError, TypeError) as e:  # e.g. `!!int x`, 5000-digit numbers
        raise ConfigError(f"config file {path} is not valid YAML: {str(e)[:200]}") from None


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    except ValueError as e:  # integers over Python's 4300-digit limit
        raise ConfigError(f"config file {path} is not valid JSON: {str(e)[:200]}") from None


def _check_size(data: Any) -> None:
    """Count values and depth with aliases expanded (YAML's "billion laughs" is a few
    hundred bytes that expand to billions of values), stopping at the first limit."""
    stack, seen = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > CONFIG_MAX_VALUES:
            raise _TooBig(f"holds more than {CONFIG_MAX_VALUES} values (aliases expanded)")
        if depth > CONFIG_MAX_DEPTH:
            raise _TooBig(f"is nested more than {CONFIG_MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            seen += len(value)  # the keys
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A (partial) TrainConfig as a dict from a .json, .yaml or .yml file.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: every other problem (wrong suffix, unreadable, over CONFIG_MAX_BYTES, not
            UTF-8, not valid JSON/YAML, Python tags, too many values or levels, not a mapping,
            PyYAML missing), as one line naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(f"config file {path} must end in .json, .yaml or .yml")
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        text = read_text(path, "config file", CONFIG_MAX_BYTES)
    except ArtifactError as e:  # a folder, too large, not UTF-8
        raise ConfigError(str(e)) from None
    except OSError as e:  # permission denied, a symlink loop, an I/O error
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    try:
        data = _parse_json(path, text) if suffix == ".json" else _parse_yaml(path, text)
        _check_size(data)
    except _TooBig as e:
        raise ConfigError(f"config file {path} {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        kind = _KINDS.get(type(data), f"a {type(data).__name__}")
        raise ConfigError(f"config file {path} must hold a mapping of config keys, not {kind}")
    return data
