"""Config dataclass fields that carry their one-line help (as TRL's configs do), so that a
command line can list them."""

from __future__ import annotations

import json
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
