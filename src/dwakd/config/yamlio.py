"""Read YAML keeping track of where every key was written (``file:line``), and parse overrides.

:func:`read_yaml` returns the plain data (``yaml.safe_load``) and a map from dotted key
(``train.lr``) to a human-readable location (``configs/x.yaml:12``), taken from the node marks
of ``yaml.compose``. Duplicate keys, which ``safe_load`` would silently collapse, are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dwakd.errors import ConfigError


def _walk(node, prefix: str, origin: str, marks: dict[str, str]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        dotted = f"{prefix}{key}"
        if key in seen:
            raise ConfigError(f"{origin}:{line}: duplicate key '{dotted}' (first written on line {seen[key]})")
        seen[key] = line
        marks[dotted] = f"{origin}:{line}"
        _walk(value_node, dotted + ".", origin, marks)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Load ``path`` -> ``(data, marks)``; ``marks[dotted_key] = "path:line"``."""
    path = Path(path)
    origin = str(path)
    if not path.is_file():
        raise ConfigError(f"config file {origin} does not exist" if not path.exists() else
                          f"config file {origin} is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {origin} cannot be read: {e.strerror or e}") from None
    text = decode_utf8(raw, origin)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark is not None else origin
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{loc}: invalid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections (model, data, method, train), "
                          f"not a {type(data).__name__}")
    marks: dict[str, str] = {}
    _walk(node, "", origin, marks)
    return data, marks


def decode_utf8(raw: bytes, origin: str) -> str:
    """UTF-8 text of a config (a BOM is allowed); anything else is a ConfigError naming line and column."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw[:start].count(b"\n") + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        raise ConfigError(f"{origin}:{line}:{column}: the config is not valid UTF-8 (byte 0x{raw[start]:02x}); "
                          f"save it as UTF-8") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=5e-4"`` -> ``("train.lr", "5e-4" parsed by yaml.safe_load)``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': bad key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({e})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str], marks: dict[str, str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in the raw ``data`` (creating sections as needed); record its origin."""
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override '{text}': '{where}' is a value ({child!r}), not a section")
            node = child
        node[parts[-1]] = value
        marks[key] = f"override '{text}'"
        # Keys under an overridden section now come from the override too.
        if isinstance(value, dict):
            for sub in _dotted_keys(value, key + "."):
                marks[sub] = f"override '{text}'"
    return data


def _dotted_keys(d: dict, prefix: str):
    for k, v in d.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _dotted_keys(v, f"{prefix}{k}.")
