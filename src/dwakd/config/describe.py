"""Render the configuration reference (every key, type, default, help) as Markdown."""

from __future__ import annotations

import dataclasses
import typing

from dwakd.config.schema import DwakdConfig
from dwakd.config.typed import type_name


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "(section)" if dataclasses.is_dataclass(value) else repr(value)
    return "(required)"


def _rows(cls: type, prefix: str):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        nested = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        if nested:
            yield key, "section", _default(f), f.metadata.get("help", "")
            yield from _rows(nested[0], key + ".")
        else:
            yield key, type_name(tp), _default(f), f.metadata.get("help", "")


def describe_config() -> str:
    """A Markdown table of every configuration key."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_ in _rows(DwakdConfig, ""):
        lines.append(f"| `{key}` | {tp} | `{default}` | {help_} |")
    return "\n".join(lines)
