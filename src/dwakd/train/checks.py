"""Checks that need the method registry (but no model): run before anything is loaded or written."""

from __future__ import annotations

from dwakd.config import DwakdConfig, where
from dwakd.config.typed import Problems
from dwakd.errors import ConfigError
from dwakd.methods import validate_method_options
from dwakd.methods.registry import method_class


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
    problems = Problems(getattr(cfg, "_sources", {}), getattr(cfg, "_origin", "config"))
    try:
        opts = validate_method_options(name, cfg.method.options, problems=problems)
    except TypeError as e:  # an Options class whose fields the typed builder cannot take
        raise ConfigError(f"{where(cfg, 'method')}: bad option for method '{name}': {e}") from None
    # the converted values (``1e-1`` read by YAML 1.1 as a string arrives as a float)
    cfg.method.options = {key: getattr(opts, key) for key in cfg.method.options}
    if cls.needs_teacher and not cfg.model.teacher:
        raise ConfigError(f"{where(cfg, 'model.teacher')}: method '{name}' needs a teacher; set model.teacher")
    return cls
