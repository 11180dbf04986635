"""The method registry: names -> classes, built on demand.

``available_methods()`` lists every name with a one-line description; ``build_method(name,
student, teacher, **options)`` validates the options and returns the method module.
"""

from __future__ import annotations

import difflib
import importlib

from dwakd.errors import ConfigError

# name -> "module:Class" (imported lazily so a method's dependencies load only when used).
_REGISTRY: dict[str, str] = {
    "sft": "dwakd.methods.sft:SFT",
    "kd": "dwakd.methods.kd:SameTokenizerKD",
    "dskd": "dwakd.methods.dskd:DSKD",
    "dskd-eta": "dwakd.methods.dskd:DSKDETA",
    "uld": "dwakd.methods.uld:ULD",
    "mined": "dwakd.methods.mined:MinED",
    "multilevel-ot": "dwakd.methods.multilevel_ot:MultiLevelOT",
    "dwakd": "dwakd.methods.dwakd:DWAKD",
    "dwakd-eta": "dwakd.methods.dwakd:DWAKDETA",
    "alm": "dwakd.methods.alm:ALM",
    "cdm": "dwakd.methods.cdm:CDM",
}


def register_method(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name`` (how a user adds a method from outside dwakd)."""
    _REGISTRY[name] = target


def method_class(name: str):
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        msg = f"unknown method '{name}'"
        if hint:
            msg += f"; did you mean '{hint[0]}'?"
        raise ConfigError(msg + f" Available: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def available_methods() -> dict[str, str]:
    """name -> one-line description, for every registered method."""
    return {name: method_class(name).description for name in _REGISTRY}


def validate_method_options(name: str, options: dict | None = None, *, where: str = "method"):
    """Parse ``options`` into the method's Options dataclass (no model needed)."""
    return method_class(name).Options.from_dict(dict(options or {}), where=where)


def build_method(name: str, student, teacher, **options):
    """Build method ``name`` for this student/teacher pair with validated ``options``."""
    cls = method_class(name)
    opts = cls.Options.from_dict(options, where=f"method ({name})")
    if cls.needs_teacher and teacher is None:
        raise ConfigError(f"method '{name}' needs a teacher model")
    return cls(student, teacher, opts)
