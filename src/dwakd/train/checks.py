"""Checks that need the method registry (but no model): run before anything is loaded or written."""

from __future__ import annotations

import dataclasses
import difflib

from dwakd.config import DwakdConfig, where
from dwakd.errors import ConfigError
from dwakd.methods import validate_method_options
from dwakd.methods.registry import method_class


def _option_where(cfg: DwakdConfig, message: str) -> str:
    """Where the option an error is about was written: the option the message names, else the only option
    set by a command-line override, else the ``method`` section."""
    keys = list(cfg.method.options)
    named = [k for k in keys if f"method.{k}" in message or f"'{k}'" in message]
    if len(named) == 1:
        return where(cfg, f"method.{named[0]}")
    overridden = [k for k in keys if where(cfg, f"method.{k}").startswith("override")]
    if len(overridden) == 1:
        return where(cfg, f"method.{overridden[0]}")
    return where(cfg, "method")


def check_method(cfg: DwakdConfig):
    """Validate ``method.name`` and every option against the method's ``Options``; return the method class.

    Errors name the key and where it was written (``file:line`` or the override).
    """
    name = cfg.method.name
    try:
        cls = method_class(name)
    except ConfigError as e:
        raise ConfigError(f"{where(cfg, 'method.name')}: {e}") from None
    except ImportError as e:
        raise ConfigError(f"{where(cfg, 'method.name')}: method '{name}' is registered but its code could not "
                          f"be imported ({e})") from e
    known = [f.name for f in dataclasses.fields(cls.Options)]
    problems = []
    for key in cfg.method.options:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            msg = f"{where(cfg, f'method.{key}')}: unknown option 'method.{key}' for method '{name}'"
            msg += f"; did you mean '{hint[0]}'?" if hint else ""
            msg += f" (options of {name}: {', '.join(known) or 'none'})"
            problems.append(msg)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} problems in the configuration:\n  " + "\n  ".join(problems))
    try:
        validate_method_options(name, cfg.method.options, where="method")
    except ConfigError as e:
        raise ConfigError(f"{_option_where(cfg, str(e))}: {e}") from None
    except TypeError as e:  # a wrong-typed option reaching the dataclass
        raise ConfigError(f"{_option_where(cfg, str(e))}: bad option for method '{name}': {e}") from None
    if cls.needs_teacher and not cfg.model.teacher:
        raise ConfigError(f"{where(cfg, 'model.teacher')}: method '{name}' needs a teacher; set model.teacher")
    return cls
