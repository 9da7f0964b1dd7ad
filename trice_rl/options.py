"""Config dataclass fields that carry their one-line help (as TRL's configs do), so that a
command line can list them."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import field, fields, is_dataclass
from typing import Any


def option(default: Any, help: str) -> Any:
    """A config field with its one-line help (listed by :func:`describe_config`)."""
    return field(default=default, metadata={"help": help})


def config_help(config_class: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) of every field of a config dataclass; a subclass that only
    changes a default keeps its base class's help."""
    rows = []
    for f in fields(config_class):
        help_text = next((g.metadata["help"] for base in config_class.__mro__ if is_dataclass(base) for g in fields(base) if g.name == f.name and "help" in g.metadata), "")
        rows.append((f.name, f.default, help_text))
    return rows


def describe_config(config: Any) -> str:
    """One line per field, ``name=value  help``: the defaults of a config class, or the values
    of a config instance."""
    config_class = config if isinstance(config, type) else type(config)
    rows = [(name, default if config is config_class else getattr(config, name), text) for name, default, text in config_help(config_class)]
    width = max(len(f"{name}={json.dumps(value)}") for name, value, _ in rows)
    return "\n".join(f"  {f'{name}={json.dumps(value)}':<{width}}  {text}" for name, value, text in rows)


def parse_assignments(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``FIELD=VALUE`` strings as a dict, each value parsed as JSON where it parses (numbers,
    true/false, null), else kept as text; raises ValueError naming the flag."""
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} expects FIELD=VALUE, got {item!r}")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    return values


def field_types(config_class: type) -> dict[str, tuple]:
    """Each config field's accepted types (``int | None``: int and NoneType)."""
    hints = typing.get_type_hints(config_class)
    types_of = {}
    for f in fields(config_class):
        hint = hints[f.name]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        types_of[f.name] = typing.get_args(hint) if union else (hint,)
    return types_of


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", type(None): "null"}


def _fits(value: Any, kind: Any) -> bool:
    """Whether a value parsed from JSON is of a field's type; an integer is a number."""
    if kind is type(None):
        return value is None
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return not isinstance(kind, type) or isinstance(value, kind)


def check_values(config_class: type, values: dict[str, Any], flag: str = "--set") -> None:
    """Raise ValueError for a value of the wrong type for its field of ``config_class``
    (every key must be one of its fields)."""
    types_of = field_types(config_class)
    for key, value in values.items():
        if not any(_fits(value, kind) for kind in types_of[key]):
            raise ValueError(f"{flag} {key}={json.dumps(value)}: {key} takes {' or '.join(_KIND_NAMES.get(k, k.__name__) for k in types_of[key])}")
