"""Turn plain (YAML) data into the typed dataclasses of :mod:`dwakd.config.schema`, naming every problem.

Problems are collected, not raised one by one: a user with three typos hears about all three,
each with its dotted key and where it was written (``file:line`` or the override).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Union

from dwakd.errors import ConfigError


def did_you_mean(word: Any, candidates: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``: the one suggestion helper of dwakd
    (config keys, Literal values, method names, method options)."""
    options = [str(c) for c in candidates]
    close = difflib.get_close_matches(str(word), options, n=1)
    if not close and len(str(word)) >= 3:  # an abbreviation: 'temp' -> 'temperature'
        close = [o for o in options if o.startswith(str(word))][:1]
    return f"; did you mean '{close[0]}'?" if close else ""


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, ge=None, gt=None,  # noqa: A002
           le=None, lt=None):
    """A documented dataclass field (TRL style) with an optional range, checked by :func:`build_dataclass`.

    ``help`` is rendered by ``describe``; ``ge``/``gt``/``le``/``lt`` bound a number (``None`` values
    are never range-checked). Choices are written as ``Literal[...]`` types.
    """
    meta = {"help": help}
    for key, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if bound is not None:
            meta[key] = bound
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def range_text(meta) -> str:
    """``">= 0, <= 1"`` for a field's range metadata (``""`` when it has none)."""
    return ", ".join(f"{sym} {meta[key]}" for key, sym, _ in _BOUNDS if key in meta)


def check_range(value: Any, meta, key: str, problems: Problems) -> None:
    """Record a problem when a number is outside the field's ``ge``/``gt``/``le``/``lt`` bounds (or NaN)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bad = [sym + " " + str(meta[k]) for k, sym, ok in _BOUNDS if k in meta and not ok(value, meta[k])]
    if isinstance(value, float) and math.isnan(value) and range_text(meta):
        bad = [range_text(meta)]
    if bad:
        problems.add(key, f"'{key}' must be {range_text(meta)}, got {value!r}")


class Problems:
    """Collects error messages with their locations; :meth:`raise_if_any` raises one ConfigError."""

    def __init__(self, marks: dict[str, str] | None = None, origin: str = "config"):
        self.marks = marks or {}
        self.origin = origin
        self.items: list[str] = []

    def where(self, key: str) -> str:
        """The location of ``key`` (or of its closest written parent section)."""
        k = key
        while k:
            if k in self.marks:
                return self.marks[k]
            k = k.rpartition(".")[0]
        return self.origin

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.where(key)}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            raise ConfigError(self.items[0])
        raise ConfigError(f"{len(self.items)} problems in the configuration:\n  " + "\n  ".join(self.items))


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {type_name(arg)}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _coerce(tp: Any, value: Any, key: str, problems: Problems) -> Any:
    """Return ``value`` converted to ``tp`` or raise :class:`_Mismatch` (nested sections report their own problems)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, problems)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(arg, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if tp is list:
        if not isinstance(value, list):
            raise _Mismatch
        return list(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return build_dataclass(tp, value, key, problems)
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in the schema, not a user error


_hint = did_you_mean


def coerce_field(tp: Any, value: Any, key: str, problems: Problems) -> Any:
    """Convert one value, recording a problem (and returning ``None``) when it does not fit."""
    try:
        return _coerce(tp, value, key, problems)
    except _Mismatch:
        msg = f"'{key}' must be {type_name(tp)}, got {value!r} ({type(value).__name__})"
        literal_args = _literal_args(tp)
        if literal_args and isinstance(value, str):
            msg += _hint(value, literal_args)
        elif literal_args and isinstance(value, list):
            bad = [v for v in value if v not in literal_args]
            if bad:
                msg += _hint(bad[0], literal_args)
        problems.add(key, msg)
        return None


def _literal_args(tp: Any) -> list:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for arg in typing.get_args(tp) for a in _literal_args(arg)]
    if typing.get_origin(tp) is list:
        return [a for arg in typing.get_args(tp) for a in _literal_args(arg)]
    return []


def build_dataclass(cls: type, data: dict[str, Any], prefix: str, problems: Problems, *,
                    section_label: str | None = None):
    """Build ``cls`` from ``data``: unknown keys (with a suggestion), wrong types and out-of-range
    numbers become problems. ``section_label`` names the section in unknown-key messages."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            section = section_label or (f"section '{prefix}'" if prefix else "the top level")
            problems.add(dotted, f"unknown key '{dotted}' in {section}{_hint(key, known)} "
                                 f"(known keys: {', '.join(known)})")
            continue
        converted = coerce_field(hints[key], value, dotted, problems)
        if converted is not None or value is None:
            kwargs[key] = converted
            check_range(converted, known[key].metadata, dotted, problems)
    return cls(**kwargs)


def dataclass_to_dict(obj: Any) -> Any:
    """Nested dataclasses -> plain dicts/lists (the inverse of :func:`build_dataclass`)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: dataclass_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [dataclass_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dataclass_to_dict(v) for k, v in obj.items()}
    return obj
