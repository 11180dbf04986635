"""Render the configuration reference (every key, type, default, help) as Markdown."""

from __future__ import annotations

import dataclasses
import typing

from dwakd.config.schema import DwakdConfig
from dwakd.config.typed import range_text, type_name


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


def describe_method_options(methods: dict[str, tuple[str, type]]) -> str:
    """One Markdown table per method: its options (written flat under ``method:``), with presets.

    ``methods``: name -> (one-line description, Options dataclass). Passed in by
    :func:`dwakd.methods.registry.config_reference` (the config layer never imports the methods).
    """
    out = ["## Method options",
           "",
           "Written flat under `method:` next to `name` (`method: {name: dwakd, gamma: 1.0}`) or as "
           "`method.gamma=1.0` on the command line. Types, choices and ranges are checked before any "
           "model loads."]
    for name, (description, cls) in methods.items():
        out += ["", f"### `{name}`", "", description + "."]
        presets = getattr(cls, "PRESETS", {}) or {}
        if presets:
            out.append("")
            out.append("Presets (`preset:`; explicit options override them):")
            for pname, values in presets.items():
                shown = ", ".join(f"`{k}: {v!r}`" for k, v in values.items()) or "the defaults below"
                out.append(f"- `{pname}`: {shown}")
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        if not fields:
            out += ["", "No options."]
            continue
        out += ["", "| option | type | default | range | meaning |", "|---|---|---|---|---|"]
        for f in fields:
            out.append(f"| `{f.name}` | {type_name(hints[f.name])} | `{_default(f)}` | {range_text(f.metadata)} | "
                       f"{f.metadata.get('help', '')} |")
    return "\n".join(out)
