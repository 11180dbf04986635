"""The method registry: names -> classes, built on demand.

``available_methods()`` lists every name with a one-line description; ``build_method(name,
student, teacher, **options)`` validates the options and returns the method module.
"""

from __future__ import annotations

import importlib

from dwakd.config.typed import Problems, did_you_mean
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

BUILTIN_METHODS: tuple[str, ...] = tuple(_REGISTRY)


def register_method(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name`` (how a user adds a method from outside dwakd)."""
    _REGISTRY[name] = target


def method_class(name: str):
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'{did_you_mean(name, _REGISTRY)} Available: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def available_methods() -> dict[str, str]:
    """name -> one-line description, for every registered method."""
    return {name: method_class(name).description for name in _REGISTRY}


def validate_method_options(name: str, options: dict | None = None, *, where: str = "method",
                            problems: Problems | None = None):
    """Parse ``options`` into the method's Options dataclass (no model needed); ``problems`` may carry
    the config file's ``file:line`` marks (keys ``method.<option>``)."""
    return method_class(name).Options.from_dict(dict(options or {}), where=where, method=name, problems=problems)


def config_reference(names=None) -> str:
    """The whole configuration reference: every section key, then the options of each method in
    ``names`` (default: every registered method)."""
    from dwakd.config.describe import describe_config, describe_method_options

    names = list(_REGISTRY) if names is None else list(names)
    return describe_config() + "\n\n" + describe_method_options(
        {name: (method_class(name).description, method_class(name).Options) for name in names})


def build_method(name: str, student, teacher, **options):
    """Build method ``name`` for this student/teacher pair with validated ``options``."""
    cls = method_class(name)
    opts = cls.Options.from_dict(options, where=f"method '{name}'", method=name)
    if cls.needs_teacher and teacher is None:
        raise ConfigError(f"method '{name}' needs a teacher model")
    return cls(student, teacher, opts)
